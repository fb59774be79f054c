"""Natural places to cut a document into prefix, middle and suffix.

CodeGemma's report says its suffixes start at syntactically natural points rather than at a
uniformly random character. Here a document is analysed once into candidate middles (character
spans `[start, end)`), grouped by kind; the FIM transform then draws a kind, then a span.

Python is parsed with `ast` (statements, expressions) and `tokenize` (cursor positions inside a
line). Other languages get the language-independent kinds (whole lines, runs of lines, the rest
of a line after a word boundary): no parser for them ships with a package this project uses.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import io
import re
import tokenize
import warnings
from collections.abc import Mapping

Span = tuple[int, int]

# How often each kind of middle is drawn when a document offers it (renormalised over the kinds
# present). "line": one whole non-blank line with its newline; "lines": 2-6 consecutive lines;
# "statement": the whole lines of one Python statement (compound ones included); "expression":
# one Python expression, exactly; "line_tail": from a token start to the end of its line.
DEFAULT_KIND_WEIGHTS: Mapping[str, float] = {
    "line": 0.3,
    "lines": 0.1,
    "statement": 0.15,
    "expression": 0.15,
    "line_tail": 0.2,
    "random": 0.1,
}

_WORD_START = re.compile(r"(?<![\w])(?=\w)|(?<=[\s(\[{,=:])(?=[^\s])")


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Candidate middles of one document by kind, each list sorted by start offset."""

    kinds: Mapping[str, list[Span]]

    def within(self, lo: int, hi: int) -> Candidates:
        """The spans lying inside `[lo, hi)`, shifted so that `lo` becomes 0."""
        kept: dict[str, list[Span]] = {}
        for kind, spans in self.kinds.items():
            first = bisect.bisect_left(spans, (lo, lo))
            last = bisect.bisect_left(spans, (hi, hi))
            inside = [(s - lo, e - lo) for s, e in spans[first:last] if e <= hi]
            if inside:
                kept[kind] = inside
        return Candidates(kept)


def line_spans(text: str) -> list[Span]:
    """Each non-blank line with its newline (the last line may lack one)."""
    spans, start = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            spans.append((start, start + len(line)))
        start += len(line)
    return spans


def line_run_spans(lines: list[Span], longest: int = 6) -> list[Span]:
    """Runs of 2..`longest` adjacent non-blank lines (a block being written), from `lines`."""
    runs = []
    for i, (start, _) in enumerate(lines):
        for j in range(i + 1, min(i + longest, len(lines))):
            if lines[j][0] != lines[j - 1][1]:
                break
            runs.append((start, lines[j][1]))
    return runs


def word_tail_spans(text: str) -> list[Span]:
    """From each word or bracket boundary inside a line to the end of that line (no newline)."""
    spans, start = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        indent = len(body) - len(body.lstrip())
        for match in _WORD_START.finditer(body, indent + 1):
            if match.start() < len(body):
                spans.append((start + match.start(), start + len(body)))
        start += len(line)
    return spans


def python_candidates(text: str) -> Candidates | None:
    """Candidates from Python's own parser, or None when `text` does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old code
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    starts = _line_starts(text)
    lines = text.splitlines(keepends=True)
    statements, expressions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.end_lineno is not None:
            first = lines[node.lineno - 1]
            if _char_col(first, node.col_offset) != len(first) - len(first.lstrip()):
                continue  # shares its line with code before it: no whole-line middle
            statements.add((starts[node.lineno - 1], starts[node.end_lineno]))
        elif isinstance(node, ast.expr) and node.end_lineno is not None:
            begin = starts[node.lineno - 1] + _char_col(lines[node.lineno - 1], node.col_offset)
            end = starts[node.end_lineno - 1] + _char_col(
                lines[node.end_lineno - 1], node.end_col_offset
            )
            if end > begin:
                expressions.add((begin, end))
    line_list = line_spans(text)
    kinds = {
        "line": line_list,
        "lines": line_run_spans(line_list),
        "statement": sorted(statements),
        "expression": sorted(expressions),
        "line_tail": _token_tails(text, starts) or word_tail_spans(text),
    }
    return Candidates({k: v for k, v in kinds.items() if v})


def generic_candidates(text: str) -> Candidates:
    """Language-independent candidates: lines, runs of lines, rests of lines."""
    line_list = line_spans(text)
    kinds = {
        "line": line_list,
        "lines": line_run_spans(line_list),
        "line_tail": word_tail_spans(text),
    }
    return Candidates({k: v for k, v in kinds.items() if v})


def candidates_for(path: str, text: str) -> Candidates:
    """The best candidates available for a file, chosen by its extension."""
    if path.endswith((".py", ".pyi")):
        parsed = python_candidates(text)
        if parsed is not None:
            return parsed
    return generic_candidates(text)


def _line_starts(text: str) -> list[int]:
    """Offset where each line starts, plus one entry for the end of the text."""
    starts, offset = [0], 0
    for line in text.splitlines(keepends=True):
        offset += len(line)
        starts.append(offset)
    return starts


def _char_col(line: str, byte_col: int) -> int:
    """`ast` columns count UTF-8 bytes; turn one into a character column."""
    if line.isascii():
        return byte_col
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _token_tails(text: str, starts: list[int]) -> list[Span]:
    """From every token start that is not first on its line to the end of that line."""
    if not text.endswith("\n"):
        text += "\n"
    lines = text.splitlines(keepends=True)
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            (row, col), (end_row, _) = tok.start, tok.end
            if tok.type in _SKIPPED_TOKENS or row != end_row or row > len(lines):
                continue
            body = lines[row - 1].rstrip("\r\n")
            if col > len(body) - len(body.lstrip()) and col < len(body):
                spans.append((starts[row - 1] + col, starts[row - 1] + len(body)))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    return spans


_SKIPPED_TOKENS = frozenset(
    {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
)
