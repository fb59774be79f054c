"""The one component that owns the model: a worker thread that runs every forward pass.

Requests wait in a FIFO queue; up to `max_active` of them are decoded at a time, one forward
pass each in turn (a prompt chunk or one token), so a long prompt never blocks a short
completion for more than one chunk, and every sequence is computed exactly as it would be
alone. Each job's cancellation flag is read before each of its steps: a client that goes away,
or a newer request with the same client key, stops the old job within one step. Every job's
KV cache comes from, and returns to, the prefix cache.
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
from codegemma.generation import Continuation, StopConditions
from codegemma.kv_cache import KVCache
from codegemma.serving.limits import EditorLimits
from codegemma.serving.prefix_cache import PrefixCache
from codegemma.serving.prompts import Prompt, PromptBuilder
from codegemma.serving.requests import GenerationRequest

log = logging.getLogger(__name__)


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
        self.continuation: Continuation | None = None
        self.limits = EditorLimits(request.min_indent, request.newline_deadline_ms)
        self.text: list[str] = []
        self.admitted: float | None = None
        self.first_token: float | None = None

    def cancel(self) -> None:
        """Stop this job before its next step (safe from any thread)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Owns `lm.model`: `submit` queues requests, the worker thread computes them.

    `max_active` jobs are decoded in turn, `prefill_chunk` prompt tokens per step; kept KV
    caches use at most `cache_bytes`; `threads` is PyTorch's thread count in the worker.
    """

    def __init__(
        self,
        lm: CodeGemma,
        prompts: PromptBuilder,
        *,
        cache_bytes: int = 1 << 30,
        max_active: int = 4,
        prefill_chunk: int = 256,
        threads: int | None = None,
    ) -> None:
        self.lm = lm
        self.prompts = prompts
        self.max_active = max_active
        self.prefill_chunk = prefill_chunk
        self.cache = PrefixCache(
            self._new_cache, max_capacity=lm.context_length, budget_bytes=cache_bytes
        )
        # PyTorch's thread count is per thread: the worker takes the engine's (the caller's).
        self._threads = threads or torch.get_num_threads()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._by_client: dict[str, Job] = {}
        self._active: list[Job] = []  # worker thread only
        self._closing = False
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}
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

    def submit(self, request: GenerationRequest, deliver: Callable[[Event], None]) -> Job:
        """Queue `request`; raises RequestError at once if its prompt cannot be built."""
        job = Job(request, self.prompts.build(request), deliver)
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
                    log.exception("scheduler round failed")
                    for job in list(self._active):
                        self._fail(job, "the server failed on this request")
        for job in self._active + list(self._waiting):
            self._send(job, Failed("the server is shutting down"))

    def _round(self) -> None:
        """One step of every running job, after retiring cancelled ones and admitting more."""
        # Cancelled jobs give their caches back first, so their successors reuse them.
        for job in [j for j in self._active if j.cancelled]:
            self._end(job, "cancelled")
        self._admit()
        for job in list(self._active):
            self._advance(job)

    def _admit(self) -> None:
        while len(self._active) < self.max_active:
            with self._lock:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            job.admitted = time.perf_counter()
            if job.cancelled:
                self._active.append(job)
                self._end(job, "cancelled")
                continue
            try:
                job.continuation = self._continuation(job)
            except Exception:  # a request must never stop the scheduler
                log.exception("could not start request %d", job.id)
                self._fail(job, "the server could not start this request")
                continue
            self._active.append(job)

    def _continuation(self, job: Job) -> Continuation:
        request, ids = job.request, job.prompt.ids
        context = self.lm.context_length
        budget = context - len(ids)
        max_new = budget if request.max_tokens is None else min(request.max_tokens, budget)
        needed = len(ids) + max_new
        if request.cache_prompt:
            cache, _ = self.cache.acquire(ids, needed)
        else:
            cache = self.cache.new(needed)
        stop_ids = self._stop_token_ids(job.prompt.stop_tokens)
        stops = StopConditions(
            max_new_tokens=max_new,
            stop_ids=frozenset() if request.ignore_eos else stop_ids,
            stop_strings=request.stop,
        )
        return Continuation(
            self.lm.model,
            self.lm.tokenizer,
            cache,
            ids,
            stops,
            request.sampling,
            prefill_chunk=self.prefill_chunk,
        )

    def _advance(self, job: Job) -> None:
        if job.cancelled:
            self._end(job, "cancelled")
            return
        continuation = job.continuation
        try:
            piece = continuation.step()
        except Exception:  # a failing request must not affect the others
            log.exception("request %d failed", job.id)
            self._fail(job, "the model failed on this request")
            return
        if continuation.prefilled and job.first_token is None:
            job.first_token = time.perf_counter()
        if continuation.generated:
            piece = job.limits.feed(piece)
        if continuation.completion is not None and not job.limits.hit:
            piece += job.limits.flush()
        if piece:
            job.text.append(piece)
            self._send(job, Piece(piece))
        if job.limits.hit:
            self._end(job, "limit")
        elif continuation.completion is not None:
            self._end(job, continuation.completion.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        """Finish `job` ("stop", "length", "limit" or "cancelled"), keeping its cache."""
        self._active.remove(job)
        continuation = job.continuation
        if continuation is not None and job.request.cache_prompt:
            self.cache.release(continuation.cached_ids, continuation.cache)
        self._forget(job)
        self._send(job, Done(self._result(job, reason)))

    def _fail(self, job: Job, message: str) -> None:
        if job in self._active:
            self._active.remove(job)
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
        continuation = job.continuation
        now = time.perf_counter()
        admitted = job.admitted or now
        first = job.first_token or now
        completion = continuation.completion if continuation else None
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
            cached_tokens=continuation.reused if continuation else 0,
            completion_tokens=continuation.generated if continuation else 0,
            queue_ms=(admitted - job.submitted) * 1000,
            prompt_ms=(first - admitted) * 1000,
            generation_ms=(now - first) * 1000,
            truncated_tokens=job.prompt.truncated_tokens,
        )

    def _stop_token_ids(self, texts: tuple[str, ...]) -> frozenset[int]:
        if texts not in self._stop_ids:
            tokenizer = self.lm.tokenizer
            ids = {tokenizer.token_id(t) for t in texts} | {tokenizer.eos_id}
            self._stop_ids[texts] = frozenset(i for i in ids if i is not None)
        return self._stop_ids[texts]

    def _new_cache(self, capacity: int) -> KVCache:
        config = self.lm.config
        return KVCache(
            config.num_hidden_layers,
            1,
            config.num_key_value_heads,
            capacity,
            config.head_dim,
            dtype=self.lm.model.activation_dtype,
            device=self.lm.device,
        )
