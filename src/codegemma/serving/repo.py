"""Repository context for the server (`serve --repo DIR`): for each FIM request, the best
chunks of other files of the repository, put before the file being completed.

One `RepoContext` source serves every request: the index is brought up to date at start and
again, incrementally (only files that changed are chunked), when a request comes after
`refresh_s` seconds; the assembler keeps the chunks it chose for a file while they still rank,
so the start of the prompt, and the server's KV cache of it, stay put while the user types.
Prompts are built on one intake thread, in arrival order; the lock guards the index all the
same.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from codegemma.retrieval.context import ContextAssembler, ContextOptions, RepoContext
from codegemma.retrieval.index import RepoIndex, default_store
from codegemma.tokenizer import Tokenizer


class RepoSource:
    """Context from the repository at `root` within `budget` tokens."""

    def __init__(
        self, root: Path, tokenizer: Tokenizer, budget: int, *, refresh_s: float = 10.0
    ) -> None:
        self.root = Path(root)
        self.index = RepoIndex.open(self.root, store=default_store(self.root))
        self.report = self.index.update()
        self.refresh_s = refresh_s
        self._updated = time.monotonic()
        self._lock = threading.Lock()
        self._assembler = ContextAssembler(
            self.index,
            lambda text: len(tokenizer.encode(text, add_bos=False)),
            ContextOptions(budget=budget),
        )

    def context(self, prefix: str, suffix: str, path: str | None) -> RepoContext:
        """Chunks of other files for a cursor between `prefix` and `suffix` in `path` (relative
        to the repository; None: a buffer that is no file of it)."""
        with self._lock:
            if time.monotonic() - self._updated > self.refresh_s:
                self.index.update()
                self._updated = time.monotonic()
            return self._assembler.context(prefix, suffix, path)
