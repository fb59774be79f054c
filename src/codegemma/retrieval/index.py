"""A repository's chunks and their BM25 index (bm25s, extra `repo`), kept on disk and updated
incrementally.

The store is one JSON file, `DIR/.codegemma/index/chunks.json` by default, holding for every
file its size, mtime, SHA-256 and chunks, in path order, so the same tree gives the same file.
The store's folder gets a `.gitignore` of `*`, so git ignores it. `update` stats every file and
reads only those whose size or mtime changed; of those it re-chunks only the ones whose content
hash changed, and drops files that are gone. BM25's term statistics are global (every chunk's
score depends on the whole corpus), so the score matrix is rebuilt in memory from the stored
chunks after a change and when the store is opened: well under a second for thousands of chunks.
An edit that keeps both the size and the mtime (to the nanosecond) goes unseen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codegemma.optional import require
from codegemma.retrieval.chunking import DEFAULT_MAX_LINES, Chunk, chunk_file
from codegemma.retrieval.lexical import terms
from codegemma.retrieval.syntax import SyntaxSpans
from codegemma.source_tree import SOURCE_SUFFIXES, decode_text, walk

STORE_DIR = Path(".codegemma") / "index"
STORE_FILE = "chunks.json"
FORMAT = 1
_CHUNKER_PACKAGES = ("tree-sitter", "tree-sitter-python")


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """What decides the chunks; a store made with other settings is rebuilt from scratch."""

    max_lines: int = DEFAULT_MAX_LINES  # longest chunk, in lines
    max_bytes: int = 512_000  # larger files are skipped (data or generated code)
    suffixes: tuple[str, ...] = tuple(sorted(SOURCE_SUFFIXES))  # file endings indexed
    syntax: bool = True  # cut at definitions where a tree-sitter grammar exists

    def as_dict(self) -> dict:
        """The settings with the chunker's package versions (they can move chunk bounds)."""
        versions = {p: _version(p) for p in _CHUNKER_PACKAGES} if self.syntax else {}
        return {**dataclasses.asdict(self), "suffixes": list(self.suffixes), "chunker": versions}


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """What the index knows of one file."""

    size: int
    mtime_ns: int
    sha256: str  # of the bytes; "" when not read (over max_bytes)
    skipped: str  # "" when indexed, else why not: "binary" or "too large"
    chunks: tuple[Chunk, ...]


@dataclasses.dataclass(frozen=True)
class UpdateReport:
    """What one `update` did."""

    files: int  # files indexed now
    chunks: int  # their chunks
    updated: int  # files (re)chunked by this update
    removed: int  # files dropped because they are gone (or now ignored)
    skipped: int  # binaries and files over max_bytes
    seconds: float


@dataclasses.dataclass(frozen=True)
class Hit:
    """A chunk and its BM25 score for one query."""

    chunk: Chunk
    score: float


def default_store(root: Path | str) -> Path:
    """Where `codegemma index DIR` keeps the index of DIR."""
    return Path(root) / STORE_DIR


