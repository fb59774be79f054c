"""The one component that owns the model: a worker thread that runs the engine's steps.

Requests wait in a FIFO queue; up to `max_active` of them run in the engine's batch at a time
(continuous batching: a request joins and leaves between any two steps). Each step is one
forward pass over every running sequence that has a token to compute, plus prompt chunks of
about `prefill_chunk` tokens, so a long prompt delays the others by at most one chunk, and
every sequence is computed exactly as it would be alone. Cancellation is read before each
step: a client that goes away, or a newer request with the same client key, stops the old job
before the next forward pass. Every job's KV cache comes from, and returns to, the prefix cache.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable

import torch

from codegemma.engine import CodeGemma
from codegemma.fim import FimMode
from codegemma.generation import PREFILL_CHUNK, GenSequence
from codegemma.prompts import Prompt
from codegemma.serving.limits import EditorLimits
from codegemma.serving.prefix_cache import PrefixCache
from codegemma.serving.prompts import build_prompt
from codegemma.serving.requests import GenerationRequest

log = logging.getLogger(__name__)

DEFAULT_MAX_ACTIVE = 8  # sequences in the running batch (see BENCHMARKS.md, server throughput)


@dataclasses.dataclass
class Result:
    """The outcome of one request, with the figures every wire format reports."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    stop_type: str  # llama.cpp's: "eos" (stop token), "word" (stop string), "limit", "none"
    stopping_word: str  # the stop string that ended it, else ""
    prompt_tokens: int  # tokens in the prompt, BOS included
    cached_tokens: int  # prompt tokens whose keys and values were reused from the cache
    completion_tokens: int  # tokens generated, a stop token included
    queue_ms: float  # waiting for the model
    prompt_ms: float  # evaluating the prompt's uncached tokens, to the first new token
    generation_ms: float  # from the first new token to the end
    truncated_tokens: int  # prompt tokens left out to fit or to start at a stable line
    dropped_files: int = 0  # context files left out to fit

    @property
    def evaluated_tokens(self) -> int:
        """Prompt tokens computed for this request (not reused)."""
        return self.prompt_tokens - self.cached_tokens


@dataclasses.dataclass(frozen=True)
class Piece:
    text: str


@dataclasses.dataclass(frozen=True)
class Done:
    result: Result


@dataclasses.dataclass(frozen=True)
class Failed:
    message: str


Event = Piece | Done | Failed


