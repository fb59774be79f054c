"""The summary table: pass@k beside the model card's figure for the same checkpoint."""

from __future__ import annotations

import pytest

from codegemma.evaluation.report import format_report, match_model, summarize
from codegemma.evaluation.tasks import Task


@pytest.mark.parametrize(
    "name, key",
    [
        ("google/codegemma-2b", "codegemma-2b"),
        ("google/codegemma-1.1-2b", "codegemma-1.1-2b"),
        ("/models/codegemma-7b", "codegemma-7b"),
        ("google/codegemma-7b-it", "codegemma-7b-it"),
        ("/models/CodeGemma_7b_it-q8", "codegemma-7b-it"),
        ("google/codegemma-1.1-7b-it", "codegemma-1.1-7b-it"),
        ("google/gemma-2b", None),
        ("/tmp/demo", None),
        (None, None),
    ],
)
def test_match_model(name, key):
    assert match_model(name) == key


def record(task_id, sample, passed, tokens=10, seconds=0.5):
    return {
        "task_id": task_id,
        "sample": sample,
        "passed": passed,
        "status": "passed" if passed else "failed",
        "prompt_tokens": 100,
        "completion_tokens": tokens,
        "generation_seconds": seconds,
        "exec_seconds": 0.1,
    }


def tasks(*ids):
    return [Task(i, "", "", "", "") for i in ids]


def test_summary_and_table_for_a_known_model():
    settings = {"task": "humaneval-infill-single", "samples": 2, "model": {"name": "codegemma-2b"}}
    records = [
        record("A", 0, True),
        record("A", 1, False),
        record("B", 0, False),
        record("B", 1, False),
        record("C", 0, True),  # not one of the tasks asked for
    ]
    summary = summarize(settings, tasks("A", "B"), records, ks=(1, 2, 10), wall_seconds=3.0)
    assert summary["pass_at_k"] == {"pass@1": 25.0, "pass@2": 50.0}
    assert summary["outcomes"] == {"passed": 1, "failed": 3}
    assert summary["model_card"] == {"model": "codegemma-2b", "pass@1": 78.41}
    assert summary["generation"]["completion_tokens"] == 40
    assert summary["generation"]["tokens_per_second"] == pytest.approx(20.0)
    table = format_report(summary)
    assert "78.41" in table and "codegemma-2b" in table
    assert "25.00" in table and "tokens/s" in table


def test_table_says_na_for_an_unknown_model():
    settings = {"task": "mbpp", "samples": 1, "model": {"name": "/tmp/my-finetune"}}
    summary = summarize(settings, tasks("A"), [record("A", 0, True)], ks=(1,), wall_seconds=1.0)
    assert summary["model_card"] is None
    assert "n/a" in format_report(summary)