class RepoIndex:
    """The chunks of a repository and a BM25 index over them. Not thread-safe: share one
    between threads behind a lock."""

    def __init__(
        self,
        root: Path | str,
        *,
        store: Path | None = None,
        within: Sequence[str] = (),
        settings: IndexSettings | None = None,
    ) -> None:
        """An empty index of `root` (call `update`, or use `open`). `store`: the folder to
        keep it in (None: memory only). `within`: only these subfolders of `root` are indexed
        (paths stay relative to `root`)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a directory")
        self.store = None if store is None else Path(store)
        self.within = tuple(within)
        self.settings = settings or IndexSettings()
        self._files: dict[str, FileRecord] = {}
        self._syntax = SyntaxSpans() if self.settings.syntax else None
        self._chunks: list[Chunk] = []
        self._rows: dict[str, np.ndarray] = {}  # path -> its chunks' rows in _chunks
        self._defining: dict[str, list[int]] = {}  # top-level name -> its definitions' rows
        self._bm25 = None

    @classmethod
    def open(cls, root: Path | str, **options) -> RepoIndex:
        """The index as last stored (nothing re-read yet: call `update` to catch up)."""
        index = cls(root, **options)
        index._load()
        return index

    @property
    def chunks(self) -> list[Chunk]:
        """Every chunk, by path then line."""
        return list(self._chunks)

    def record(self, path: str) -> FileRecord | None:
        return self._files.get(path)

    def update(self, *, progress: bool = False) -> UpdateReport:
        """Catch up with the files on disk; saves the store when anything changed."""
        started = time.perf_counter()
        seen = self._scan()
        removed = sorted(set(self._files) - set(seen))
        for path in removed:
            del self._files[path]
        changed = [p for p, stat in seen.items() if self._stat_of(p) != stat]
        updated = 0
        for path in tqdm(changed, desc="indexing", unit="file", disable=not progress):
            record, rechunked = self._refresh(path, *seen[path])
            self._files[path] = record
            updated += rechunked
        if removed or updated or self._bm25 is None:
            self._rebuild()
        if self.store is not None and (removed or changed or not self._stored()):
            self._save()
        skipped = sum(1 for r in self._files.values() if r.skipped)
        return UpdateReport(
            files=len(self._files) - skipped,
            chunks=len(self._chunks),
            updated=updated,
            removed=len(removed),
            skipped=skipped,
            seconds=time.perf_counter() - started,
        )

    def search(
        self,
        query: Sequence[str],
        *,
        exclude: str | None = None,
        k: int = 20,
        names: Iterable[str] = (),
    ) -> list[Hit]:
        """The `k` best chunks, best first: first the definitions (their first chunk) of
        top-level functions and classes named in `names`, then the chunks with a BM25 score
        above 0 for the query terms; each group by score, ties in index order. Chunks of the
        file `exclude` are left out."""
        if self._bm25 is None:
            self._rebuild()
        if not self._chunks:
            return []
        scores = np.zeros(len(self._chunks))
        if query:
            scores = np.asarray(self._bm25.get_scores(list(query)), dtype=np.float64)
        defining = {i for n in names for i in self._defining.get(n, ())}
        if exclude in self._rows:
            scores[self._rows[exclude]] = 0.0
            defining -= set(self._rows[exclude].tolist())
        first = sorted(defining, key=lambda i: (-scores[i], i))
        rest = [
            i
            for i in np.argsort(-scores, kind="stable")[: k + len(first)]
            if scores[i] > 0 and i not in defining
        ]
        return [Hit(self._chunks[i], float(scores[i])) for i in (first + rest)[:k]]

    # --- reading files ---------------------------------------------------------------------

    def _scan(self) -> dict[str, tuple[int, int]]:
        """{path: (size, mtime_ns)} of the files to index, in path order."""
        tops = [self.root / w for w in self.within] or [self.root]
        suffixes = frozenset(self.settings.suffixes)
        seen = {}
        for top in tops:
            for path in walk(self.root, top):
                if path.suffix not in suffixes or self._in_store(path):
                    continue
                stat = path.stat()
                seen[path.relative_to(self.root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return dict(sorted(seen.items()))

    def _in_store(self, path: Path) -> bool:
        return self.store is not None and path.is_relative_to(self.store)

    def _stat_of(self, path: str) -> tuple[int, int] | None:
        record = self._files.get(path)
        return None if record is None else (record.size, record.mtime_ns)

    def _refresh(self, path: str, size: int, mtime_ns: int) -> tuple[FileRecord, bool]:
        """The file's new record, and whether it was chunked (False: content unchanged)."""
        if size > self.settings.max_bytes:
            return FileRecord(size, mtime_ns, "", "too large", ()), False
        data = (self.root / path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        old = self._files.get(path)
        if old is not None and old.sha256 == digest:
            return dataclasses.replace(old, size=size, mtime_ns=mtime_ns), False
        text = decode_text(data)
        if text is None:
            return FileRecord(size, mtime_ns, digest, "binary", ()), False
        chunks = chunk_file(path, text, self._syntax, self.settings.max_lines)
        return FileRecord(size, mtime_ns, digest, "", tuple(chunks)), True

    # --- the BM25 matrix -------------------------------------------------------------------

    def _rebuild(self) -> None:
        bm25s = require("bm25s", "repo", "the repository index")
        self._chunks = [c for path in sorted(self._files) for c in self._files[path].chunks]
        rows: dict[str, list[int]] = {}
        for i, chunk in enumerate(self._chunks):
            rows.setdefault(chunk.path, []).append(i)
        self._rows = {p: np.asarray(r) for p, r in rows.items()}
        self._defining = {}
        for i, chunk in enumerate(self._chunks):
            starts = chunk.kind == "definition" and "." not in chunk.name  # top level only
            before = self._chunks[i - 1] if i else None
            continued = before is not None and (before.path, before.name) == (
                chunk.path,
                chunk.name,
            )
            if starts and not continued:  # a long definition's later windows do not count
                self._defining.setdefault(chunk.name, []).append(i)
        self._bm25 = bm25s.BM25()
        if self._chunks:
            self._bm25.index([chunk_terms(c) for c in self._chunks], show_progress=False)

    # --- the store -------------------------------------------------------------------------

    def _stored(self) -> bool:
        return self.store is not None and (self.store / STORE_FILE).is_file()

    def _load(self) -> None:
        if not self._stored():
            return
        data = json.loads((self.store / STORE_FILE).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("settings") != self.settings.as_dict():
            return  # made by another version or with other settings: start again
        self._files = {path: _record_from_json(path, r) for path, r in data["files"].items()}
        self._rebuild()

    def _save(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        ignore = self.store / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# written by codegemma index\n*\n", encoding="utf-8")
        data = {
            "format": FORMAT,
            "settings": self.settings.as_dict(),
            "files": {path: _record_to_json(self._files[path]) for path in sorted(self._files)},
        }
        partial = self.store / (STORE_FILE + ".tmp")
        partial.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, self.store / STORE_FILE)


def chunk_terms(chunk: Chunk) -> list[str]:
    """A chunk's BM25 terms: its text's, and its definition's name once more, so a query that
    uses a name ranks the chunk defining it above chunks that merely mention it."""
    return terms(chunk.text) + terms(chunk.name.replace(".", " "))


def _record_to_json(record: FileRecord) -> dict:
    return {
        "size": record.size,
        "mtime_ns": record.mtime_ns,
        "sha256": record.sha256,
        "skipped": record.skipped,
        "chunks": [[c.start, c.end, c.kind, c.name, c.text] for c in record.chunks],
    }


def _record_from_json(path: str, data: dict) -> FileRecord:
    chunks = tuple(Chunk(path, *fields) for fields in data["chunks"])
    return FileRecord(data["size"], data["mtime_ns"], data["sha256"], data["skipped"], chunks)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
