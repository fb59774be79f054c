"""The repository-level completion benchmark (CrossCodeEval style), built from installed source.

Each task hides one whole line of a package module that uses a name the module imports from
another module of the same package: the answer needs that other file. The source
is a pure-Python package installed with codegemma (default: huggingface_hub and tqdm, which the
shipped default model never saw: it was trained on the standard library only), read from
site-packages, so every machine can build the tasks offline. The build is deterministic: the
same package version gives the same tasks, and each package's name, version and source hash
are recorded with the data.

How a task is found (all by `ast`, on module-level imports only):
- `from .x import name` / `from pkg.x import name as alias` binds a name defined in module x
  (followed through re-exports, up to 4 hops, to the module whose top level defines it);
  `from . import x` / `import pkg.x as x` binds a module, used as `x.name`.
- A line with a use of such a binding in code (not one shadowed by a parameter or local of the
  function it is in; not inside an f-string) is a task: the prompt is the file up to that line,
  the answer the line (indentation included, newline excluded), the suffix the newline and the
  rest of the file. The first such use on the line is the one recorded. Lines over 100
  characters (mostly long string literals) are left out. The whole line is hidden, not the
  rest of it from the name on: a prompt that ends inside a line's indentation or after an
  opening bracket is unlike anything small models are trained on, and scores near nothing.
- Tasks are ranked by a hash of their place and taken in that order, at most `per_file` from
  one file, `per_package` in all; then listed by file and line.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from codegemma.evaluation.tasks import CrossFileUse, Dataset, DatasetError, Task
from codegemma.source_tree import read_text, walk

DEFAULT_PACKAGES = ("huggingface_hub", "tqdm")
PER_PACKAGE = 80
PER_FILE = 4
_MAX_ANSWER_CHARS = 100  # longer lines are mostly string literals
_HOPS = 4  # re-exports followed to find where a name is defined


@dataclasses.dataclass(frozen=True)
class _Module:
    path: str  # relative to the folder holding the package, e.g. "tqdm/std.py"
    dotted: str  # e.g. "tqdm.std" ("tqdm" for tqdm/__init__.py)
    text: str
    tree: ast.Module
    definitions: dict[str, int]  # {name: 0-based line} of what its top level defines


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A task before its text is cut out of the file."""

    module: _Module
    answer: str  # the hidden line, without its newline
    use: CrossFileUse


@dataclasses.dataclass(frozen=True)
class _Binding:
    module: str  # dotted name of the module the import reads from
    name: str | None  # the imported name; None when the binding is the module itself


def package_root(package: str) -> Path:
    """The folder of an installed package (the one holding its `__init__.py`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"{package!r} is not an installed package (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def package_tasks(
    root: Path, package: str, *, per_package: int = PER_PACKAGE, per_file: int = PER_FILE
) -> list[Task]:
    """The tasks of package `package` found in `root / package` (paths relative to `root`)."""
    modules = _read_modules(root, package)
    bindings = {dotted: _bindings(m, modules) for dotted, m in modules.items()}
    found = [c for m in modules.values() for c in _module_candidates(m, modules, bindings)]
    found.sort(key=lambda c: hashlib.sha256(_task_id(c).encode()).hexdigest())
    taken: list[_Candidate] = []
    per: dict[str, int] = {}
    for candidate in found:
        if len(taken) == per_package:
            break
        path = candidate.module.path
        if per.get(path, 0) < per_file:
            per[path] = per.get(path, 0) + 1
            taken.append(candidate)
    taken.sort(key=lambda c: (c.module.path, c.use.line))
    return [_task(c) for c in taken]


def repo_completion_dataset(
    packages: Sequence[str] = DEFAULT_PACKAGES, *, per_package: int = PER_PACKAGE
) -> Dataset:
    """The benchmark over installed `packages`; `source` records each one's version and hash."""
    tasks: list[Task] = []
    sources = []
    for package in packages:
        folder = package_root(package)
        package_found = package_tasks(folder.parent, package, per_package=per_package)
        tasks.extend(package_found)
        sources.append(_package_source(folder, package, len(package_found)))
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(t) for t in tasks]).encode())
    source = {"packages": sources, "sha256": digest.hexdigest()}
    return Dataset("repo-completion", tuple(tasks), source)


def _package_source(folder: Path, package: str, tasks: int) -> dict:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "package": package,
        "version": version,
        "root": str(folder.parent),  # the repository root the index and paths use
        "tasks": tasks,
        "sha256": digest.hexdigest(),  # of the package's .py files
    }


# --- reading the package -------------------------------------------------------------------


