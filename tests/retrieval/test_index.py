"""The repository index: which files, incremental updates, the store on disk, BM25 search."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import codegemma.retrieval.index as index_module
from codegemma.retrieval.index import STORE_FILE, IndexSettings, RepoIndex, default_store

FILES = {
    ".gitignore": "build/\n*.log\n",
    "pkg/__init__.py": "",
    "pkg/sizes.py": 'def format_size(n):\n    """Human-readable bytes."""\n    return f"{n} B"\n',
    "pkg/report.py": "from pkg.sizes import format_size\n\n\ndef show(n):\n    print(n)\n",
    "pkg/http.py": "class Client:\n    def fetch(self, url):\n        return url\n",
    "web/app.js": "function fetchAll(urls) {\n  return urls.map(fetch);\n}\n",
    "build/generated.py": "def format_size_generated():\n    pass\n",
    "debug.log": "format_size was called\n",
    "notes.xyz": "an unknown suffix is not indexed\n",
}


def write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture()
def repo(tmp_path):
    root = tmp_path / "repo"
    write(root, FILES)
    (root / "pkg" / "logo.py").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "pkg" / "huge.py").write_text("x = 1\n" * 20_000)
    (root / ".git").mkdir()
    (root / ".git" / "config.py").write_text("not = 'indexed'\n")
    return root


def indexed(index):
    return sorted({c.path for c in index.chunks})


def test_ignored_binary_huge_and_foreign_files_are_left_out(repo):
    index = RepoIndex(repo, settings=IndexSettings(max_bytes=50_000))
    report = index.update()
    assert indexed(index) == ["pkg/http.py", "pkg/report.py", "pkg/sizes.py", "web/app.js"]
    assert index.record("pkg/logo.py").skipped == "binary"
    assert index.record("pkg/huge.py").skipped == "too large"
    assert index.record("build/generated.py") is None and index.record("debug.log") is None
    assert (report.files, report.skipped, report.updated, report.removed) == (5, 2, 5, 0)
    assert report.chunks == len(index.chunks) == 5  # pkg/__init__.py is empty: no chunk


def test_only_changed_files_are_chunked_again_and_deleted_ones_dropped(repo, monkeypatch):
    index = RepoIndex(repo)
    index.update()
    chunked = []
    real = index_module.chunk_file
    monkeypatch.setattr(
        index_module,
        "chunk_file",
        lambda path, *a, **k: chunked.append(path) or real(path, *a, **k),
    )
    (repo / "pkg" / "http.py").write_text("class Client:\n    def get(self, url):\n        pass\n")
    (repo / "web" / "app.js").unlink()
    touched = repo / "pkg" / "sizes.py"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    report = index.update()
    assert chunked == ["pkg/http.py"]  # the touched file's hash is unchanged: not chunked
    assert (report.updated, report.removed) == (1, 1)
    assert "web/app.js" not in indexed(index)
    assert any("def get" in c.text for c in index.chunks)
    assert index.update().updated == 0 and chunked == ["pkg/http.py"]


def test_the_store_is_reopened_without_reading_files_and_is_reproducible(repo, tmp_path):
    store = default_store(repo)
    first = RepoIndex.open(repo, store=store)
    first.update()
    assert (store / STORE_FILE).is_file()
    assert (store / ".gitignore").read_text().splitlines()[-1] == "*"  # git ignores the store
    again = RepoIndex.open(repo, store=store)
    assert again.chunks == first.chunks  # loaded, before any update
    assert again.update().updated == 0
    assert not any(c.path.startswith(".codegemma") for c in again.chunks)
    # The same tree, copied with its mtimes, gives the same store byte for byte.
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".codegemma"))
    RepoIndex.open(copy, store=default_store(copy)).update()
    assert (default_store(copy) / STORE_FILE).read_bytes() == (store / STORE_FILE).read_bytes()


def test_a_store_made_with_other_settings_is_rebuilt(repo):
    store = default_store(repo)
    RepoIndex.open(repo, store=store).update()
    other = RepoIndex.open(repo, store=store, settings=IndexSettings(max_lines=2))
    assert other.chunks == []  # not loaded
    assert other.update().updated == 6  # huge.py (120 kB) is under the default 512 kB
    saved = json.loads((store / STORE_FILE).read_text())
    assert saved["settings"]["max_lines"] == 2


def test_search_ranks_by_bm25_puts_named_definitions_first_and_excludes_a_file(repo):
    index = RepoIndex(repo)
    index.update()
    hits = index.search(["fetch", "url"])
    assert [h.chunk.path for h in hits[:2]] == ["pkg/http.py", "web/app.js"]
    assert hits[0].score >= hits[1].score > 0
    assert index.search(["fetch"], exclude="pkg/http.py")[0].chunk.path == "web/app.js"
    named = index.search(["fetch", "url"], names={"format_size", "unknown"})
    assert named[0].chunk.name == "format_size"  # named first, whatever its BM25 score
    assert [h.chunk.path for h in named[1:3]] == ["pkg/http.py", "web/app.js"]
    assert index.search(["nothing_like_it"]) == []
    assert index.search(["fetch"], k=1) == index.search(["fetch"])[:1]


def test_within_limits_the_index_to_subfolders_with_paths_from_the_root(repo):
    index = RepoIndex(repo, within=["web"])
    index.update()
    assert indexed(index) == ["web/app.js"]


def test_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(NotADirectoryError):
        RepoIndex(tmp_path / "nope")
