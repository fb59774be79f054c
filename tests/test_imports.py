"""The package's imports point one way, down the layering written at the top of README's
Layout section: parsed with `ast` from the source, every arrow between two modules of
`codegemma` must go to the same layer or a lower one, the modules and the subpackages must
form no cycle, and an import inside a function is only for an optional extra, named in a
comment (`# extra 'serve'`), or for a slow third-party import, with the reason
(`# deferred: ...`): never to dodge a cycle."""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
README = ROOT / "README.md"

# Run by path in a fresh interpreter inside the evaluation sandbox, never imported.
SCRIPTS = {"codegemma.evaluation.sandbox_child"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    found = {}
    for path in sorted((SOURCE / "codegemma").rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name not in SCRIPTS:
            found[name] = path
    return found


def layering() -> list[tuple[str, list[str]]]:
    """(layer, module patterns) from the first code block of README's Layout section, lowest
    first: lines `layer: module, package.*, ...`."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```", 2)[1]
    layers = []
    for line in block.splitlines():
        if ":" in line:
            name, listed = line.split(":", 1)
            patterns = [p.strip() for p in listed.split(",") if p.strip()]
            layers.append((name.strip(), patterns))
    return layers


def layer_of(module: str, layers) -> int | None:
    """The index of the layer whose patterns name `module` (longest pattern wins)."""
    short = module.removeprefix("codegemma.") if module != "codegemma" else "codegemma"
    best, best_length = None, -1
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            base = pattern.removesuffix(".*")
            matched = short == base or (pattern.endswith(".*") and short.startswith(base + "."))
            if matched and len(base) > best_length:
                best, best_length = index, len(base)
    return best


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name: from module `source` (line `line`, its `text`) to `target`."""

    source: str
    target: str
    line: int
    nested: bool  # inside a function
    text: str  # the statement's line and the line above it (where a comment may explain it)


def imports(known: dict[str, Path]) -> list[Import]:
    """Every import statement of every module: its target (a package module where one is
    named, e.g. `from codegemma.gguf import names` -> codegemma.gguf.names), and whether it
    sits inside a function."""
    found = []
    for name, path in known.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, nested in _walk(ast.parse(source)):
            text = "\n".join(lines[max(0, node.lineno - 2) : node.lineno])  # with its comment
            for target in _targets(node, package, known):
                found.append(Import(name, target, node.lineno, nested, text))
    return found


def _walk(tree: ast.AST, nested: bool = False):
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, nested
        inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def _targets(node, package: str, known) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module
    return [
        f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
        for alias in node.names
    ]


@pytest.fixture(scope="module")
def graph():
    known = modules()
    edges = [i for i in imports(known) if i.target.split(".")[0] == "codegemma"]
    return known, edges, layering()


def test_every_module_has_one_layer(graph):
    known, _, layers = graph
    assert [name for name, _ in layers][:2] == ["core", "weights"]
    missing = [m for m in known if layer_of(m, layers) is None]
    assert not missing, f"modules in no layer of README's Layout section: {missing}"
    for _, patterns in layers:
        for pattern in patterns:
            base = "codegemma" if pattern == "codegemma" else "codegemma." + pattern
            base = base.removesuffix(".*")
            assert any(m == base or m.startswith(base + ".") for m in known), (
                f"README's layering names {pattern}, which is not a module"
            )


def test_every_arrow_points_down(graph):
    known, edges, layers = graph
    upward = []
    for edge in edges:
        target = _owner(edge.target, known)
        low, high = layer_of(edge.source, layers), layer_of(target, layers)
        if low is not None and high is not None and low < high:
            upward.append(
                f"{edge.source} ({layers[low][0]}) imports {target} ({layers[high][0]}), "
                f"line {edge.line}"
            )
    assert not upward, "imports pointing up the layering:\n" + "\n".join(upward)


def test_modules_and_subpackages_form_no_cycle(graph):
    known, edges, _ = graph
    arrows = {(e.source, _owner(e.target, known)) for e in edges}
    arrows = {(a, b) for a, b in arrows if a != b}
    assert _cycle(arrows) is None, f"import cycle between modules: {_cycle(arrows)}"
    packages = {(_package(a), _package(b)) for a, b in arrows if _package(a) != _package(b)}
    packages = {(a, b) for a, b in packages if "codegemma" not in (a, b)}
    assert _cycle(packages) is None, f"import cycle between subpackages: {_cycle(packages)}"


def test_imports_inside_functions_are_for_optional_extras_only(graph):
    known, _, _ = graph
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(config["project"]["optional-dependencies"])
    wrong = []
    for edge in imports(known):
        if not edge.nested:
            continue
        extra = re.search(r"# extra '([\w-]+)'", edge.text)
        deferred = "# deferred: " in edge.text and not edge.target.startswith("codegemma")
        if not (deferred or (extra and extra.group(1) in extras)):
            statement = edge.text.splitlines()[-1].strip()
            wrong.append(f"{edge.source}, line {edge.line}: {statement}")
    assert not wrong, "imports inside functions without an extra named:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_arrow_and_a_cycle():
    layers = [("core", ["errors"]), ("model", ["model", "quant.*"])]
    assert layer_of("codegemma.errors", layers) == 0
    assert layer_of("codegemma.quant.blocks", layers) == 1
    assert layer_of("codegemma.cli", layers) is None
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a")}) in (
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    )
    assert _cycle({("a", "b"), ("a", "c"), ("b", "c")}) is None
    statement = ast.parse("def f():\n    from codegemma import cli\n")
    [(node, nested)] = list(_walk(statement))
    assert nested and _targets(node, "codegemma", {"codegemma.cli": None}) == ["codegemma.cli"]


def _owner(target: str, known) -> str:
    """The module that defines `target` (an attribute imported from a module)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def _package(module: str) -> str:
    """codegemma.gguf.reader -> codegemma.gguf; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def _cycle(arrows: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph, as a path that returns to its start, or None."""
    successors: dict[str, list[str]] = {}
    for a, b in sorted(arrows):
        successors.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in successors.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(successors):
        if start not in state and (found := visit(start)):
            return found
    return None
