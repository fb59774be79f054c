"""An engine replica: one local `Scheduler` over a loaded model, called by the ingress through
Ray Serve (the Ray deployment is applied in `deployment.py`; this class knows nothing of Ray).

The ingress builds prompts and sends each request with its prompt; `generate` streams
`Update`s back: the scheduler's events since the last message, with every candidate's
figures so far (so the ingress can end a request it supersedes with true counts). Cancelling
the stream (the client left, or a newer request superseded it) cancels the scheduler's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Sequence

from codegemma.engine import load
from codegemma.prompts import Prompt
from codegemma.serving.adapters import ModelInfo
from codegemma.serving.cluster.options import ClusterOptions
from codegemma.serving.info import model_info
from codegemma.serving.requests import GenerationRequest, RequestError
from codegemma.serving.results import Done, Event, Failed
from codegemma.serving.scheduler import Job, Scheduler
from codegemma.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Description:
    """What the ingress needs of the model: its description for clients, and the tokenizer
    and context length to build prompts with."""

    info: ModelInfo
    tokenizer: Tokenizer
    context_length: int
    max_active: int  # sequences in one replica's running batch


@dataclasses.dataclass(frozen=True)
class Update:
    """One message of a replica's stream."""

    events: tuple[Event, ...]  # the scheduler's events since the last message
    progress: tuple[tuple[int, int], ...]  # per candidate: (prompt tokens reused, generated)
    replica: str = ""  # on the first message (sent once the job is queued): who runs it


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A `RequestError` on its way back to the ingress (exceptions lose their fields in Ray)."""

    message: str
    status: int
    param: str | None
    kind: str

    @classmethod
    def of(cls, error: RequestError) -> Refusal:
        return cls(error.message, error.status, error.param, error.kind)

    def error(self) -> RequestError:
        return RequestError(self.message, self.status, param=self.param, kind=self.kind)


class EngineReplica:
    """Holds the model and its scheduler; every method is called by the ingress."""

    def __init__(self, options: ClusterOptions) -> None:
        lm = _load(options)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.description = Description(
            model_info(lm, options.alias), lm.tokenizer, lm.context_length, options.max_active
        )
        self.scheduler = Scheduler(
            lm,
            cache_bytes=options.cache_mib << 20,
            max_active=options.max_active,
            prefill_chunk=options.prefill_chunk,
            threads=options.threads,
        ).start()

    def describe(self) -> Description:
        return self.description

    async def generate(self, request: GenerationRequest, prompt: Prompt) -> AsyncIterator[Update]:
        """Run `request` on `prompt`, streaming its events."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = self.scheduler.submit(
            request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), prompt
        )
        jobs = [job, *job.followers]
        ended = 0
        try:
            yield Update((), _progress(jobs), self.name)
            while ended < len(jobs):
                batch = [await events.get()]
                while not events.empty():  # whatever else is ready travels in one message
                    batch.append(events.get_nowait())
                ended += sum(isinstance(event, Done) for event in batch)
                if any(isinstance(event, Failed) for event in batch):
                    ended = len(jobs)
                yield Update(tuple(batch), _progress(jobs))
        finally:
            job.cancel()  # a no-op once every candidate has ended

    async def embed(self, inputs: Sequence, truncate: bool):
        """`Embeddings` of `inputs`, or a `Refusal`."""
        try:
            future = self.scheduler.embed(inputs, truncate=truncate)
        except RequestError as exc:
            return Refusal.of(exc)
        return await asyncio.wrap_future(future)

    def tokenize(self, text: str, add_special: bool) -> list[tuple[int, bytes]]:
        return self.scheduler.tokenize(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int]) -> str | Refusal:
        try:
            return self.scheduler.detokenize(ids)
        except RequestError as exc:
            return Refusal.of(exc)

    def __del__(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close(timeout=5)


def _load(options: ClusterOptions):
    return load(
        options.model,
        dtype=options.dtype,
        device=options.device,
        quantize=options.quantize,
        kernels=options.kernels,
        threads=options.threads,
        speculate=options.speculate,
    )


def _progress(jobs: list[Job]) -> tuple[tuple[int, int], ...]:
    """Each candidate's (reused prompt tokens, generated tokens) as of now (read across
    threads: two ints the worker updates between steps)."""
    figures = []
    for job in jobs:
        sequence = job.sequence
        figures.append((sequence.reused, sequence.generated) if sequence else (0, 0))
    return tuple(figures)
