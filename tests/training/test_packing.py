"""Repository packing (file choice and order, ignore rules) and packing into token rows."""

import re

import pytest

from codegemma.fim import FILE_SEPARATOR, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codegemma.gitignore import IgnoreRules
from codegemma.training.dataset import Document, pack_rows, split_rows
from codegemma.training.fim_transform import FimOptions
from codegemma.training.repo_packing import (
    order_files,
    packed_text,
    repository_documents,
    repository_files,
    target_of_test,
    topological,
)

REPO = {
    ".gitignore": "build/\n*.log\n!keep.log\n/zeta_root_only.txt\n",
    "pkg/__init__.py": "",
    "pkg/core.py": "def add(a, b):\n    return a + b\n",
    "pkg/util.py": "from pkg.core import add\n\n\ndef twice(x):\n    return add(x, x)\n",
    "pkg/api.py": "from . import util\nfrom .core import add\n",
    "tests/test_util.py": "from pkg.util import twice\n\nassert twice(2) == 4\n",
    "tests/test_core.py": "from pkg import core\n",
    "a_cycle.py": "import b_cycle\n",
    "b_cycle.py": "import a_cycle\n",
    "web/app.js": "import { h } from './lib/helpers';\nexport const x = h(1);\n",
    "web/lib/helpers.js": "export const h = (v) => v + 1;\n",
    "README.md": "# demo\n",
    "notes.txt": "plain notes\n",
    "build/gen.py": "generated = True\n",
    "debug.log": "noise\n",
    "keep.log": "kept although *.log is ignored\n",
    "zeta_root_only.txt": "ignored at the root\n",
    "sub/zeta_root_only.txt": "not ignored below the root\n",
    "sub/.gitignore": "*.tmp\n!important.tmp\n",
    "sub/scratch.tmp": "ignored by the nested .gitignore\n",
    "sub/important.tmp": "re-included\n",
}

EXPECTED_ORDER = [
    # the import graph, dependencies first, ties alphabetical; tests right after their targets
    "pkg/__init__.py",
    "pkg/core.py",
    "tests/test_core.py",
    "pkg/util.py",
    "tests/test_util.py",
    "pkg/api.py",
    "web/lib/helpers.js",
    "web/app.js",
    # a cycle, broken at its alphabetically first file
    "a_cycle.py",
    "b_cycle.py",
    # files outside the graph, alphabetical
    "README.md",
    "keep.log",
    "notes.txt",
    "sub/important.tmp",
    "sub/zeta_root_only.txt",
]


