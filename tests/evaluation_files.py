"""Data files in the formats evaluation reads, written for the tests: google-research's MBPP
jsonl with tasks that add a number."""

from __future__ import annotations

import json


def mbpp_record(i: int) -> dict:
    return {
        "task_id": i,
        "text": f"Write a function to add {i} to a number.",
        "code": f"def add_{i}(x):\r\n    return x + {i}",
        "test_list": [f"assert add_{i}(1) == {i + 1}", f"assert add_{i}(-{i}) == 0"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }


def write_mbpp(path, ids=range(1, 975)) -> None:
    path.write_text("".join(json.dumps(mbpp_record(i)) + "\n" for i in ids))
