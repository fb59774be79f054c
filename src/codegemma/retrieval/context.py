"""Repository context for one completion: the best chunks of other files within a token budget,
in an order that stays put while the user types at one place.

Candidates come in two groups. First, the definitions (functions, classes) of other files
whose names the current file uses: in its head (imports) or near the cursor; these are what
the code at the cursor most likely calls next, and the text around the cursor cannot name
the one about to be typed. Then the chunks most like the code around the cursor by BM25 (the
query is the last `query_lines` lines of the prefix and the first `suffix_lines` of the
suffix). Each group is ordered by BM25 score. The current file's own chunks are never chosen:
its text around the cursor is in the prompt already. Each chunk shows at most `chunk_tokens`
tokens, its first lines (a definition's signature and docstring come first), so that a small
budget holds several; chunks are taken in order while they fit, the last one cut to the lines
that fit. The chosen chunks are shown grouped by file, files in path order and chunks in line
order, never in score order, so the same set always gives the same text. And a set, once
chosen for a file, is kept while every chunk of it still ranks among the `candidates` best: as
the user types, the query changes a little and the context, the start of the prompt, stays the
same, so a server's KV cache of it stays valid.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from codegemma.retrieval.chunking import Chunk, line_text, split_lines
from codegemma.retrieval.index import RepoIndex
from codegemma.retrieval.lexical import identifiers, terms

_REMEMBERED_FILES = 64  # files whose last choice is kept for stability
_COUNT_CACHE = 4096  # texts whose token counts are remembered


@dataclasses.dataclass(frozen=True)
class ContextOptions:
    """How much context, and what it is looked up by."""

    budget: int  # tokens for all context files together: paths, contents and separators
    query_lines: int = 10  # lines of the prefix, ending at the cursor, in the query
    suffix_lines: int = 3  # lines of the suffix after the cursor in the query
    candidates: int = 20  # best chunks considered; a kept set stays while it all ranks here
    min_tokens: int = 8  # a chunk cut to fit keeps at least this many tokens
    chunk_tokens: int | None = None  # most tokens one chunk shows (None: budget // 3, >= 24)
    head_chars: int = 8192  # the file's first characters searched for names it uses
    near_chars: int = 32768  # characters each side of the cursor searched for them
    sticky: bool = True  # keep a file's chosen set while it still ranks (False: choose anew)

    def __post_init__(self) -> None:
        if self.budget < 0 or self.query_lines < 1 or self.suffix_lines < 0:
            raise ValueError("budget and suffix_lines must be >= 0, query_lines >= 1")
        if self.candidates < 1 or self.min_tokens < 1:
            raise ValueError("candidates and min_tokens must be at least 1")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1 (or None)")

    @property
    def chunk_cap(self) -> int:
        """Tokens one chunk may show."""
        return self.chunk_tokens if self.chunk_tokens is not None else max(24, self.budget // 3)


@dataclasses.dataclass(frozen=True)
class RepoContext:
    """The context for one request."""

    files: list[tuple[str, str]]  # (path, content) for CodeGemma.complete(files=...)
    chunks: tuple[Chunk, ...]  # what is shown, in shown order; a chunk cut to fit is cut here
    tokens: int  # tokens the files add to the prompt, separators included
    retrieval_ms: float  # query, search, choice and token counting
    kept: bool  # the set chosen for this file before was kept (see the module docstring)

    def as_dict(self) -> dict:
        """For JSON output: timing, size and which lines of which files were used."""
        return {
            "retrieval_ms": round(self.retrieval_ms, 3),
            "tokens": self.tokens,
            "kept": self.kept,
            "chunks": [{"path": c.path, "lines": [c.start + 1, c.end]} for c in self.chunks],
        }


def default_budget(context_length: int) -> int:
    """Context tokens when none are asked for: a third of the window, at most 1024."""
    return min(1024, context_length // 3)


def query_text(prefix: str, suffix: str, query_lines: int, suffix_lines: int) -> str:
    """The code the query is made of: the lines around the cursor."""
    before = prefix.split("\n")[-query_lines:]
    after = suffix.split("\n")[:suffix_lines] if suffix_lines else []
    return "\n".join(before) + "\n".join(after)  # the cursor's line is split between them


class ContextAssembler:
    """Chooses context chunks from a `RepoIndex`; remembers its last choice per file."""

    def __init__(
        self, index: RepoIndex, count_tokens: Callable[[str], int], options: ContextOptions
    ) -> None:
        """`count_tokens(text)`: tokens of text without BOS, e.g.
        `lambda t: len(lm.tokenizer.encode(t, add_bos=False))`."""
        self.index = index
        self.options = options
        self._count = count_tokens
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._chosen: OrderedDict[str | None, tuple[tuple[Chunk, ...], RepoContext]] = OrderedDict()

    def context(self, prefix: str, suffix: str = "", path: str | None = None) -> RepoContext:
        """Context for completing at the cursor between `prefix` and `suffix` in file `path`
        (relative to the index root; None: a buffer that is no file of the repository)."""
        started = time.perf_counter()
        opts = self.options
        query = terms(query_text(prefix, suffix, opts.query_lines, opts.suffix_lines))
        used = prefix[: opts.head_chars] + prefix[-opts.near_chars :] + suffix[: opts.near_chars]
        hits = self.index.search(query, exclude=path, k=opts.candidates, names=identifiers(used))
        ranked = {hit.chunk for hit in hits}
        previous = self._chosen.get(path) if opts.sticky else None
        if previous is not None and previous[0] and set(previous[0]) <= ranked:
            self._chosen.move_to_end(path)
            shown = previous[1]
            return dataclasses.replace(shown, retrieval_ms=_ms(started), kept=True)
        originals, shown = self._choose([hit.chunk for hit in hits])
        files = context_files(shown)
        result = RepoContext(files, tuple(shown), self._files_tokens(files), _ms(started), False)
        self._remember(path, tuple(originals), result)
        return result

    def _choose(self, ranked: Sequence[Chunk]) -> tuple[list[Chunk], list[Chunk]]:
        """Best first while they fit (cut to their first lines when only that fits); returns
        (chunks chosen, as shown) with the shown ones sorted by path and line."""
        originals: list[Chunk] = []
        shown: list[Chunk] = []
        for chunk in ranked:
            capped = self._capped(chunk)
            if self._cost([*shown, capped]) <= self.options.budget:
                originals.append(chunk)
                shown.append(capped)
                continue
            head = self._head_that_fits(capped, shown)
            if head is not None:
                originals.append(chunk)
                shown.append(head)
            if self.options.budget - self._cost(shown) < self.options.min_tokens:
                break
        return originals, sorted(shown, key=lambda c: (c.path, c.start))

    def _capped(self, chunk: Chunk) -> Chunk:
        """The chunk's first lines within `chunk_cap` tokens (at least its first line)."""
        cap = self.options.chunk_cap
        return longest_head(chunk, lambda head: self.count(head.text) <= cap) or head_lines(
            chunk, 1
        )

    def _head_that_fits(self, chunk: Chunk, shown: list[Chunk]) -> Chunk | None:
        def fits(head: Chunk) -> bool:
            return self._cost([*shown, head]) <= self.options.budget

        head = longest_head(chunk, fits)
        if head is None or self.count(head.text) < self.options.min_tokens:
            return None
        return head

    def _cost(self, chunks: Sequence[Chunk]) -> int:
        return self._files_tokens(context_files(sorted(chunks, key=lambda c: (c.path, c.start))))

    def _files_tokens(self, files: list[tuple[str, str]]) -> int:
        # Exact: special tokens split the prompt's text, so each file's `path\ncontent` is
        # encoded on its own, followed by one <|file_separator|>.
        return sum(self.count(f"{path}\n{content}") + 1 for path, content in files)

    def count(self, text: str) -> int:
        """Tokens of `text` (remembered for the texts seen last)."""
        if text in self._counts:
            self._counts.move_to_end(text)
            return self._counts[text]
        value = self._count(text)
        self._counts[text] = value
        if len(self._counts) > _COUNT_CACHE:
            self._counts.popitem(last=False)
        return value

    def _remember(self, path: str | None, chosen: tuple[Chunk, ...], result: RepoContext) -> None:
        self._chosen[path] = (chosen, result)
        self._chosen.move_to_end(path)
        if len(self._chosen) > _REMEMBERED_FILES:
            self._chosen.popitem(last=False)


def context_files(chunks: Sequence[Chunk]) -> list[tuple[str, str]]:
    """(path, content) per file, in the order the chunks come; a file's chunks joined."""
    files: dict[str, str] = {}
    for chunk in chunks:
        files[chunk.path] = files.get(chunk.path, "") + chunk.text
    return list(files.items())


def head_lines(chunk: Chunk, n: int) -> Chunk:
    """The chunk cut to its first `n` lines."""
    lines = split_lines(chunk.text)
    return dataclasses.replace(chunk, end=chunk.start + n, text=line_text(lines, 0, n))


def longest_head(chunk: Chunk, fits: Callable[[Chunk], bool]) -> Chunk | None:
    """The chunk itself if it fits, else its longest run of first lines that does; None when
    not even its first line fits. (`fits` must hold for every head shorter than one that fits.)"""
    if fits(chunk):
        return chunk
    low, high = 0, chunk.end - chunk.start - 1
    while low < high:  # the largest n in [0, high] whose head fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(head_lines(chunk, mid)) else (low, mid - 1)
    return head_lines(chunk, low) if low else None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
