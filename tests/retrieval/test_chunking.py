"""Chunking files for retrieval: definitions from tree-sitter for Python, lines otherwise."""

from __future__ import annotations

import pytest

from codegemma.retrieval.chunking import chunk_file, group_spans, paragraph_spans, split_lines
from codegemma.retrieval.syntax import Span, SyntaxSpans, grammar_for

PYTHON = '''\
"""Module docstring."""

import os

LIMIT = 3


# Reads one file.
# (two comment lines right above the definition)
def read(path):
    with open(path) as f:
        return f.read()


@decorated
def write(path, text):
    open(path, "w").write(text)


class Store:
    """Keeps things."""

    size = 0

    def get(self, key):
        return key

    def put(self, key, value):
        self.size += 1


print(read(os.devnull))
'''


def spans_of(chunks):
    return [(c.start, c.end, c.kind, c.name) for c in chunks]


def test_python_chunks_start_and_end_at_definitions():
    chunks = chunk_file("pkg/store.py", PYTHON, SyntaxSpans(), max_lines=30)
    assert spans_of(chunks) == [
        (0, 5, "code", ""),  # docstring, import and constant: statements merged
        (7, 12, "definition", "read"),  # the comment lines above it belong to it
        (14, 17, "definition", "write"),  # decorator included
        (19, 29, "definition", "Store"),  # a class that fits stays whole
        (31, 32, "code", ""),
    ]
    lines = split_lines(PYTHON)
    for chunk in chunks:
        assert chunk.text == "".join(line + "\n" for line in lines[chunk.start : chunk.end])
        assert chunk.path == "pkg/store.py"


def test_a_class_too_long_for_one_chunk_gives_its_head_and_each_method():
    chunks = chunk_file("store.py", PYTHON, SyntaxSpans(), max_lines=6)
    assert spans_of(chunks)[3:6] == [
        (19, 24, "definition", "Store"),  # signature, docstring, attributes
        (24, 26, "definition", "Store.get"),
        (27, 29, "definition", "Store.put"),
    ]
    assert chunks[3].text.startswith("class Store:")
    assert chunks[4].text.startswith("    def get(self, key):")


def test_a_long_function_is_cut_into_windows_of_max_lines():
    body = "".join(f"    x{i} = {i}\n" for i in range(25))
    chunks = chunk_file("long.py", f"def big():\n{body}", SyntaxSpans(), max_lines=10)
    assert [(c.start, c.end) for c in chunks] == [(0, 10), (10, 20), (20, 26)]
    assert {c.name for c in chunks} == {"big"}
    assert all(c.end - c.start <= 10 for c in chunks)


def test_other_languages_fall_back_to_lines_grouped_at_blank_lines():
    text = "a = 1\nb = 2\n\nc = 3\n\n\n" + "".join(f"x{i}\n" for i in range(7)) + "tail\n"
    assert grammar_for("notes.txt") is None and grammar_for("x.js") is None
    chunks = chunk_file("notes.txt", text, SyntaxSpans(), max_lines=5)
    assert spans_of(chunks) == [
        (0, 4, "lines", ""),  # two paragraphs merged: they fit in 5 lines
        (6, 11, "lines", ""),  # a paragraph of 8 lines, cut into windows
        (11, 14, "lines", ""),
    ]
    # The same Python text with no syntax chunker is cut by lines too.
    by_lines = chunk_file("store.py", PYTHON, None, max_lines=30)
    assert {c.kind for c in by_lines} == {"lines"}


def test_python_that_does_not_parse_still_gives_chunks_covering_its_code():
    broken = "def ok():\n    return 1\n\ndef broken(:\n    pass\n"
    chunks = chunk_file("broken.py", broken, SyntaxSpans(), max_lines=30)
    covered = {i for c in chunks for i in range(c.start, c.end)}
    assert {0, 1, 3, 4} <= covered
    assert chunks[0].name == "ok"


def test_chunks_are_reproducible_and_unicode_lines_count_like_tree_sitter():
    text = 'S = "é ✓"\n\x0c\ndef f():\n    return "日本"\n'  # a form feed is not a line break
    first = chunk_file("u.py", text, SyntaxSpans(), max_lines=30)
    assert first == chunk_file("u.py", text, SyntaxSpans(), max_lines=30)
    assert [(c.start, c.end, c.name) for c in first if c.kind == "definition"] == [(2, 4, "f")]
    assert first[-1].text == 'def f():\n    return "日本"\n'


def test_group_spans_never_merges_definitions_and_rejects_bad_sizes():
    spans = [Span(0, 1, "code"), Span(1, 3, "definition", "f"), Span(3, 4, "code")]
    assert group_spans(spans, 10) == spans
    assert paragraph_spans(["", "a", "", "b", "c"]) == [Span(1, 2, "lines"), Span(3, 5, "lines")]
    with pytest.raises(ValueError):
        chunk_file("a.py", "x = 1\n", SyntaxSpans(), max_lines=0)
