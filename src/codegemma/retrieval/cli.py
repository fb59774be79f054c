"""`codegemma index DIR`, and the repository context of `codegemma complete --repo DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codegemma.errors import InvalidRequestError
from codegemma.retrieval.context import ContextAssembler, ContextOptions, default_budget
from codegemma.retrieval.index import RepoIndex, default_store

_EXAMPLES = """\
examples:
  codegemma index .                 (then, as files change, again: only changed files are read)
  codegemma complete --repo . --file src/app.py --cursor 40:9 --json
"""


def register(commands) -> None:
    """Add the `index` subcommand."""
    parser = commands.add_parser(
        "index",
        help="index a repository for completion context (complete --repo)",
        description="Chunk the files of DIR (tree-sitter where a grammar exists, lines "
        "otherwise; .gitignore respected; binaries and large files skipped) and keep a BM25 "
        "index of them in DIR/.codegemma/index. Run again to catch up: only files whose size "
        "or mtime changed are read, only changed content is chunked again. Needs "
        "pip install 'codegemma[repo]'.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="the repository's root folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_index)


def open_index(root: Path, *, progress: bool = False):
    """The index of `root` kept in its store, brought up to date: (index, update report)."""
    if not Path(root).is_dir():
        raise InvalidRequestError(f"{root} is not a directory")
    index = RepoIndex.open(root, store=default_store(root))
    return index, index.update(progress=progress)


def _run_index(args) -> int:
    index, report = open_index(args.dir, progress=not args.no_progress and sys.stderr.isatty())
    print(
        f"{args.dir}: {report.files} files, {report.chunks} chunks indexed; "
        f"{report.updated} files chunked, {report.removed} removed, {report.skipped} skipped "
        f"(binary or over {index.settings.max_bytes} bytes); {report.seconds:.2f} s; "
        f"index at {index.store}"
    )
    return 0


def repo_context(lm, root: Path, prefix: str, suffix: str, file: Path | None, budget: int | None):
    """Context for a completion at the cursor of `file` (None: text given on the command
    line): (RepoContext, the file's path relative to `root`, or None when outside it)."""
    index, _ = open_index(root)
    path = None
    if file is not None and file.resolve().is_relative_to(Path(root).resolve()):
        path = file.resolve().relative_to(Path(root).resolve()).as_posix()
    options = ContextOptions(budget=default_budget(lm.context_length) if budget is None else budget)
    assembler = ContextAssembler(
        index, lambda text: len(lm.tokenizer.encode(text, add_bos=False)), options
    )
    return assembler.context(prefix, suffix, path), path
