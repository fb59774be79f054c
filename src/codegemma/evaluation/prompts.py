"""What the model is shown for each benchmark, and where its answer goes in the program."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from codegemma.evaluation.mbpp import task_text
from codegemma.evaluation.tasks import Dataset, Task
from codegemma.fim import FIM_STOP_TOKENS, fim_prompt

# Stop sequences of the Codex paper and the bigcode harness: a new top-level statement
# (or the end of a Markdown code block) means the function body is over.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_STOP = ("[DONE]",)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """The model's input for one task, and the code its answer is appended to."""

    text: str
    head: str


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How one benchmark is put to the model; recorded with every run."""

    name: str  # "humaneval-zero-shot", "fim-psm", "fim-spm", "mbpp-3-shot"
    template: str  # the layout, in words
    stop: tuple[str, ...]  # stop strings (not part of the answer)
    stop_tokens: tuple[str, ...]  # special tokens that end the answer

    def render(self, task: Task, dataset: Dataset) -> Prompt:
        if self.name == "humaneval-zero-shot":
            # The model sees the stripped prompt (as in the bigcode harness); the program
            # keeps the leading blank lines, which changes nothing when it runs.
            return Prompt(task.prompt.strip(), task.prompt.rstrip())
        if self.name in ("fim-psm", "fim-spm"):
            mode = self.name.removeprefix("fim-")
            return Prompt(fim_prompt(task.prompt, task.suffix, mode=mode), task.prompt)
        if self.name == "mbpp-3-shot":
            return Prompt(dataset.preamble + _mbpp_task_text(task), "")
        raise ValueError(f"unknown prompt format {self.name!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mbpp_task_text(task: Task) -> str:
    return task_text({"text": task.description, "test_list": list(task.examples)})


def prompt_format(task_name: str, fim_mode: str = "psm") -> PromptFormat:
    """The standard format for a benchmark (`fim_mode` picks PSM or SPM for infilling)."""
    if task_name == "humaneval":
        return PromptFormat(
            "humaneval-zero-shot", "{prompt.strip()}", HUMANEVAL_STOP, FIM_STOP_TOKENS
        )
    if task_name.startswith("humaneval-infill-"):
        if fim_mode == "psm":
            template = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
        elif fim_mode == "spm":
            template = "<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>"
        else:
            raise ValueError(f"FIM mode must be 'psm' or 'spm', got {fim_mode!r}")
        return PromptFormat(f"fim-{fim_mode}", template, (), FIM_STOP_TOKENS)
    if task_name == "mbpp":
        template = (
            "tasks 2, 3, 4 then the task, each as 'You are an expert Python programmer, and "
            "here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n"
            "[BEGIN]\\n{code}\\n[DONE]\\n' (the task's code is the answer)"
        )
        return PromptFormat("mbpp-3-shot", template, MBPP_STOP, FIM_STOP_TOKENS)
    raise ValueError(f"unknown task {task_name!r}")


def fit_around_cursor(
    prefix: str, suffix: str, count_tokens: Callable[[str], int], budget: int
) -> tuple[str, str]:
    """The whole lines of `prefix` and `suffix` nearest the cursor that fit in `budget` tokens:
    the suffix takes up to a quarter, the prefix the rest (counted line by line, so the text
    as a whole may differ by a few tokens; leave that slack)."""
    kept_after, used = [], 0
    for line in suffix.splitlines(keepends=True):
        cost = count_tokens(line)
        if used + cost > budget // 4:
            break
        kept_after.append(line)
        used += cost
    kept_before: list[str] = []
    for line in reversed(prefix.splitlines(keepends=True)):
        cost = count_tokens(line)
        if used + cost > budget:
            break
        kept_before.append(line)
        used += cost
    return "".join(reversed(kept_before)), "".join(kept_after)
