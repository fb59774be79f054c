"""HumanEval single-line infilling pass@1 for models whose context is shorter than the task.

`codegemma eval` sends each prompt whole; 62 of the 1033 single-line prompts are longer than
the default model's 512 tokens. This runs the same tasks, prompt format, sandbox and scoring
(`codegemma.evaluation`), but completes through `CodeGemma.complete(..., truncate=True)`, which
drops the lines farthest from the hole until the prompt fits.
"""

from __future__ import annotations

from pathlib import Path

from codegemma.evaluation.datasets import load_dataset
from codegemma.evaluation.prompts import prompt_format
from codegemma.evaluation.runner import Generated, evaluate

TASK = "humaneval-infill-single"


def truncating_completer(lm, max_new_tokens: int, stop: tuple[str, ...]):
    """A completer for `evaluation.runner.evaluate` that fits long prompts to the context."""

    def complete(tasks, prompts, sample):
        answers = []
        for task in tasks:
            done = lm.complete(
                task.prompt,
                task.suffix,
                max_new_tokens=max_new_tokens,
                stop=list(stop) or None,
                truncate=True,
            )
            # A stop string is not part of the text; a line's newline belongs to the answer.
            text = done.text + ("\n" if done.stop == "\n" else "")
            answers.append(
                Generated(
                    text,
                    done.finish_reason,
                    done.usage.prompt_tokens,
                    done.usage.completion_tokens,
                )
            )
        return answers

    return complete


def humaneval_single_line(
    lm,
    out: str | Path,
    *,
    first_line_only: bool = False,
    max_new_tokens: int = 128,
    workers: int = 1,
    limit: int | None = None,
) -> dict:
    """Greedy pass@1 on the 1033 single-line tasks (PSM, CodeGemma's stop tokens).

    `first_line_only` also stops at the first newline: the answer is known to be one line.
    """
    dataset = load_dataset(TASK, None)
    fmt = prompt_format(TASK, "psm")
    stop = ("\n",) if first_line_only else ()
    settings = {
        "oracle": False,
        "model": {"name": str(lm.path), "context": lm.context_length, "truncate": True},
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0, "stop": list(stop)},
    }
    summary = evaluate(
        dataset,
        fmt,
        truncating_completer(lm, max_new_tokens, stop),
        out,
        settings=settings,
        limit=limit,
        workers=workers,
        progress=False,
    )
    return {
        "tasks": summary["complete_tasks"],
        "pass@1": summary["pass_at_k"]["pass@1"],  # percent
        "outcomes": summary["outcomes"],
    }
