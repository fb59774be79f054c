"""A resumable evaluation: batched generation through the engine, parallel sandboxed checks.

Generation and execution overlap: while the model writes the next batch, a pool of threads
runs the finished answers, each in its own sandbox process. Each result is appended to the
run directory as it arrives, so a rerun with the same `--out` goes on where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from codegemma.evaluation.prompts import Prompt, PromptFormat
from codegemma.evaluation.report import summarize
from codegemma.evaluation.sandbox import Execution, Limits, Sandbox
from codegemma.evaluation.store import RunStore
from codegemma.evaluation.tasks import Dataset, Task, program_text


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How answers are sampled; recorded with the run."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # sample j of every task uses seed + j


@dataclasses.dataclass(frozen=True)
class Generated:
    """One answer, as the checks and the report need it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


# A completer answers a batch of prompts (all for sample number `sample`).
Completer = Callable[[Sequence[Task], Sequence[Prompt], int], list[Generated]]


def model_completer(lm, fmt: PromptFormat, decoding: Decoding) -> Completer:
    """Answers from a loaded `CodeGemma`, one engine batch per call."""

    def complete(tasks: Sequence[Task], prompts: Sequence[Prompt], sample: int):
        seed = None if decoding.seed is None else decoding.seed + sample
        results = lm.generate(
            [p.text for p in prompts],
            max_new_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_k=decoding.top_k,
            top_p=decoding.top_p,
            seed=seed,
            stop=list(fmt.stop) or None,
            stop_tokens=fmt.stop_tokens,
        )
        return [
            Generated(c.text, c.finish_reason, c.usage.prompt_tokens, c.usage.completion_tokens)
            for c in results
        ]

    return complete


def oracle_completer(tasks: Sequence[Task], prompts: Sequence[Prompt], sample: int):
    """The canonical solutions, as the text a model would have had to write."""
    # A prompt's head is a prefix of the task's code (HumanEval's loses its final newline).
    return [
        Generated(task.prompt[len(prompt.head) :] + task.solution, "oracle", 0, 0)
        for task, prompt in zip(tasks, prompts, strict=True)
    ]


@dataclasses.dataclass(frozen=True)
class _Job:
    task: Task
    prompt: Prompt
    sample: int


def pending_batches(
    dataset: Dataset,
    tasks: Sequence[Task],
    fmt: PromptFormat,
    samples: int,
    done: set[tuple[str, int]],
    batch_size: int,
) -> list[list[_Job]]:
    """Unfinished (task, sample) pairs in batches of one sample number, longest prompts first."""
    batches = []
    for sample in range(samples):
        jobs = [
            _Job(task, fmt.render(task, dataset), sample)
            for task in tasks
            if (task.task_id, sample) not in done
        ]
        jobs.sort(key=lambda job: len(job.prompt.text), reverse=True)  # less padding per batch
        batches += [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    return batches


def run_jobs(
    batches: Sequence[Sequence[_Job]],
    completer: Completer,
    sandbox: Sandbox,
    store: RunStore,
    *,
    workers: int,
    progress: tqdm,
) -> None:
    """Generate each batch, check its answers in parallel, append each result as it comes."""
    running: dict[Future, dict] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")
    try:
        for batch, answers, seconds in _generate(batches, completer):
            for job, answer in zip(batch, answers, strict=True):
                program = program_text(job.task, answer.text, head=job.prompt.head)
                future = pool.submit(sandbox.run, program)
                running[future] = _record(job, answer, seconds / len(batch))
            # Keep a bounded queue: results are written while the model works.
            _drain(running, store, progress, keep=4 * workers)
        _drain(running, store, progress, keep=0)
    except BaseException:
        with contextlib.suppress(Exception):  # keep what is already checked, then stop
            _drain(running, store, progress, keep=len(running))
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _generate(batches, completer: Completer) -> Iterator[tuple[list[_Job], list, float]]:
    for batch in batches:
        started = time.perf_counter()
        answers = completer([j.task for j in batch], [j.prompt for j in batch], batch[0].sample)
        yield list(batch), answers, time.perf_counter() - started


def _record(job: _Job, answer: Generated, seconds: float) -> dict:
    return {
        "task_id": job.task.task_id,
        "sample": job.sample,
        "completion": answer.text,
        "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "generation_seconds": round(seconds, 6),  # this sample's share of its batch's time
    }


def _drain(running: dict[Future, dict], store: RunStore, progress: tqdm, keep: int) -> None:
    """Write finished results; wait for more while over `keep` are pending (0: all)."""
    while running:
        block = len(running) > keep
        finished, _ = wait(running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        if not finished:
            return
        for future in finished:
            record = running.pop(future)
            execution: Execution = future.result()
            record.update(
                passed=execution.status == "passed",
                status=execution.status,
                detail=execution.detail[-500:],
                exec_seconds=round(execution.seconds, 4),
            )
            store.append(record)
            progress.update(1)


def default_workers() -> int:
    """One sandbox at a time per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def evaluate(
    dataset: Dataset,
    fmt: PromptFormat,
    completer: Completer,
    out: Path | str,
    *,
    settings: dict,
    samples: int = 1,
    limit: int | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    limits: Limits | None = None,
    ks: Sequence[int] = (1, 10, 100),
    progress: bool = True,
) -> dict:
    """Run (or continue) an evaluation into `out`; returns the summary it writes there.

    `settings` describes the model and decoding (recorded, and compared on resume); the task,
    prompt format, data source, limits and sandbox isolation are added here.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError("samples and batch_size must be at least 1")
    tasks = dataset.tasks[:limit] if limit else dataset.tasks
    workers = workers or default_workers()
    store = RunStore(out)
    started = time.perf_counter()
    with Sandbox(limits) as sandbox:
        recorded = {
            **settings,
            "task": dataset.name,
            "samples": samples,
            "limit": limit,
            "prompt": fmt.as_dict(),
            "data": dataset.source,
            "limits": dataclasses.asdict(sandbox.limits),
            "isolation": sandbox.isolation.as_dict(),
            "batch_size": batch_size,
            "workers": workers,
        }
        done = store.open(recorded)
        batches = pending_batches(dataset, tasks, fmt, samples, set(done), batch_size)
        total = len(tasks) * samples
        todo = sum(len(b) for b in batches)
        with tqdm(
            total=total,
            initial=total - todo,
            desc=dataset.name,
            unit="sample",
            disable=not progress,
        ) as bar:
            run_jobs(batches, completer, sandbox, store, workers=workers, progress=bar)
    summary = summarize(
        recorded, tasks, store.records(), ks, time.perf_counter() - started, resumed=len(done)
    )
    store.write_summary(summary)
    return summary
