"""One benchmark problem, whatever the benchmark, and the program that checks an answer to it."""

from __future__ import annotations

import dataclasses

from codegemma.errors import CodeGemmaError


class DatasetError(CodeGemmaError):
    """A benchmark's data is missing or not in the expected form."""


@dataclasses.dataclass(frozen=True)
class CrossFileUse:
    """Repo-completion: the name a hidden line uses, and where the repository defines it."""

    name: str  # as written at the use: "format_size", or "utils.format_size" for a module's
    line: int  # 0-based line of the use in the task's file
    definition_path: str  # the other file, the one defining the name (the oracle file)
    definition_line: int  # 0-based line of the definition there
    definition_name: str  # the name as defined there (an import may rename it)


@dataclasses.dataclass(frozen=True)
class Task:
    """A piece of code to write, in context, with the tests that judge it."""

    task_id: str  # e.g. "HumanEval/0", "SingleLineInfilling/HumanEval/0/L0", "MBPP/11"
    prompt: str  # code before the part to write (MBPP: none)
    suffix: str  # code after it (infilling only)
    solution: str  # the reference text for that part (canonical solution)
    test: str  # code run after the program, raising if the answer is wrong (repo: "", compared)
    description: str = ""  # MBPP: the task in words
    examples: tuple[str, ...] = ()  # MBPP: the test asserts shown in the prompt
    path: str = ""  # repo-completion: the file being completed, relative to the repository
    cross_file: CrossFileUse | None = None  # repo-completion: what the hidden text uses


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The tasks of one benchmark, with where they came from (recorded in every run)."""

    name: str
    tasks: tuple[Task, ...]
    source: dict  # file, package version, sha256 of the data file
    preamble: str = ""  # text every prompt starts with (MBPP: the solved examples)


def program_text(task: Task, completion: str, *, head: str | None = None) -> str:
    """The whole program to execute: code before, the answer, code after, then the tests.

    `head` replaces `task.prompt` as the code before, for prompts that were changed before
    being shown to the model (HumanEval's is stripped, as the bigcode harness does).
    """
    before = task.prompt if head is None else head
    return f"{before}{completion}{task.suffix}\n{task.test}\n"
