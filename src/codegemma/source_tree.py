"""The files of a source tree worth reading: git's ignore rules applied, binaries and huge files
left out. Shared by training (repository packing) and retrieval (the repository index)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from codegemma.gitignore import IgnoreRules

SOURCE_SUFFIXES = frozenset(
    ".py .pyi .js .jsx .ts .tsx .mjs .c .h .cc .cpp .hpp .cs .go .java .kt .rs .rb .php .swift "
    ".scala .sh .md .rst .txt .toml .yaml .yml .json .cfg .ini .html .css .sql".split()
)
MAX_FILE_BYTES = 1_000_000  # larger files are data or generated code, not worth reading
_SNIFF_BYTES = 8192


def walk(root: Path, directory: Path | None = None) -> Iterator[Path]:
    """Files under `directory` (default `root`) that git would not ignore, in sorted order.

    Ignore rules are those of `root` and below (`.gitignore` at any depth, `.git/info/exclude`);
    the `.git` directory and symbolic links are never followed.
    """
    yield from _walk(directory or root, IgnoreRules(root))


def _walk(directory: Path, rules: IgnoreRules) -> Iterator[Path]:
    for entry in sorted(directory.iterdir()):
        if entry.name == ".git" or entry.is_symlink():
            continue
        if entry.is_dir():
            if not rules.ignored(entry, is_dir=True):
                yield from _walk(entry, rules)
        elif entry.is_file() and not rules.ignored(entry, is_dir=False):
            yield entry


def decode_text(data: bytes) -> str | None:
    """The text of a file's bytes; None for a binary (a NUL byte early on, or not UTF-8)."""
    if b"\0" in data[:_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_text(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The file's text, or None when it is over `max_bytes` or binary."""
    if path.stat().st_size > max_bytes:
        return None
    return decode_text(path.read_bytes())