class Job:
    """One request inside the scheduler. `deliver` receives its events, from the worker thread."""

    _ids = itertools.count(1)

    def __init__(
        self, request: GenerationRequest, prompt: Prompt, deliver: Callable[[Event], None]
    ) -> None:
        self.id = next(self._ids)
        self.request = request
        self.prompt = prompt
        self.deliver = deliver
        self.submitted = time.perf_counter()
        self._cancelled = threading.Event()
        # Worker-thread state.
        self.sequence: GenSequence | None = None
        self.limits = EditorLimits(request.min_indent, request.newline_deadline_ms)
        self.text: list[str] = []
        self.admitted: float | None = None

    def cancel(self) -> None:
        """Stop this job before the next step (safe from any thread)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Owns the engine's batch: `submit` queues requests, the worker thread steps the batch.

    `max_active` sequences run at once, `prefill_chunk` prompt tokens per step; kept KV caches
    use at most `cache_bytes`; `fim_mode` (None: the engine's default order) and
    `stable_prefix` are the defaults for requests that do not say; `threads` is PyTorch's
    thread count in the worker.
    """

    def __init__(
        self,
        lm: CodeGemma,
        *,
        cache_bytes: int = 1 << 30,
        max_active: int = DEFAULT_MAX_ACTIVE,
        prefill_chunk: int = PREFILL_CHUNK,
        fim_mode: FimMode | None = None,
        stable_prefix: bool = True,
        threads: int | None = None,
    ) -> None:
        if max_active < 1 or prefill_chunk < 1:
            raise ValueError("max_active and prefill_chunk must be positive")
        self.lm = lm
        self.max_active = max_active
        self.fim_mode = fim_mode
        self.stable_prefix = stable_prefix
        self.engine = lm.batch(prefill_chunk=prefill_chunk, interleave=True)
        self.cache = PrefixCache(
            lm.new_cache, max_capacity=lm.context_length, budget_bytes=cache_bytes
        )
        # PyTorch's thread count is per thread: the worker takes the engine's (the caller's).
        self._threads = threads or torch.get_num_threads()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._by_client: dict[str, Job] = {}
        self._active: dict[int, Job] = {}  # id(sequence) -> job; worker thread only
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="codegemma-scheduler", daemon=True)
        self.completed = 0  # jobs ended, any way (for health and tests)

    # --- any thread ---------------------------------------------------------------------

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current step; queued and running jobs fail."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def build(self, request: GenerationRequest) -> Prompt:
        """The prompt of `request` (raises RequestError); linear in its size, run by the
        caller's thread, never the model's."""
        return build_prompt(
            self.lm, request, fim_mode=self.fim_mode, stable_prefix=self.stable_prefix
        )

    def submit(
        self,
        request: GenerationRequest,
        deliver: Callable[[Event], None],
        prompt: Prompt | None = None,
    ) -> Job:
        """Queue `request` (its prompt built here unless given); raises RequestError at once if
        its prompt cannot be built."""
        job = Job(request, prompt or self.build(request), deliver)
        with self._lock:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            if request.client is not None:
                older = self._by_client.get(request.client)
                if older is not None:
                    older.cancel()
                self._by_client[request.client] = job
            self._waiting.append(job)
            self._wake.notify()
        return job

    @property
    def load(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        return len(self._active), len(self._waiting)

    # --- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._closing or self._waiting or self._active):
                        self._wake.wait()
                    if self._closing:
                        break
                try:
                    self._round()
                except Exception:  # a bug, not a bad request: fail what runs, keep serving
                    log.exception("scheduler step failed")
                    for job in list(self._active.values()):
                        self._fail(job, "the server failed on this request")
        for job in [*self._active.values(), *self._waiting]:
            self._send(job, Failed("the server is shutting down"))

    def _round(self) -> None:
        """Retire cancelled jobs, admit waiting ones, then one engine step."""
        # Cancelled jobs give their caches back first, so their successors reuse them.
        for job in [j for j in self._active.values() if j.cancelled]:
            self._end(job, "cancelled")
        self._admit()
        if not self.engine.sequences:
            return
        for sequence, piece in self.engine.step():
            job = self._active.get(id(sequence))
            if job is not None:
                self._advance(job, piece)

    def _admit(self) -> None:
        while len(self._active) < self.max_active:
            with self._lock:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            job.admitted = time.perf_counter()
            if job.cancelled:
                self._forget(job)
                self._send(job, Done(self._result(job, "cancelled")))
                continue
            try:
                job.sequence = self._sequence(job)
            except Exception:  # a request must never stop the scheduler
                log.exception("could not start request %d", job.id)
                self._fail(job, "the server could not start this request")
                continue
            self._active[id(job.sequence)] = job
            self.engine.add(job.sequence)

    def _sequence(self, job: Job) -> GenSequence:
        request, ids = job.request, job.prompt.ids
        room = self.lm.context_length - len(ids)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        needed = len(ids) + limit
        if request.cache_prompt:
            cache, _ = self.cache.acquire(ids, needed)
        else:
            cache = self.cache.new(needed)
        return self.lm.sequence(
            job.prompt,
            max_new_tokens=limit,
            sampling=request.sampling,
            stop=request.stop,
            ignore_eos=request.ignore_eos,
            cache=cache,
        )

    def _advance(self, job: Job, piece: str) -> None:
        sequence = job.sequence
        piece = job.limits.feed(piece)
        if sequence.finished and not job.limits.hit:
            piece += job.limits.flush()
        if piece:
            job.text.append(piece)
            self._send(job, Piece(piece))
        if job.limits.hit:
            self._end(job, "limit")
        elif sequence.finished:
            self._end(job, sequence.completion.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        """Finish `job` ("stop", "length", "limit" or "cancelled"), keeping its cache."""
        sequence = job.sequence
        self.engine.remove(sequence)
        sequence.cancel()  # no-op when it finished by itself
        del self._active[id(sequence)]
        if job.request.cache_prompt:
            self.cache.release(sequence.cached_ids, sequence.cache)
        self._forget(job)
        self._send(job, Done(self._result(job, reason)))

    def _fail(self, job: Job, message: str) -> None:
        if job.sequence is not None:
            self.engine.remove(job.sequence)
            self._active.pop(id(job.sequence), None)
        self._forget(job)
        self._send(job, Failed(message))

    def _forget(self, job: Job) -> None:
        self.completed += 1
        client = job.request.client
        with self._lock:
            if client is not None and self._by_client.get(client) is job:
                del self._by_client[client]

    def _send(self, job: Job, event: Event) -> None:
        try:
            job.deliver(event)
        except Exception:  # the receiver is gone (e.g. its event loop closed)
            log.debug("could not deliver to request %d", job.id, exc_info=True)
            job.cancel()

    def _result(self, job: Job, reason: str) -> Result:
        sequence = job.sequence
        now = time.perf_counter()
        admitted = job.admitted or now
        first = (sequence.first_token_time if sequence else None) or now
        completion = sequence.completion if sequence else None
        stop = completion.stop if completion is not None else None
        if reason == "stop":
            kind = "word" if stop in job.request.stop else "eos"
        else:
            kind = {"length": "limit", "limit": "limit"}.get(reason, "none")
        return Result(
            text="".join(job.text),
            finish_reason="length" if reason == "limit" else reason,
            stop_type=kind,
            stopping_word=stop if kind == "word" else "",
            prompt_tokens=len(job.prompt.ids),
            cached_tokens=sequence.reused if sequence else 0,
            completion_tokens=sequence.generated if sequence else 0,
            queue_ms=(admitted - job.submitted) * 1000,
            prompt_ms=(first - admitted) * 1000,
            generation_ms=(now - first) * 1000,
            truncated_tokens=job.prompt.truncated_tokens,
            dropped_files=job.prompt.dropped_files,
        )
