"""Cutting a file into chunks for retrieval: at definitions where a grammar is known, by lines
otherwise.

With a grammar (see `syntax`), every function and class is a chunk of its own (with the comment
lines right above it); a class too long for one chunk gives its head (signature, docstring,
attributes) and each method; the statements between definitions are grouped into chunks of up
to `max_lines` lines. Without one, blank-line-separated paragraphs are grouped the same way.
Anything still longer than `max_lines` is cut into windows of `max_lines` lines. Blank lines
between chunks belong to none. The result depends only on the text, so it is reproducible.
"""

from __future__ import annotations

import dataclasses

from codegemma.retrieval.syntax import Span, SyntaxSpans, grammar_for

DEFAULT_MAX_LINES = 30


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A run of whole lines of one file: the unit the index scores and the context shows."""

    path: str  # relative to the repository root, "/"-separated
    start: int  # first line, 0-based
    end: int  # one past the last line
    kind: str  # "definition", "code" (statements between definitions) or "lines"
    name: str  # a definition's name ("Class.method" for methods); "" for the other kinds
    text: str  # the lines themselves, each with its "\n" (the file's last may lack it)


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only, as tree-sitter counts rows (str.splitlines also splits at
    form feeds and other separators, which would shift every later line)."""
    return text.split("\n")


def line_text(lines: list[str], start: int, end: int) -> str:
    """Lines [start, end) of `split_lines` output as text, newlines kept."""
    return "\n".join(lines[start:end]) + ("\n" if end < len(lines) else "")


def chunk_file(
    path: str, text: str, syntax: SyntaxSpans | None, max_lines: int = DEFAULT_MAX_LINES
) -> list[Chunk]:
    """The chunks of one file in line order; `syntax` None cuts every file by lines."""
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1, got {max_lines}")
    lines = split_lines(text)
    grammar = grammar_for(path) if syntax is not None else None
    if grammar is None:
        spans = paragraph_spans(lines)
    else:
        spans = _comments_into_definitions(syntax.spans(grammar, text, max_lines))
    return [
        Chunk(path, s.start, s.end, s.kind, s.name, line_text(lines, s.start, s.end))
        for s in group_spans(spans, max_lines)
        if line_text(lines, s.start, s.end).strip()
    ]


def paragraph_spans(lines: list[str]) -> list[Span]:
    """Runs of non-blank lines."""
    spans, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            spans.append(Span(start, i, "lines"))
            start = None
    return spans


def group_spans(spans: list[Span], max_lines: int) -> list[Span]:
    """Definitions alone; neighbouring other spans merged while they fit in `max_lines`;
    then everything cut into windows of at most `max_lines` lines."""
    groups: list[Span] = []
    for span in spans:
        last = groups[-1] if groups else None
        mergeable = span.kind != "definition" and last is not None and last.kind != "definition"
        if mergeable and span.end - last.start <= max_lines:
            kind = "lines" if span.kind == "lines" else "code"
            groups[-1] = Span(last.start, span.end, kind)
        else:
            groups.append(
                span if span.kind != "comment" else dataclasses.replace(span, kind="code")
            )
    return [w for g in groups for w in _windows(g, max_lines)]


def _comments_into_definitions(spans: list[Span]) -> list[Span]:
    """Comment lines directly above a definition (no blank line between) become part of it."""
    out: list[Span] = []
    for span in spans:
        if span.kind == "definition":
            while out and out[-1].kind == "comment" and out[-1].end == span.start:
                span = dataclasses.replace(span, start=out.pop().start)
        out.append(span)
    return out


def _windows(span: Span, max_lines: int) -> list[Span]:
    return [
        dataclasses.replace(span, start=s, end=min(span.end, s + max_lines))
        for s in range(span.start, span.end, max_lines)
    ]