@pytest.fixture()
def repo(tmp_path):
    for rel, text in REPO.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "blob.dat").write_bytes(b"\x89PNG\r\n\x00\x00binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "huge.py").write_text("x = 1\n" * 50_000)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    return tmp_path


def test_repository_files_respect_gitignore_and_skip_binaries_and_huge_files(repo):
    files = repository_files(repo, suffixes=None, max_bytes=100_000)
    assert sorted(files) == sorted([*EXPECTED_ORDER, ".gitignore", "sub/.gitignore"])
    assert files["pkg/util.py"] == REPO["pkg/util.py"]


def test_suffix_filter(repo):
    files = repository_files(repo, max_bytes=100_000)  # default: source-like suffixes
    assert "keep.log" not in files and "sub/important.tmp" not in files
    assert "README.md" in files and "pkg/core.py" in files


def test_order_follows_imports_then_tests_then_alphabet(repo):
    files = repository_files(repo, suffixes=None, max_bytes=100_000)
    files = {p: t for p, t in files.items() if not p.endswith(".gitignore")}
    assert order_files(files) == EXPECTED_ORDER


def test_packed_text_joins_paths_and_contents(repo):
    docs = [d for d in repository_documents(repo, max_bytes=100_000) if d.path.startswith("pkg/")]
    text = packed_text(docs)
    parts = text.split(FILE_SEPARATOR)
    assert parts[1] == "pkg/core.py\n" + REPO["pkg/core.py"]
    assert [p.split("\n", 1)[0] for p in parts] == [
        "pkg/__init__.py",
        "pkg/core.py",
        "pkg/util.py",
        "pkg/api.py",
    ]


@pytest.mark.parametrize(
    "test, expected",
    [
        ("tests/test_util.py", "pkg/util.py"),
        ("src/util_test.go", "pkg/util.py"),
        ("web/helpers.spec.ts", "web/lib/helpers.js"),
        ("pkg/util.py", None),
        ("tests/test_missing.py", None),
    ],
)
def test_tested_file_by_name(test, expected):
    files = [*REPO, test]
    assert target_of_test(test, files, set()) == expected


def test_ambiguous_test_target_prefers_imports_then_the_nearest_directory():
    files = ["a/parse.py", "b/parse.py", "b/test_parse.py", "test/test_parse.py"]
    assert target_of_test("b/test_parse.py", files, set()) == "b/parse.py"
    assert target_of_test("test/test_parse.py", files, set()) is None
    assert target_of_test("test/test_parse.py", files, {"a/parse.py"}) == "a/parse.py"


def test_topological_breaks_cycles_deterministically():
    deps = {"c": {"b"}, "b": {"a"}, "a": {"c"}, "d": set(), "e": {"d", "a"}}
    assert topological(["a", "b", "c", "d", "e"], deps) == ["d", "a", "b", "c", "e"]
    assert topological(["e", "d", "c", "b", "a"], deps) == ["d", "a", "b", "c", "e"]


@pytest.mark.parametrize(
    "rules, path, is_dir, ignored",
    [
        ("*.pyc\n", "x/y/z.pyc", False, True),
        ("/top.txt\n", "top.txt", False, True),
        ("/top.txt\n", "x/top.txt", False, False),
        ("docs/*.md\n", "docs/a.md", False, True),
        ("docs/*.md\n", "docs/sub/a.md", False, False),
        ("**/gen/\n", "a/b/gen", True, True),
        ("**/gen/\n", "a/b/gen", False, False),
        ("logs/**\n", "logs/a/b.txt", False, True),
        ("a/**/z\n", "a/b/c/z", False, True),
        ("# comment\n\n", "comment", False, False),
        ("f[0-9].txt\n", "f7.txt", False, True),
        ("f[!0-9].txt\n", "f7.txt", False, False),
        ("*.txt\n!keep.txt\n", "keep.txt", False, False),
        ("\\#hash\n", "#hash", False, True),
    ],
)
def test_gitignore_patterns(tmp_path, rules, path, is_dir, ignored):
    (tmp_path / ".gitignore").write_text(rules)
    assert IgnoreRules(tmp_path).ignored(tmp_path / path, is_dir=is_dir) is ignored


# --------------------------------------------------------------------------- token rows


def _docs():
    body = "".join(f"def f{i}(x):\n    return x * {i} + 1\n\n\n" for i in range(40))
    return [Document("mod/a.py", body), Document("", "x = 1\n"), Document("b.py", body[:300])]


def _row_texts(rows, tokenizer):
    texts = []
    for row in rows.tolist():
        assert row[0] == tokenizer.bos_id
        ids = [t for t in row[1:] if t != tokenizer.pad_id]
        assert row[1 + len(ids) :] == [tokenizer.pad_id] * (len(row) - 1 - len(ids))
        texts.append(tokenizer.decode(ids))
    return texts


def test_plain_rows_hold_every_document_once_with_headers(tiny_tokenizer):
    docs = _docs()
    rows = pack_rows(docs, tiny_tokenizer, 96, options=FimOptions(fim_rate=0.0))
    assert rows.shape[1] == 96 and len(rows) > 5
    assert float((rows != tiny_tokenizer.pad_id).float().mean()) > 0.8  # little padding
    stream = "".join(_row_texts(rows, tiny_tokenizer))
    expected = "".join((f"{d.path}\n" if d.path else "") + d.text + FILE_SEPARATOR for d in docs)
    assert stream == expected


@pytest.mark.parametrize("piece_tokens", [None, (24, 40)])
def test_fim_rows_reassemble_the_documents(tiny_tokenizer, piece_tokens):
    docs = _docs()
    options = FimOptions(fim_rate=1.0)
    rows = pack_rows(docs, tiny_tokenizer, 96, options=options, seed=3, piece_tokens=piece_tokens)
    layout = re.compile(
        rf"(?s)(?:{re.escape(FIM_PREFIX)}(?P<p1>.*){re.escape(FIM_SUFFIX)}(?P<s1>.*)"
        rf"|{re.escape(FIM_SUFFIX)}(?P<s2>.*){re.escape(FIM_PREFIX)}(?P<p2>.*))"
        rf"{re.escape(FIM_MIDDLE)}(?P<m>.*)"
    )
    rebuilt, modes = [], set()
    for text in _row_texts(rows, tiny_tokenizer):
        assert text.endswith(FILE_SEPARATOR)  # every FIM piece is closed, never cut
        for piece in text.split(FILE_SEPARATOR)[:-1]:
            header = next((f"{d.path}\n" for d in docs if d.path and piece.startswith(d.path)), "")
            match = layout.fullmatch(piece[len(header) :])
            assert match, piece
            modes.add("psm" if match["p1"] is not None else "spm")
            prefix = match["p1"] if match["p1"] is not None else match["p2"]
            suffix = match["s1"] if match["s1"] is not None else match["s2"]
            rebuilt.append(prefix + match["m"] + suffix)
            if piece_tokens:  # the window's text is at most 40 tokens (re-encoding may add a few)
                assert len(tiny_tokenizer.encode(rebuilt[-1], add_bos=False)) <= 40 + 4
    if piece_tokens:
        assert len(rebuilt) > 2 * len(rows)  # several examples per row
    assert "".join(rebuilt) == "".join(d.text for d in docs)
    assert modes == {"psm", "spm"}


def test_windows_end_on_line_boundaries(tiny_tokenizer):
    text = "".join(f"value_{i} = compute({i}, {i + 1})\n" for i in range(60))
    options = FimOptions(fim_rate=0.0)
    rows = pack_rows(
        [Document("", text)], tiny_tokenizer, 96, options=options, piece_tokens=(20, 40)
    )
    texts = _row_texts(rows, tiny_tokenizer)  # a row ends where its last window ends
    assert "".join(texts) == text + FILE_SEPARATOR
    assert len(texts) > 3 and all(t.endswith(("\n", FILE_SEPARATOR)) for t in texts)


def test_rows_are_reproducible_and_split(tiny_tokenizer):
    docs = _docs()
    a = pack_rows(docs, tiny_tokenizer, 64, seed=5)
    b = pack_rows(docs, tiny_tokenizer, 64, seed=5)
    assert a.equal(b)
    train, held = split_rows(a, 0.25, seed=0)
    assert len(train) + len(held) == len(a) and len(held) == round(len(a) * 0.25)
