"""The benchmarks `codegemma eval` knows, by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from codegemma.evaluation.humaneval_data import humaneval_dataset
from codegemma.evaluation.infilling import infilling_dataset
from codegemma.evaluation.mbpp import mbpp_dataset
from codegemma.evaluation.repo_data import DEFAULT_PACKAGES, PER_PACKAGE, repo_completion_dataset
from codegemma.evaluation.tasks import Dataset

TASKS = (
    "humaneval",
    "humaneval-infill-single",
    "humaneval-infill-multi",
    "mbpp",
    "repo-completion",
)
HUMANEVAL_KINDS = TASKS[:3]

# New tokens per answer when not given: a line or a few for infilling (as in the CodeGemma
# report), a whole function for generation.
DEFAULT_MAX_NEW_TOKENS = {
    "humaneval": 512,
    "humaneval-infill-single": 128,
    "humaneval-infill-multi": 128,
    "mbpp": 512,
    "repo-completion": 32,  # the rest of one line
}


def load_dataset(
    name: str,
    mbpp_file: Path | str | None = None,
    *,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    per_package: int = PER_PACKAGE,
) -> Dataset:
    """The tasks of benchmark `name` (MBPP needs the user's `mbpp.jsonl`; repo-completion is
    built from the installed `packages`)."""
    if name == "humaneval":
        return humaneval_dataset()
    if name == "humaneval-infill-single":
        return infilling_dataset("single")
    if name == "humaneval-infill-multi":
        return infilling_dataset("multi")
    if name == "mbpp":
        return mbpp_dataset(mbpp_file)
    if name == "repo-completion":
        return repo_completion_dataset(packages, per_package=per_package)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
