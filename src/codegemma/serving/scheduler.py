"""The one component that owns the model: a worker thread that runs the engine's steps.

Requests wait in a FIFO queue; up to `max_active` of them run in the engine's batch at a time
(continuous batching: a request joins and leaves between any two steps). Each step is one
forward pass over every running sequence that has a token to compute, plus prompt chunks of
about `prefill_chunk` tokens, so a long prompt delays the others by at most one chunk, and
every sequence is computed exactly as it would be alone. Cancellation is read before each
step: a client that goes away, or a newer request with the same client key, stops the old job
before the next forward pass. Every job's KV cache comes from, and returns to, the prefix cache.

A request for n candidates becomes n jobs: the first (the leader) computes the prompt, and the
others start from a copy of its cache once it has, each with its own seed. Work that needs the
model between steps (embeddings) is queued with `call`; `slots` is a snapshot of the running
sequences, published after each step for other threads. With a `loader`, the model can be
unloaded when idle (`unload`) and is loaded again by the next request.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

from codegemma.engine import CodeGemma
from codegemma.errors import CodeGemmaError
from codegemma.fim import FimMode
from codegemma.generation import PREFILL_CHUNK, GenSequence
from codegemma.kv_cache import KVCache
from codegemma.prompts import Prompt
from codegemma.serving.limits import EditorLimits
from codegemma.serving.prefix_cache import PrefixCache
from codegemma.serving.prompts import build_prompt
from codegemma.serving.repo import RepoSource
from codegemma.serving.requests import GenerationRequest, RequestError
from codegemma.serving.results import (
    Done,
    Embeddings,
    Event,
    Failed,
    Piece,
    Result,
    SlotState,
    token_bytes,
    token_choices,
)
from codegemma.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_MAX_ACTIVE = 8  # sequences in the running batch (see BENCHMARKS.md, server throughput)


class Job:
    """One request inside the scheduler. `deliver` receives its events, from the worker thread."""

    _ids = itertools.count(1)

    def __init__(
        self,
        request: GenerationRequest,
        prompt: Prompt,
        deliver: Callable[[Event], None],
        *,
        index: int = 0,
        leader: Job | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.request = request
        self.prompt = prompt
        self.deliver = deliver
        self.index = index  # which candidate of the request
        self.leader = leader  # the candidate that computes the prompt (None: this one)
        self.followers: list[Job] = []  # the request's other candidates, on the leader
        self.submitted = time.perf_counter()
        self._cancelled = threading.Event()
        # Worker-thread state.
        self.sequence: GenSequence | None = None
        self.limits = EditorLimits(request.min_indent, request.newline_deadline_ms)
        self.text: list[str] = []
        self.admitted: float | None = None
        self.ended = False

    def cancel(self) -> None:
        """Stop this job, and the request's other candidates, before the next step (safe from
        any thread)."""
        self._cancelled.set()
        for follower in self.followers:
            follower.cancel()

    @property
    def ready(self) -> bool:
        """Whether it may start: a follower waits until its leader's prompt is computed, so
        that it copies the leader's cache instead of computing the prompt again."""
        leader = self.leader
        if leader is None or leader.ended:
            return True
        return leader.sequence is not None and leader.sequence.first_token_time is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Owns the engine's batch: `submit` queues requests, the worker thread steps the batch.

    `max_active` sequences run at once, `prefill_chunk` prompt tokens per step; kept KV caches
    use at most `cache_bytes`; `fim_mode` (None: the engine's default order) and
    `stable_prefix` are the defaults for requests that do not say; `threads` is PyTorch's
    thread count in the worker. With a `loader` (which returns the model again), the scheduler
    owns its models: `unload` frees the model when idle, the next request loads it, and
    `close` closes it.
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
        loader: Callable[[], CodeGemma] | None = None,
        repo: RepoSource | None = None,
    ) -> None:
        if max_active < 1 or prefill_chunk < 1:
            raise ValueError("max_active and prefill_chunk must be positive")
        self.max_active = max_active
        self.fim_mode = fim_mode
        self.stable_prefix = stable_prefix
        self.repo = repo  # repository context for FIM prompts (serve --repo)
        self.prefill_chunk = prefill_chunk
        self.cache_bytes = cache_bytes
        self.tokenizer: Tokenizer = lm.tokenizer  # kept while the model is unloaded
        self.context_length = lm.context_length
        self._loader = loader
        self._use(lm)
        # PyTorch's thread count is per thread: the worker takes the engine's (the caller's).
        self._threads = threads or torch.get_num_threads()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._by_client: dict[str, Job] = {}
        self._active: dict[int, Job] = {}  # id(sequence) -> job; worker thread only
        self._calls: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._slots: tuple[SlotState, ...] = ()  # published by the worker after each step
        self._model_lock = threading.Lock()  # held while a prompt is built, and to unload
        self._unload_requested = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="codegemma-scheduler", daemon=True)
        self.completed = 0  # jobs ended, any way (for health and tests)

    def _use(self, lm: CodeGemma) -> None:
        self.lm: CodeGemma | None = lm
        self.engine = lm.batch(prefill_chunk=self.prefill_chunk, interleave=True)
        self.cache = PrefixCache(
            lm.new_cache, max_capacity=lm.context_length, budget_bytes=self.cache_bytes
        )

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
        if self._loader is not None and self.lm is not None:
            self.lm.close()

    def build(self, request: GenerationRequest) -> Prompt:
        """The prompt of `request` (raises RequestError); linear in its size, run by the
        caller's thread, never the model's."""
        return build_prompt(
            self.lm,
            request,
            fim_mode=self.fim_mode,
            stable_prefix=self.stable_prefix,
            repo=self.repo,
        )

    def submit(
        self,
        request: GenerationRequest,
        deliver: Callable[[Event], None],
        prompt: Prompt | None = None,
    ) -> Job:
        """Queue `request` (its prompt built here unless given), as `request.n` jobs for n
        candidates; returns the first, whose `cancel` stops them all. Raises RequestError at
        once if its prompt cannot be built. Loads the model first if it was unloaded."""
        with self._model_lock:
            self._ensure_loaded()
            job = Job(request, prompt or self.build(request), deliver)
            job.followers = [
                Job(_candidate(request, i), job.prompt, deliver, index=i, leader=job)
                for i in range(1, request.n)
            ]
            with self._lock:
                if self._closing:
                    raise RuntimeError("the scheduler is closed")
                self._unload_requested = False
                if request.client is not None:
                    older = self._by_client.get(request.client)
                    if older is not None:
                        older.cancel()
                    self._by_client[request.client] = job
                self._waiting.extend([job, *job.followers])
                self._wake.notify()
        return job

    @property
    def load(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        return len(self._active), len(self._waiting)

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (see `unload`)."""
        return self.lm is not None

    def slots(self) -> tuple[SlotState, ...]:
        """The running sequences as of the latest step."""
        with self._lock:
            return self._slots

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the worker thread between two steps (the model is not thread-safe);
        its result or exception arrives in the returned future."""
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool) -> Future:
        """Embeddings of `inputs` (texts, BOS added, or token id lists), computed between two
        steps: a future of `Embeddings`. Inputs are tokenized and checked here (RequestError:
        one longer than the context, unless `truncate` cuts its end)."""
        rows = []
        for i, item in enumerate(inputs):
            ids = self.tokenizer.encode(item) if isinstance(item, str) else list(item)
            if len(ids) > self.context_length and truncate:
                ids = ids[: self.context_length]
            if len(ids) > self.context_length:
                raise RequestError(
                    f"input {i} is {len(ids)} tokens but the context window holds "
                    f'{self.context_length}; shorten it or ask for truncation ("truncate": true)',
                    param="input",
                )
            rows.append(ids)
        with self._model_lock:
            self._ensure_loaded()
            return self.call(lambda: Embeddings(self.lm.embed(rows), tuple(map(len, rows))))

    def tokenize(self, text: str, *, add_special: bool) -> list[tuple[int, bytes]]:
        """(token id, its UTF-8 bytes) of `text`, BOS first when `add_special`."""
        ids = self.tokenizer.encode(text, add_bos=add_special)
        return [(token, token_bytes(self.tokenizer, token)) for token in ids]

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids (RequestError for ids outside the vocabulary)."""
        try:
            return self.tokenizer.decode(ids)
        except (CodeGemmaError, ValueError, TypeError) as exc:
            raise RequestError(str(exc), param="tokens") from exc

    def unload(self) -> bool:
        """Free the model once no request runs or waits (Ollama's `keep_alive: 0`); the next
        request loads it again. False (nothing done) without a loader."""
        if self._loader is None:
            return False
        with self._lock:
            self._unload_requested = True
            self._wake.notify()
        return True

    def _ensure_loaded(self) -> None:
        """Load the model again if it was unloaded (the caller holds `_model_lock`)."""
        if self.lm is None:
            assert self._loader is not None  # only a scheduler with a loader unloads
            log.info("loading the model again")
            self._use(self._loader())

    # --- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._closing or self._waiting or self._active or self._calls):
                        if self._unload_requested and self._unload_if_idle():
                            continue
                        self._wake.wait()
                    if self._closing:
                        break
                self._run_calls()
                try:
                    self._round()
                except Exception:  # a bug, not a bad request: fail what runs, keep serving
                    log.exception("scheduler step failed")
                    for job in list(self._active.values()):
                        self._fail(job, "the server failed on this request")
                self._publish()
        for job in [*self._active.values(), *self._waiting]:
            self._send(job, Failed("the server is shutting down"))
        for _, future in self._calls:
            future.set_exception(RuntimeError("the server is shutting down"))

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # the caller gets it; the worker keeps serving
                    future.set_exception(exc)

    def _unload_if_idle(self) -> bool:
        """Free the model (the caller holds `_lock`; nothing runs or waits); True if done."""
        if not self._model_lock.acquire(blocking=False):  # a request is being submitted
            return False
        try:
            self._unload_requested = False
            if self.lm is not None:
                lm, self.lm = self.lm, None
                self.engine = None
                self.cache.clear()
                lm.close()
                log.info("model unloaded")
            return True
        finally:
            self._model_lock.release()

    def _publish(self) -> None:
        """The running sequences' states, for `slots` (read by other threads)."""
        states = tuple(_slot_state(job) for job in self._active.values())
        with self._lock:
            self._slots = states

    def _round(self) -> None:
        """Retire cancelled jobs, admit waiting ones, then one engine step."""
        # Cancelled jobs give their caches back first, so their successors reuse them.
        for job in [j for j in self._active.values() if j.cancelled]:
            self._end(job, "cancelled")
        self._admit()
        if self.engine is None or not self.engine.sequences:
            return
        for sequence, piece in self.engine.step():
            job = self._active.get(id(sequence))
            if job is not None:
                self._advance(job, piece)

    def _admit(self) -> None:
        while len(self._active) < self.max_active:
            job = self._next_ready()
            if job is None:
                return
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

    def _next_ready(self) -> Job | None:
        """The first waiting job that may start (FIFO, but followers wait for their leader)."""
        with self._lock:
            for job in self._waiting:
                if job.ready or job.cancelled:
                    self._waiting.remove(job)
                    return job
        return None

    def _sequence(self, job: Job) -> GenSequence:
        request, ids = job.request, job.prompt.ids
        room = self.lm.context_length - len(ids)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        needed = len(ids) + limit
        cache = self._leader_cache(job, needed)
        if cache is None and request.cache_prompt:
            cache, _ = self.cache.acquire(ids, needed)
        elif cache is None:
            cache = self.cache.new(needed)
        return self.lm.sequence(
            job.prompt,
            max_new_tokens=limit,
            sampling=request.sampling,
            stop=request.stop,
            ignore_eos=request.ignore_eos,
            cache=cache,
            logprobs=0 if request.logprobs is None else max(1, request.logprobs),
        )

    def _leader_cache(self, job: Job, needed: int) -> KVCache | None:
        """For a follower whose leader still runs: a copy of the leader's computed prompt."""
        leader = job.leader
        if leader is None or leader.ended or leader.sequence is None:
            return None
        source = leader.sequence.cache
        cache = self.cache.new(needed)
        cache.copy_prefix(source, min(len(job.prompt.ids), source.length))
        return cache

    def _advance(self, job: Job, piece: str) -> None:
        sequence = job.sequence
        piece = job.limits.feed(piece)
        if sequence.finished and not job.limits.hit:
            piece += job.limits.flush()
        if piece:
            job.text.append(piece)
            self._send(job, Piece(piece, job.index))
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
        job.ended = True
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
        token_ids = tuple(completion.token_ids) if completion is not None else ()
        logprobs = (completion.logprobs if completion is not None else None) or []
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
            dropped_file_tokens=job.prompt.dropped_file_tokens,
            retrieval_ms=job.prompt.retrieval_ms,
            drafted_tokens=sequence.drafted if sequence else 0,
            accepted_tokens=sequence.accepted if sequence else 0,
            index=job.index,
            token_ids=token_ids,
            logprobs=(
                None
                if job.request.logprobs is None
                else token_choices(self.tokenizer, logprobs[: len(token_ids)], job.request.logprobs)
            ),
        )


def _candidate(request: GenerationRequest, index: int) -> GenerationRequest:
    """Candidate `index` of a request for several: its own seed when the request has one."""
    seed = request.sampling.seed
    sampling = request.sampling
    if seed is not None:
        sampling = dataclasses.replace(sampling, seed=seed + index)
    return dataclasses.replace(request, sampling=sampling, client=None)


def _slot_state(job: Job) -> SlotState:
    sequence = job.sequence
    assert sequence is not None  # running jobs have one
    prefill = sequence.first_token_time is None
    return SlotState(
        job=job.id,
        index=job.index,
        client=job.request.client,
        state="prefill" if prefill else "decode",
        prompt_tokens=sequence.prompt_tokens,
        cached_tokens=sequence.reused,
        computed_tokens=sequence.cache.length,
        generated=sequence.generated,
        request=job.request,
    )
