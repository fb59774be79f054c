"""The `Backend` the routes use on the ingress of a Ray Serve deployment: prompts are built
here, requests run on engine replicas reached through a `DeploymentHandle`.

Building the prompt here refuses a bad request at once and in arrival order, as the local
scheduler does, and gives the request its affinity key (a hash of the prompt's first tokens
unless the client names itself), which travels as the call's session id (Serve's channel for
session stickiness) to the request router. Each request is a `RemoteJob`: a task on the
ingress's event loop that streams the replica's `Update`s and delivers their events.
Cancelling it cancels the stream, and Ray cancels the replica's generator, which cancels the
scheduler's job. A newer request with the same client key supersedes an older one here,
whichever replica either runs on: the older one ends at once with "cancelled" and the figures
its replica last reported. A replica that dies while it holds a request: the request is sent
again if nothing of it reached the client yet, else it fails with a clean error; every
candidate is answered at most once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

# The `cluster` extra (pip install 'codegemma[cluster]').
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from codegemma.fim import FimMode
from codegemma.prompts import Prompt, PromptBuilder
from codegemma.serving.cluster.affinity import affinity_key
from codegemma.serving.cluster.replica import Description, Refusal, Update
from codegemma.serving.prompts import build_prompt
from codegemma.serving.requests import GenerationRequest
from codegemma.serving.results import Done, Event, Failed, Piece, Result, SlotState

log = logging.getLogger(__name__)

# A replica that went away: the request may run again elsewhere if nobody saw any of it.
REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError)
RETRY_PAUSE_S = 0.5  # before sending a request again (the router drops dead replicas meanwhile)


@dataclasses.dataclass(frozen=True)
class _PromptSource:
    """What `build_prompt` reads of a model (its prompt builder), without the weights."""

    prompts: PromptBuilder


class RemoteJob:
    """One request as the ingress sees it while a replica runs it (`cancel`: any thread)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        request: GenerationRequest,
        prompt: Prompt,
        deliver: Callable[[Event], None],
        affinity: str | None,
    ) -> None:
        self.id = next(self._ids)
        self.request = request
        self.prompt = prompt
        self.affinity = affinity
        self._deliver = deliver
        self.submitted = time.perf_counter()
        self.future: Future | None = None  # the task on the ingress's loop, once started
        # Event-loop state.
        self.replica = ""  # who runs it, once a replica took it
        self.progress = ((0, 0),) * request.n  # per candidate: (reused, generated)
        self.texts: list[list[str]] = [[] for _ in range(request.n)]
        self.first_piece: float | None = None
        self.ended: set[int] = set()  # candidates answered
        self.failed = False
        self.visible = False  # the client may have seen some of it: never send it again

    def cancel(self) -> None:
        """Stop it: the stream and the replica's job (nothing more is delivered)."""
        if self.future is not None:
            self.future.cancel()

    @property
    def over(self) -> bool:
        return self.failed or len(self.ended) == self.request.n

    def restart(self) -> None:
        """Forget a replica that died before anything reached the client."""
        self.replica, self.first_piece = "", None
        self.progress = ((0, 0),) * self.request.n
        self.texts = [[] for _ in range(self.request.n)]

    def receive(self, update: Update) -> None:
        """Deliver a replica's message (events of ended candidates are dropped)."""
        if update.replica:
            log.debug("request %d (%s) runs on %s", self.id, self.affinity, update.replica)
            self.replica = update.replica
        self.progress = update.progress or self.progress
        for event in update.events:
            if self.failed:
                return
            if isinstance(event, Piece) and event.index not in self.ended:
                self.texts[event.index].append(event.text)
                self.first_piece = self.first_piece or time.perf_counter()
                self.visible = self.visible or self.request.stream
                self._deliver(event)
            elif isinstance(event, Done) and event.result.index not in self.ended:
                self.ended.add(event.result.index)
                self.visible = True
                self._deliver(event)
            elif isinstance(event, Failed):
                self.fail(event.message)

    def fail(self, message: str) -> None:
        if not self.over:
            self.failed = self.visible = True
            self._deliver(Failed(message))

    def supersede(self) -> None:
        """End every candidate still running as "cancelled" (a newer request of its client
        came), with the figures its replica last reported; then stop it."""
        for index in range(self.request.n):
            if not self.over and index not in self.ended:
                self.ended.add(index)
                self._deliver(Done(self._cancelled(index)))
        self.cancel()

    def _cancelled(self, index: int) -> Result:
        now = time.perf_counter()
        first = self.first_piece or now
        reused, generated = self.progress[index]
        return Result(
            text="".join(self.texts[index]),
            finish_reason="cancelled",
            stop_type="none",
            stopping_word="",
            prompt_tokens=len(self.prompt.ids),
            cached_tokens=reused,
            completion_tokens=generated,
            queue_ms=0.0,  # not known here: the wait is counted in prompt_ms
            prompt_ms=(first - self.submitted) * 1000,
            generation_ms=(now - first) * 1000,
            truncated_tokens=self.prompt.truncated_tokens,
            dropped_files=self.prompt.dropped_files,
            dropped_file_tokens=self.prompt.dropped_file_tokens,
            index=index,
            logprobs=None if self.request.logprobs is None else (),
        )


