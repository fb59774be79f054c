"""MBPP (Austin et al. 2021) from a user-supplied `mbpp.jsonl`: test split and 3-shot prompt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from codegemma.evaluation.tasks import Dataset, DatasetError, Task

TEST_IDS = range(11, 511)  # the test split: task ids 11-510
SHOT_IDS = (2, 3, 4)  # the prompt examples used by the MBPP paper
_FIELDS = ("task_id", "text", "code", "test_list")

WHERE_TO_GET = (
    "MBPP is not shipped with any package: download `mbpp.jsonl` (974 tasks, CC-BY-4.0) from "
    "the google-research/mbpp repository "
    "(https://github.com/google-research/google-research/tree/master/mbpp) "
    "and pass it with --mbpp-file PATH"
)


def read_mbpp(path: Path | str | None) -> tuple[dict[int, dict], dict]:
    """Records of `mbpp.jsonl` by task id, and where they came from."""
    if path is None:
        raise DatasetError(f"no MBPP file given. {WHERE_TO_GET}")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist. {WHERE_TO_GET}") from None
    records: dict[int, dict] = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
        missing = [f for f in _FIELDS if f not in record]
        if missing:
            raise DatasetError(f"{path}:{number}: missing {', '.join(missing)}. {WHERE_TO_GET}")
        records[int(record["task_id"])] = record
    needed = [i for i in (*SHOT_IDS, *TEST_IDS) if i not in records]
    if needed:
        shown = ", ".join(map(str, needed[:5])) + (" ..." if len(needed) > 5 else "")
        raise DatasetError(f"{path} lacks MBPP task ids {shown}. {WHERE_TO_GET}")
    source = {"file": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
    return records, source


def task_text(record: dict) -> str:
    """One task in the paper's format, up to and including the "[BEGIN]" line."""
    tests = "\n".join(record["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {record['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def few_shot_prefix(records: dict[int, dict]) -> str:
    """The three solved examples (tasks 2, 3, 4), each ending "[DONE]" on its own line."""
    return "".join(f"{task_text(records[i])}{records[i]['code']}\n[DONE]\n" for i in SHOT_IDS)


def mbpp_dataset(path: Path | str | None) -> Dataset:
    """The 500 test tasks; the preamble is the few-shot prefix every prompt starts with."""
    records, source = read_mbpp(path)
    tasks = []
    for i in TEST_IDS:
        record = records[i]
        setup = record.get("test_setup_code") or ""
        tasks.append(
            Task(
                task_id=f"MBPP/{i}",
                prompt="",
                suffix="",
                solution=record["code"],
                test="\n".join([setup, *record["test_list"]]),
                description=record["text"],
                examples=tuple(record["test_list"]),
            )
        )
    return Dataset("mbpp", tuple(tasks), source, preamble=few_shot_prefix(records))
