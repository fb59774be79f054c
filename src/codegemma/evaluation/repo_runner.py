"""A resumable repo-completion run: every task in every setting, scored by exact match and edit
similarity.

Prompts of all settings go through the engine in batches (longest first, less padding); each
answer is cut at its first newline (the hidden text is the rest of one line) and scored
against the hidden text. Results are appended to the run directory as they come, so running
the same command again goes on where it stopped (see `store`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from codegemma.evaluation.repo_prompts import SETTINGS, RepoPrompt, RepoPrompter
from codegemma.evaluation.report import summarize_repo
from codegemma.evaluation.runner import Decoding, Generated
from codegemma.evaluation.similarity import edit_similarity, exact_match
from codegemma.evaluation.store import RunStore
from codegemma.evaluation.tasks import Dataset, Task
from codegemma.fim import FIM_STOP_TOKENS

LINE_STOP = ("\n",)  # the answer is the rest of one line

# Answers a batch of prompt texts.
TextCompleter = Callable[[Sequence[str]], list[Generated]]


def model_text_completer(lm, decoding: Decoding) -> TextCompleter:
    """Answers from a loaded `CodeGemma`, one engine batch per call, ending at a newline."""

    def complete(texts: Sequence[str]) -> list[Generated]:
        results = lm.generate(
            list(texts),
            max_new_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_k=decoding.top_k,
            top_p=decoding.top_p,
            seed=decoding.seed,
            stop=list(LINE_STOP),
            stop_tokens=FIM_STOP_TOKENS,
        )
        return [
            Generated(c.text, c.finish_reason, c.usage.prompt_tokens, c.usage.completion_tokens)
            for c in results
        ]

    return complete


@dataclasses.dataclass(frozen=True)
class _Job:
    task: Task
    prompt: RepoPrompt

    @property
    def key(self) -> str:
        return f"{self.task.task_id}@{self.prompt.setting}"


def evaluate_repo(
    dataset: Dataset,
    prompter: RepoPrompter,
    completer: TextCompleter,
    out: Path | str,
    *,
    settings: dict,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Run (or continue) repo-completion into `out`; returns the summary it writes there.

    `settings` describes the model, decoding and budgets (recorded, compared on resume); the
    task, data source and settings list are added here.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tasks = dataset.tasks[:limit] if limit else dataset.tasks
    store = RunStore(out)
    started = time.perf_counter()
    recorded = {
        **settings,
        "task": dataset.name,
        "samples": 1,
        "limit": limit,
        "settings": list(SETTINGS),
        "data": dataset.source,
        "batch_size": batch_size,
    }
    done = store.open(recorded)
    jobs = [
        _Job(task, prompt)
        for task in tasks
        if any((f"{task.task_id}@{s}", 0) not in done for s in SETTINGS)
        for prompt in prompter.prompts(task).values()
        if (f"{task.task_id}@{prompt.setting}", 0) not in done
    ]
    jobs.sort(key=lambda job: len(job.prompt.text), reverse=True)  # less padding per batch
    total = len(tasks) * len(SETTINGS)
    bar = tqdm(total=total, initial=total - len(jobs), desc=dataset.name, disable=not progress)
    with bar:
        for i in range(0, len(jobs), batch_size):
            batch = jobs[i : i + batch_size]
            began = time.perf_counter()
            answers = completer([job.prompt.text for job in batch])
            seconds = (time.perf_counter() - began) / len(batch)
            for job, answer in zip(batch, answers, strict=True):
                store.append(_record(job, answer, seconds))
                bar.update(1)
    wanted = {f"{t.task_id}@{s}" for t in tasks for s in SETTINGS}
    records = [r for r in store.records() if r["task_id"] in wanted]
    summary = summarize_repo(
        recorded, len(tasks), records, time.perf_counter() - started, resumed=len(done)
    )
    store.write_summary(summary)
    return summary


def _record(job: _Job, answer: Generated, seconds: float) -> dict:
    reference = job.task.solution
    return {
        "task_id": job.key,
        "sample": 0,
        "setting": job.prompt.setting,
        "completion": answer.text,
        "reference": reference,
        "exact_match": exact_match(answer.text, reference),
        "edit_similarity": round(edit_similarity(answer.text, reference), 6),
        "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens,
        "context_tokens": job.prompt.context_tokens,
        "completion_tokens": answer.completion_tokens,
        "retrieval_ms": job.prompt.retrieval_ms,
        "shows_name": job.prompt.shows_name,
        "context": list(job.prompt.chunks),
        "generation_seconds": round(seconds, 6),  # this prompt's share of its batch's time
    }