class RayBackend:
    """Serves the routes from engine replicas behind `engine` (a handle to their deployment).

    `description` comes from a replica; `loop` is the ingress's event loop, where requests
    stream; `replicas` engine replicas were asked for; `fim_mode` and `stable_prefix` are the
    defaults for requests that do not say; `retries`: resubmissions of a request whose replica
    died before anything of it reached the client.
    """

    def __init__(
        self,
        engine: DeploymentHandle,
        description: Description,
        loop: asyncio.AbstractEventLoop,
        *,
        replicas: int,
        fim_mode: FimMode | None,
        stable_prefix: bool,
        retries: int,
    ) -> None:
        self.engine = engine
        self.loop = loop
        self.max_active = replicas * description.max_active
        self.retries = retries
        self.fim_mode = fim_mode
        self.stable_prefix = stable_prefix
        builder = PromptBuilder(description.tokenizer, description.context_length)
        self._model = _PromptSource(builder)
        self._jobs: dict[int, RemoteJob] = {}  # in flight; event loop only
        self._clients: dict[str, RemoteJob] = {}  # client key -> its latest; event loop only

    # --- the intake thread ------------------------------------------------------------------

    def submit(self, request: GenerationRequest, deliver: Callable[[Event], None]) -> RemoteJob:
        """Build the prompt (RequestError at once if it cannot be), then start the request."""
        prompt = build_prompt(
            self._model, request, fim_mode=self.fim_mode, stable_prefix=self.stable_prefix
        )
        job = RemoteJob(request, prompt, deliver, affinity_key(request, prompt.ids))
        job.future = asyncio.run_coroutine_threadsafe(self._run(job), self.loop)
        return job

    def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool) -> Future:
        """A future of the `Embeddings` one replica computes."""
        rows = [item if isinstance(item, str) else list(item) for item in inputs]
        return asyncio.run_coroutine_threadsafe(self._call("embed", rows, truncate), self.loop)

    def tokenize(self, text: str, *, add_special: bool) -> list[tuple[int, bytes]]:
        return self._wait(self._call("tokenize", text, add_special))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._wait(self._call("detokenize", list(ids)))

    def _wait(self, call):
        return asyncio.run_coroutine_threadsafe(call, self.loop).result()

    # --- the event loop ---------------------------------------------------------------------

    @property
    def load(self) -> tuple[int, int]:
        """(requests a replica has taken, requests waiting for one)."""
        taken = sum(1 for job in self._jobs.values() if job.replica)
        return taken, len(self._jobs) - taken

    @property
    def loaded(self) -> bool:
        return True  # every replica holds its model for as long as it lives

    def slots(self) -> tuple[SlotState, ...]:
        """The requests in flight, as the ingress last heard of them from their replicas."""
        return tuple(_slot_state(job) for job in self._jobs.values() if job.replica)

    def unload(self) -> bool:
        return False  # replicas keep their models (Ollama keep_alive 0 changes nothing)

    async def _run(self, job: RemoteJob) -> None:
        self._jobs[job.id] = job
        client = job.request.client
        if client is not None:
            older = self._clients.get(client)
            if older is not None:
                older.supersede()
            self._clients[client] = job
        try:
            await self._stream(job)
        finally:
            del self._jobs[job.id]
            if client is not None and self._clients.get(client) is job:
                del self._clients[client]

    async def _stream(self, job: RemoteJob) -> None:
        """Stream `job` from a replica, again from another if one dies before the client saw
        anything, until every candidate has ended."""
        for attempt in itertools.count():
            stream = self._engine_for(job).generate.remote(job.request, job.prompt)
            try:
                async for update in stream:
                    job.receive(update)
                    if job.over:
                        return
                job.fail("the replica ended this request's stream early")
                return
            except REPLICA_LOST as exc:
                if job.visible or attempt >= self.retries:
                    job.fail(f"the replica running this request stopped ({type(exc).__name__})")
                    return
                log.warning("replica %s lost request %d; sending it again", job.replica, job.id)
                job.restart()
            except Exception:  # a bug, not a bad request: this request fails, others go on
                log.exception("request %d failed on replica %s", job.id, job.replica)
                job.fail("the server failed on this request")
                return
            finally:
                stream.cancel()  # a no-op once it ended; else Ray cancels the replica's job
            await asyncio.sleep(RETRY_PAUSE_S)

    def _engine_for(self, job: RemoteJob) -> DeploymentHandle:
        """The handle that streams `job`, its affinity key as the session id (which Serve
        hands the request router in the request's metadata)."""
        if job.affinity is None:
            return self.engine.options(stream=True)
        return self.engine.options(stream=True, session_id=job.affinity)

    async def _call(self, method: str, *args):
        """A one-shot call on any replica (sent again if the replica dies); a `Refusal` comes
        back as the RequestError it was."""
        for attempt in itertools.count():
            try:
                answer = await getattr(self.engine, method).remote(*args)
                break
            except REPLICA_LOST:
                if attempt >= self.retries:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S)
        if isinstance(answer, Refusal):
            raise answer.error()
        return answer


def _slot_state(job: RemoteJob) -> SlotState:
    reused, generated = job.progress[0]
    return SlotState(
        job=job.id,
        index=0,
        client=job.request.client,
        state="decode" if job.first_piece is not None else "prefill",
        prompt_tokens=len(job.prompt.ids),
        cached_tokens=reused,
        computed_tokens=len(job.prompt.ids) + generated if job.first_piece else reused,
        generated=generated,
        request=job.request,
    )