def _read_modules(root: Path, package: str) -> dict[str, _Module]:
    """{dotted name: module} of every parsable .py file of the package, in path order."""
    modules = {}
    for file in walk(root, root / package):
        if file.suffix != ".py":
            continue
        text = read_text(file)
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        rel = file.relative_to(root).as_posix()
        parts = list(PurePosixPath(rel).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = _Module(rel, ".".join(parts), text, tree, _definitions(tree))
    return modules


def _top_level(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking inside `if` and `try` blocks (not functions, classes)."""
    for node in statements:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                yield from _top_level(handler.body)


def _bindings(module: _Module, modules: dict[str, _Module]) -> dict[str, _Binding]:
    """{local name: what it refers to} for imports of the same package's modules."""
    package = module.dotted.split(".")[0]
    here = module.dotted
    found: dict[str, _Binding] = {}
    for node in _top_level(module.tree.body):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node, here, module.path.endswith("__init__.py"))
            if base is None or base.split(".")[0] != package:
                continue
            for alias in node.names:
                local = alias.asname or alias.name
                if f"{base}.{alias.name}" in modules:
                    found[local] = _Binding(f"{base}.{alias.name}", None)
                elif base in modules and alias.name != "*":
                    found[local] = _Binding(base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules and alias.name.startswith(package):
                    found[alias.asname] = _Binding(alias.name, None)
    return found


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str | None:
    """The dotted module an ImportFrom reads from, relative levels resolved."""
    if not node.level:
        return node.module
    parts = here.split(".")
    anchor = parts if is_package else parts[:-1]  # a package's `.` is itself
    if node.level - 1 > len(anchor) - 1:
        return None
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _definitions(tree: ast.Module) -> dict[str, int]:
    """{name: 0-based line} of the functions, classes and variables a module's top level
    defines (the first definition of a name)."""
    found: dict[str, int] = {}
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.setdefault(node.name, node.lineno - 1)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, node.lineno - 1)
    return found


def _resolve(
    module: str, name: str, modules: dict[str, _Module], bindings: dict[str, dict[str, _Binding]]
) -> tuple[_Module, int] | None:
    """(defining module, line) of `name` read from `module`, through re-exports."""
    for _ in range(_HOPS):
        source = modules.get(module)
        if source is None:
            return None
        if name in source.definitions:
            return source, source.definitions[name]
        binding = bindings[module].get(name)
        if binding is None or binding.name is None:
            return None
        module, name = binding.module, binding.name
    return None


# --- finding the tasks ---------------------------------------------------------------------


def _module_candidates(
    module: _Module, modules: dict[str, _Module], bindings: dict[str, dict[str, _Binding]]
) -> list[_Candidate]:
    """One candidate per line that uses a name of another module of the package (first use)."""
    if not bindings[module.dotted] or "\r" in module.text:
        return []
    finder = _UseFinder(bindings[module.dotted])
    finder.visit(module.tree)
    lines = module.text.split("\n")
    found: dict[int, _Candidate] = {}
    for line, _, binding, shown in sorted(finder.uses, key=lambda u: u[:2]):
        if line in found or len(lines[line]) > _MAX_ANSWER_CHARS:
            continue
        name = shown.split(".")[-1] if binding.name is None else binding.name
        place = _resolve(binding.module, name, modules, bindings)
        if place is not None and place[0].path != module.path:
            defined = _defined_name(place[0], place[1], name)
            use = CrossFileUse(shown, line, place[0].path, place[1], defined)
            found[line] = _Candidate(module, lines[line], use)
    return list(found.values())


def _defined_name(module: _Module, line: int, fallback: str) -> str:
    """The name as its defining module spells it (an import may have renamed it)."""
    return next((n for n, at in module.definitions.items() if at == line), fallback)


def _task(candidate: _Candidate) -> Task:
    module, use = candidate.module, candidate.use
    lines = module.text.split("\n")
    offset = sum(len(x) + 1 for x in lines[: use.line])
    return Task(
        task_id=_task_id(candidate),
        prompt=module.text[:offset],
        suffix=module.text[offset + len(candidate.answer) :],
        solution=candidate.answer,
        test="",
        path=module.path,
        cross_file=use,
    )


def _task_id(candidate: _Candidate) -> str:
    return f"RepoCompletion/{candidate.module.path}:{candidate.use.line + 1}"


class _UseFinder(ast.NodeVisitor):
    """Uses of imported bindings in code: (line, column in bytes, binding, the use's text:
    "name" or "module.name")."""

    def __init__(self, bindings: dict[str, _Binding]) -> None:
        self.bindings = bindings
        self.uses: list[tuple[int, int, _Binding, str]] = []
        self._locals: list[set[str]] = []

    def _visible(self, name: str) -> _Binding | None:
        if any(name in scope for scope in self._locals):
            return None
        return self.bindings.get(name)

    def visit_FunctionDef(self, node) -> None:
        for outer in [*node.decorator_list, node.args, node.returns]:
            if outer is not None:
                self.visit(outer)  # evaluated where the function is defined
        self._locals.append(_local_names(node))
        for statement in node.body:
            self.visit(statement)
        self._locals.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._locals.append(_local_names(node))
        self.visit(node.body)
        self._locals.pop()

    def visit_arg(self, node: ast.arg) -> None:
        if node.annotation is not None:
            self.visit(node.annotation)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        pass  # f-strings: positions inside them are not worth the trouble

    def visit_Name(self, node: ast.Name) -> None:
        binding = self._visible(node.id)
        if isinstance(node.ctx, ast.Load) and binding is not None and binding.name is not None:
            self.uses.append((node.lineno - 1, node.col_offset, binding, node.id))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name) and isinstance(node.ctx, ast.Load):
            binding = self._visible(value.id)
            if binding is not None and binding.name is None:
                shown = f"{value.id}.{node.attr}"
                self.uses.append((value.lineno - 1, value.col_offset, binding, shown))
                return
        self.generic_visit(node)


def _local_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """Parameters and every name bound anywhere inside: they hide module-level imports."""
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    names = {a.arg for a in every if a is not None}
    for inner in ast.walk(node):
        if isinstance(inner, ast.Name) and not isinstance(inner.ctx, ast.Load):
            names.add(inner.id)
        elif isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(inner.name)
        elif isinstance(inner, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in inner.names)
    return names
