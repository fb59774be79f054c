"""The words BM25 sees in code: identifiers, lower-cased, plus their snake_case / camelCase parts.

`read_file_contents` yields "read_file_contents", "read", "file", "contents", so a query that
uses `readFile` or `contents` still meets it. Keywords shared by the common languages, the
commonest English words (comments and docstrings are full of them) and one-letter names carry
nothing and are left out.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Parts of an identifier: an upper-case run before a capitalised word (HTTPServer -> HTTP,
# Server), capitalised or lower-case words, digit runs.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
STOP_WORDS = frozenset(
    """
    and as assert async await break case catch class const continue def default del elif else
    enum except export extends false final finally fn for from func function if impl import in
    is let match mut new none nil not null or pass private protected pub public raise return
    self static struct super switch this throw true try type use var void while with yield
    the an of to on at by be are was were it its this that these those over into than then
    """.split()
)


def terms(text: str) -> list[str]:
    """The BM25 terms of `text`, in order of appearance (repeats kept: they are frequencies)."""
    out: list[str] = []
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        whole = word.lower()
        if len(whole) > 1 and whole not in STOP_WORDS:
            out.append(whole)
        parts = [p.lower() for p in _PART.findall(word)]
        if len(parts) > 1:
            out.extend(p for p in parts if len(p) > 1 and p not in STOP_WORDS)
    return out


def identifiers(text: str) -> set[str]:
    """The distinct identifiers of `text`, as written (case kept)."""
    return set(_IDENTIFIER.findall(text))
