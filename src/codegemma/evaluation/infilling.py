"""HumanEval single-line and multi-line infilling (Bavarian et al. 2022), regenerated.

The original files (openai/human-eval-infilling) were built from HumanEval's canonical
solutions by masking lines; this rebuilds them exactly, 1033 single-line and 5815 multi-line
tasks, so no download is needed. Only lines with non-blank text can be masked; line numbers
count every line of the solution. Faithful to the original, the code before the mask always
ends with "\\n", so when the mask starts at line 0 the prompt gains an empty line after the
docstring (160 single-line and 989 multi-line tasks): keep it to compare with published numbers.
"""

from __future__ import annotations

from codegemma.evaluation.humaneval_data import check_call, read_humaneval
from codegemma.evaluation.tasks import Dataset, Task


def _masked(record: dict, first: int, last: int, task_id: str) -> Task:
    lines = record["canonical_solution"].split("\n")
    return Task(
        task_id=task_id,
        prompt=record["prompt"] + "\n".join(lines[:first]) + "\n",
        suffix="\n".join(lines[last + 1 :]),
        solution="\n".join(lines[first : last + 1]) + "\n",
        test=check_call(record),
    )


def _code_lines(record: dict) -> list[int]:
    return [i for i, line in enumerate(record["canonical_solution"].split("\n")) if line.strip()]


def single_line_tasks(records: list[dict]) -> list[Task]:
    """One task per non-blank line of each canonical solution."""
    tasks = []
    for record in records:
        name = record["task_id"]
        for i in _code_lines(record):
            tasks.append(_masked(record, i, i, f"SingleLineInfilling/{name}/L{i}"))
    return tasks


def multi_line_tasks(records: list[dict]) -> list[Task]:
    """One task per pair of non-blank lines a <= b: lines a..b are masked."""
    tasks = []
    for record in records:
        name = record["task_id"]
        lines = _code_lines(record)
        for n, first in enumerate(lines):
            for last in lines[n:]:
                task_id = f"MultiLineInfilling/{name}/L{first}_L{last}"
                tasks.append(_masked(record, first, last, task_id))
    return tasks


def infilling_dataset(kind: str) -> Dataset:
    """ "single" or "multi" line infilling over all of HumanEval."""
    records, source = read_humaneval()
    if kind == "single":
        return Dataset("humaneval-infill-single", tuple(single_line_tasks(records)), source)
    if kind == "multi":
        return Dataset("humaneval-infill-multi", tuple(multi_line_tasks(records)), source)
    raise ValueError(f"infilling kind must be 'single' or 'multi', got {kind!r}")
