"""Single-line infilling exact match: hide one line of a file, ask the model to fill it in.

A task is one non-blank line of a held-out file: the prefix is up to `prefix_lines` lines
before it, the suffix up to `suffix_lines` lines after it, the expected middle is the line
itself (indentation included). The model completes through `CodeGemma.complete` (PSM, greedy,
the prompt fitted to the context by dropping far lines), exactly as a user's call would run.

Two scores: `exact_match` compares the completion's first line with the hidden line;
`exact_match_strict` requires the whole completion, up to the stop token, to be that line
(plus its newline). Both ignore trailing whitespace.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from codegemma.evaluation.prompts import fit_around_cursor
from codegemma.training.dataset import Document


@dataclasses.dataclass(frozen=True)
class LineTask:
    """One hidden line."""

    path: str
    line: int  # 0-based line number in the file
    prefix: str
    middle: str  # the hidden line with its newline
    suffix: str


def line_tasks(
    documents: Sequence[Document],
    count: int,
    *,
    seed: int = 0,
    prefix_lines: int = 60,
    suffix_lines: int = 20,
) -> list[LineTask]:
    """`count` tasks drawn without replacement from all non-blank lines of `documents`."""
    everything = []
    for doc in documents:
        lines = doc.text.splitlines(keepends=True)
        everything.extend((doc, lines, i) for i, line in enumerate(lines) if line.strip())
    chosen = random.Random(seed).sample(everything, min(count, len(everything)))
    tasks = []
    for doc, lines, i in sorted(chosen, key=lambda t: (t[0].path, t[2])):
        prefix = "".join(lines[max(0, i - prefix_lines) : i])
        suffix = "".join(lines[i + 1 : i + 1 + suffix_lines])
        tasks.append(LineTask(doc.path, i, prefix, lines[i], suffix))
    return tasks


def fit_task(task: LineTask, count_tokens: Callable[[str], int], budget: int) -> LineTask:
    """The task with its context cut to whole lines near the hidden one: the suffix gets up to
    a quarter of `budget` tokens, the prefix the rest (the engine's own fitting then has little
    or nothing left to do, which keeps scoring fast)."""
    prefix, suffix = fit_around_cursor(task.prefix, task.suffix, count_tokens, budget)
    return dataclasses.replace(task, prefix=prefix, suffix=suffix)


def score_line_tasks(
    lm,
    tasks: Sequence[LineTask],
    *,
    max_new_tokens: int = 48,
    mode: str = "psm",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Exact-match rates of `lm` (a `CodeGemma`) on `tasks` with FIM prompts in `mode`, and
    the per-task completions."""
    first_line = strict = 0
    samples = []
    budget = lm.context_length - max_new_tokens - 8  # 8: BOS, sentinels, and some slack

    def count_tokens(text: str) -> int:
        return len(lm.tokenizer.encode(text, add_bos=False))

    for n, task in enumerate(tasks, 1):
        task = fit_task(task, count_tokens, budget)
        done = lm.complete(
            task.prefix, task.suffix, mode=mode, max_new_tokens=max_new_tokens, truncate=True
        )
        want = task.middle.rstrip()
        first_line += done.text.split("\n", 1)[0].rstrip() == want
        strict += done.text.rstrip() == want
        samples.append({"path": task.path, "line": task.line, "want": want, "got": done.text})
        if progress is not None:
            progress(n, len(tasks))
    total = max(1, len(tasks))
    return {
        "tasks": len(tasks),
        "exact_match": first_line / total,
        "exact_match_strict": strict / total,
        "samples": samples,
    }
