"""A run's output directory: its settings, one JSON line per finished sample, its summary.

Samples are appended as they finish, so an interrupted run loses only what was in flight;
opening the directory again returns what is done, after checking that the settings that
decide the results are the same as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from codegemma.errors import CodeGemmaError

SETTINGS = "run.json"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"

# Settings that change results; the rest (batch size, workers, limit, device) may differ
# between an interrupted run and its continuation.
_IDENTITY = ("task", "samples", "oracle", "model", "prompt", "decoding", "data", "limits")


class ResumeMismatchError(CodeGemmaError):
    """The output directory holds a run made with other settings."""


def identity(settings: dict) -> dict:
    """The part of a run's settings that must match for it to be continued."""
    same = {key: settings.get(key) for key in _IDENTITY}
    same["data"] = (settings.get("data") or {}).get("sha256")  # the file may have moved
    return same


class RunStore:
    """Reads and appends the files of one run directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._samples = self.directory / SAMPLES

    def open(self, settings: dict) -> dict[tuple[str, int], dict]:
        """Start a run, or continue the one there; returns finished samples by (task_id, n)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / SETTINGS
        if path.exists():
            previous = json.loads(path.read_text(encoding="utf-8"))
            current = json.loads(json.dumps(settings))  # tuples become lists, as on disk
            _check_same(identity(previous), identity(current), self.directory)
        else:
            _write_json(path, settings)
        return {(r["task_id"], r["sample"]): r for r in self._read_samples()}

    def append(self, record: dict) -> None:
        with open(self._samples, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def records(self) -> list[dict]:
        """Every finished sample, in the order they finished."""
        return self._read_samples()

    def write_summary(self, summary: dict) -> None:
        _write_json(self.directory / SUMMARY, summary)

    def _read_samples(self) -> list[dict]:
        if not self._samples.exists():
            return []
        raw = self._samples.read_bytes()
        good = raw[: raw.rfind(b"\n") + 1]
        if len(good) != len(raw):
            # A line cut short by the interruption: drop it, so appends start a new line.
            with open(self._samples, "r+b") as f:
                f.truncate(len(good))
        return [json.loads(line) for line in good.decode("utf-8").splitlines() if line]


def _check_same(before: dict, now: dict, directory: Path) -> None:
    changed = _differences(before, now)
    if changed:
        raise ResumeMismatchError(
            f"{directory} holds a run with other settings ({'; '.join(changed)}). "
            "Use another --out directory, or the same settings to continue it."
        )


def _differences(before: object, now: object, name: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(set(before) | set(now))
        prefix = f"{name}." if name else ""
        return [d for k in keys for d in _differences(before.get(k), now.get(k), prefix + k)]
    if before == now:
        return []
    return [f"{name}: was {_short(before)}, now {_short(now)}"]


def _short(value: object, width: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
