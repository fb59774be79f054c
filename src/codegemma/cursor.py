"""Reading a source file and splitting it at an editor cursor."""

from __future__ import annotations

from pathlib import Path

from codegemma.errors import InvalidRequestError


def read_source(path: Path) -> str:
    """The file's text, byte for byte (CRLF kept); invalid UTF-8 is a clear error."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{path} is not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 1]!r})"
        ) from exc


def split_at_cursor(text: str, cursor: str) -> tuple[str, str]:
    """(prefix, suffix) of `text` at `cursor` "LINE:COL" (1-based; COL may be one past the end)."""
    try:
        line_text, col_text = cursor.split(":")
        line, col = int(line_text), int(col_text)
    except ValueError as exc:
        raise InvalidRequestError(f"cursor must look like LINE:COL, got {cursor!r}") from exc
    lines = text.splitlines(keepends=True) or [""]
    if text.endswith(("\n", "\r")):
        lines.append("")  # the empty line after a final newline is a valid cursor line
    if not 1 <= line <= len(lines):
        raise InvalidRequestError(f"cursor line {line} is outside the file (1..{len(lines)})")
    content = lines[line - 1].rstrip("\r\n")
    if not 1 <= col <= len(content) + 1:
        raise InvalidRequestError(
            f"cursor column {col} is outside line {line} (1..{len(content) + 1})"
        )
    offset = sum(len(x) for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]
