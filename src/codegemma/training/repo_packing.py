"""Repository-level packing: which files of a repository to train on, and in what order.

CodeGemma packs each repository so that related files sit together: files come in the order of
their import graph (a dependency before the files that use it), each unit-test file right after
the file it tests, and the files outside the graph alphabetically. Packed text is
`path\\ncontent` per file, joined by `<|file_separator|>`, as multi-file prompts are written.
"""

from __future__ import annotations

import ast
import heapq
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from codegemma.fim import FILE_SEPARATOR
from codegemma.source_tree import MAX_FILE_BYTES, SOURCE_SUFFIXES, read_text, walk
from codegemma.training.dataset import Document

_JS_IMPORT = re.compile(r"""(?:from\s+|require\(\s*|import\s*\(?\s*)['"](\.{1,2}/[^'"]+)['"]""")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
_TEST_NAME = re.compile(r"^(?:test_(?P<a>.+)|(?P<b>.+?)(?:_test|_tests|Test|Tests|\.test|\.spec))$")


def repository_files(
    root: str | Path,
    *,
    suffixes: Iterable[str] | None = SOURCE_SUFFIXES,
    max_bytes: int = MAX_FILE_BYTES,
) -> dict[str, str]:
    """{relative posix path: text} of the files worth training on under `root`.

    Skipped: whatever `.gitignore` files (at any depth) and `.git/info/exclude` ignore, the
    `.git` directory, files over `max_bytes`, binaries (a NUL byte, or not UTF-8), and names
    whose suffix is not in `suffixes` (None keeps every suffix).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    allowed = None if suffixes is None else frozenset(suffixes)
    files: dict[str, str] = {}
    for path in sorted(walk(root)):
        rel = path.relative_to(root).as_posix()
        if allowed is not None and path.suffix not in allowed:
            continue
        text = read_text(path, max_bytes)
        if text is not None:
            files[rel] = text
    return files


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """{file: the files of this repository it imports}, for Python, JS/TS and C/C++ includes."""
    modules = _python_module_index(files)
    graph: dict[str, set[str]] = {}
    for path, text in files.items():
        if path.endswith((".py", ".pyi")):
            deps = _python_imports(path, text, modules)
        elif path.endswith((".js", ".jsx", ".ts", ".tsx", ".mjs")):
            deps = _relative_imports(path, _JS_IMPORT.findall(text), files, (".js", ".ts", ".tsx"))
        elif path.endswith((".c", ".h", ".cc", ".cpp", ".hpp")):
            deps = _relative_imports(path, _C_INCLUDE.findall(text), files, ())
        else:
            deps = set()
        graph[path] = deps - {path}
    return graph


def target_of_test(test_path: str, files: Iterable[str], imports: set[str]) -> str | None:
    """The file a unit-test file tests, by name (`test_x.py`, `x_test.go`, `x.spec.ts` -> x).

    Among several files with that stem, one the test imports wins, then the one sharing the
    longest directory path with the test; None when `test_path` is not a test file, nothing
    matches, or the match stays ambiguous.
    """
    name = PurePosixPath(test_path).name
    stem = name.rsplit(".", 1)[0] if name.count(".") > 1 else name.split(".")[0]
    match = _TEST_NAME.match(stem)
    if not match:
        return None
    target = match.group("a") or match.group("b")
    candidates = sorted(
        f for f in files if f != test_path and PurePosixPath(f).name.split(".")[0] == target
    )
    imported = [f for f in candidates if f in imports]
    if imported or len(candidates) <= 1:
        return (imported or candidates or [None])[0]
    here = PurePosixPath(test_path).parent.parts
    shared = {f: _common_length(here, PurePosixPath(f).parent.parts) for f in candidates}
    best = max(shared.values())
    closest = [f for f in candidates if shared[f] == best]
    return closest[0] if len(closest) == 1 else None


def _common_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def order_files(files: dict[str, str]) -> list[str]:
    """Files in packing order: graph order, tests after their targets, the rest alphabetical."""
    graph = import_graph(files)
    tests = {}
    for path in files:
        target = target_of_test(path, files, graph[path])
        if target is not None and target_of_test(target, files, graph[target]) is None:
            tests[path] = target
    sources = [f for f in files if f not in tests]
    linked = {f for f in sources if any(d in files and d not in tests for d in graph[f])}
    linked |= {d for f in linked for d in graph[f] if d not in tests}
    ordered = topological(sorted(linked), {f: graph[f] & linked for f in linked})
    ordered += sorted(f for f in sources if f not in linked)
    followers: dict[str, list[str]] = {}
    for test, target in sorted(tests.items()):
        followers.setdefault(target, []).append(test)
    result = []
    for path in ordered:
        result.append(path)
        result.extend(followers.get(path, []))
    return result


def topological(nodes: list[str], deps: dict[str, set[str]]) -> list[str]:
    """Dependencies first; ties alphabetical. A cycle is broken at its alphabetically first
    file among those with the fewest unplaced dependencies, so the order is deterministic."""
    waiting = {n: set(deps.get(n, ())) & set(nodes) for n in nodes}
    users: dict[str, set[str]] = {n: set() for n in nodes}
    for node, needs in waiting.items():
        for dep in needs:
            users[dep].add(node)
    ready = [n for n in nodes if not waiting[n]]
    heapq.heapify(ready)
    placed: list[str] = []
    remaining = set(nodes)
    while remaining:
        if not ready:  # only cycles left
            heapq.heappush(ready, min(remaining, key=lambda n: (len(waiting[n]), n)))
        node = heapq.heappop(ready)
        if node not in remaining:
            continue
        remaining.discard(node)
        placed.append(node)
        for user in users[node]:
            waiting[user].discard(node)
            if not waiting[user] and user in remaining:
                heapq.heappush(ready, user)
    return placed


def repository_documents(root: str | Path, **options) -> list[Document]:
    """The files of a repository as training documents, in packing order."""
    files = repository_files(root, **options)
    return [Document(path, files[path]) for path in order_files(files)]


def packed_text(documents: Iterable[Document]) -> str:
    """Documents as one text: `path\\ncontent` each, joined by `<|file_separator|>`."""
    return FILE_SEPARATOR.join(f"{d.path}\n{d.text}" for d in documents)


def _python_module_index(files: dict[str, str]) -> dict[str, str]:
    """{dotted module name: path}, for the repository root and a `src/` layout."""
    index: dict[str, str] = {}
    for path in files:
        if not path.endswith((".py", ".pyi")):
            continue
        parts = list(PurePosixPath(path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        for start in (1, 0) if parts and parts[0] == "src" else (0,):
            if parts[start:]:
                index.setdefault(".".join(parts[start:]), path)
    return index


def _python_imports(path: str, text: str, modules: dict[str, str]) -> set[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    package = list(PurePosixPath(path).parent.parts)
    if package and package[0] == "src":
        package = package[1:]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    found = set()
    for name in names:
        while name:  # `a.b.c` falls back to `a.b`, then `a`: the package that holds it
            if name in modules:
                found.add(modules[name])
                break
            name = name.rpartition(".")[0]
    return found


def _relative_imports(path: str, specs: list[str], files, suffixes: tuple[str, ...]) -> set[str]:
    base = PurePosixPath(path).parent
    found = set()
    for spec in specs:
        target = _normalise(base / spec)
        options = [target] + [target + s for s in suffixes]
        options += [f"{target}/index{s}" for s in suffixes]
        hit = next((o for o in options if o in files), None)
        if hit is None and not suffixes:  # C includes may be relative to the root
            hit = spec if spec in files else None
        if hit is not None:
            found.add(hit)
    return found


def _normalise(path: PurePosixPath) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)
