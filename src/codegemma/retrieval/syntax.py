"""Where definitions start and end, from a tree-sitter parse (extra `repo`).

A grammar is used only where a well-kept package ships it: Python through `tree-sitter-python`.
(`tree-sitter-language-pack` 1.x ships no grammars; it downloads them on first use, which an
offline tool must not do, so it is not used.) Files of other languages are cut by lines.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

from codegemma.optional import require


@dataclasses.dataclass(frozen=True)
class Grammar:
    """What chunking needs to know about one language's syntax tree."""

    language: str  # e.g. "python"
    module: str  # the Python package holding the compiled grammar
    suffixes: tuple[str, ...]  # file name endings it parses
    definitions: frozenset[str]  # node types that define a name: each becomes its own chunk
    wrappers: frozenset[str]  # node types around a definition (decorators), field "definition"
    comment: str = "comment"  # comment node type: comments right above a definition join it


PYTHON = Grammar(
    "python",
    "tree_sitter_python",
    (".py", ".pyi"),
    frozenset({"function_definition", "class_definition"}),
    frozenset({"decorated_definition"}),
)
GRAMMARS = (PYTHON,)


@dataclasses.dataclass(frozen=True)
class Span:
    """Lines [start, end) of a file (0-based) and what they hold."""

    start: int
    end: int
    kind: str  # "definition", "code" (other statements), "comment" or "lines" (no grammar)
    name: str = ""  # a definition's name, "Class.method" inside a class


def grammar_for(path: str) -> Grammar | None:
    """The grammar that parses `path`, by its suffix; None means: cut by lines."""
    suffix = PurePosixPath(path).suffix
    return next((g for g in GRAMMARS if suffix in g.suffixes), None)


class SyntaxSpans:
    """Top-level spans of parsed files. Parsers are made on first use, one per language."""

    def __init__(self) -> None:
        self._parsers: dict[str, object] = {}

    def spans(self, grammar: Grammar, text: str, max_lines: int) -> list[Span]:
        """Statement and definition spans in file order; a definition longer than
        `max_lines` whose body holds definitions (a class) is split into its head (signature,
        docstring, attributes) and the spans of its body."""
        tree = self._parser(grammar).parse(text.encode("utf-8"))
        return _children_spans(tree.root_node.named_children, grammar, max_lines, "")

    def _parser(self, grammar: Grammar):
        if grammar.language not in self._parsers:
            tree_sitter = require("tree_sitter", "repo", "syntax-aware chunking")
            compiled = require(grammar.module, "repo", f"parsing {grammar.language}")
            language = tree_sitter.Language(compiled.language())
            self._parsers[grammar.language] = tree_sitter.Parser(language)
        return self._parsers[grammar.language]


def _children_spans(nodes, grammar: Grammar, max_lines: int, outer: str) -> list[Span]:
    spans: list[Span] = []
    for node in nodes:
        spans.extend(_node_spans(node, grammar, max_lines, outer))
    return spans


def _node_spans(node, grammar: Grammar, max_lines: int, outer: str) -> list[Span]:
    start, end = node.start_point.row, node.end_point.row + 1
    definition = _definition(node, grammar)
    if definition is None:
        return [Span(start, end, "comment" if node.type == grammar.comment else "code")]
    name = _name(definition, outer)
    body = definition.child_by_field_name("body")
    inner = list(body.named_children) if body is not None else []
    first = next((i for i, c in enumerate(inner) if _definition(c, grammar) is not None), None)
    if end - start <= max_lines or first is None:
        return [Span(start, end, "definition", name)]  # a long function is cut by lines later
    head = Span(start, inner[first].start_point.row, "definition", name)
    return [head, *_children_spans(inner[first:], grammar, max_lines, name)]


def _definition(node, grammar: Grammar):
    if node.type in grammar.definitions:
        return node
    if node.type in grammar.wrappers:
        inner = node.child_by_field_name("definition")
        if inner is not None and inner.type in grammar.definitions:
            return inner
    return None


def _name(definition, outer: str) -> str:
    field = definition.child_by_field_name("name")
    own = field.text.decode("utf-8", "replace") if field is not None else ""
    return f"{outer}.{own}" if outer and own else own or outer
