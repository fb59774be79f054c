"""The HTTP application: routes that only translate between a peer's format and the backend.

Every generation endpoint goes through `_generate`: read and check the body, let the
endpoint's adapter parse it into a `GenerationRequest`, submit it, then either stream the
adapter's chunks or wait for every candidate's result. A client that disconnects cancels its
job. The routes reach the model only through a `Backend`: `Scheduler` is the local one, and
any other (e.g. replicas behind Ray Serve) that implements the same few methods is served by
these same routes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from codegemma.errors import CodeGemmaError
from codegemma.serving.adapters import Endpoint, ModelInfo, llamacpp, ollama, openai
from codegemma.serving.info import model_info
from codegemma.serving.metrics import CONTENT_TYPE, Metrics
from codegemma.serving.middleware import (
    AccessLog,
    ApiKeyCheck,
    RequestStats,
    error_response,
    stats_of,
)
from codegemma.serving.requests import GenerationRequest, RequestError
from codegemma.serving.results import Done, Embeddings, Event, Failed, Piece, Result, SlotState

__all__ = ["Backend", "create_app", "model_info"]

DEFAULT_MAX_BODY = 8 << 20
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


class Job(Protocol):
    def cancel(self) -> None:
        """Stop the request (every candidate) before the model's next step; any thread."""


class Backend(Protocol):
    """What the routes call on the model's owner (all from the event loop's thread, except
    `submit`, `embed` and `tokenize`, which run on one intake thread in arrival order)."""

    max_active: int  # sequences that run at once (llama.cpp's `total_slots`)

    def submit(self, request: GenerationRequest, deliver: Callable[[Event], None]) -> Job:
        """Queue `request`; `deliver` receives its Piece, Done (one per candidate) and Failed
        events from any thread. Raises RequestError for a prompt that cannot be built."""

    @property
    def load(self) -> tuple[int, int]:
        """(sequences running, sequences waiting)."""

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (Ollama `/api/ps`)."""

    def slots(self) -> tuple[SlotState, ...]:
        """The running sequences (`/slots`)."""

    def embed(self, inputs: Sequence[str | Sequence[int]], *, truncate: bool) -> Future:
        """A future of `Embeddings` of texts or token id lists."""

    def tokenize(self, text: str, *, add_special: bool) -> list[tuple[int, bytes]]:
        """(token id, its bytes) of `text`."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids."""

    def unload(self) -> bool:
        """Free the model once idle; the next request loads it (False: cannot)."""


@dataclasses.dataclass
class _Server:
    """What the routes share: the backend, the model's description, the intake thread."""

    backend: Backend
    info: ModelInfo
    intake: ThreadPoolExecutor
    metrics: Metrics
    max_body_bytes: int

    async def body(self, request: Request) -> object:
        return await read_json(request, self.max_body_bytes)

    async def off_loop(self, fn: Callable, *args, **kwargs):
        """Run `fn` on the intake thread (tokenizing must not stall the event loop)."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.intake, call)

    async def embed(self, inputs: list, truncate: bool) -> Embeddings:
        future = await self.off_loop(self.backend.embed, inputs, truncate=truncate)
        return await asyncio.wrap_future(future)


def create_app(
    backend: Backend,
    info: ModelInfo,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The ASGI app serving `backend`'s model in the llama.cpp, OpenAI and Ollama formats,
    with a playground at `/`. `cors_origins`: origins whose pages may call the API."""
    app = FastAPI(title="codegemma", docs_url=None, redoc_url=None, openapi_url=None)
    # Prompts are tokenized and fitted off the event loop (a large body takes seconds, and
    # every stream would stall meanwhile), by one thread, so requests reach the scheduler in
    # the order they came: a newer request from a client always supersedes an older one.
    intake = ThreadPoolExecutor(1, thread_name_prefix="codegemma-intake")
    metrics = Metrics(lambda: backend.load)
    server = _Server(backend, info, intake, metrics, max_body_bytes)
    _generation_routes(app, server)
    _llamacpp_routes(app, server)
    _openai_routes(app, server)
    _ollama_routes(app, server)
    _web_routes(app)

    @app.exception_handler(HTTPException)
    async def not_found(request: Request, exc: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(request.url.path, RequestError(message, exc.status_code, kind=kind))

    # The last added runs first: the access log sees every answer, CORS answers preflights
    # before the key is checked.
    if api_key:
        app.add_middleware(ApiKeyCheck, api_key=api_key)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(AccessLog, metrics=metrics)
    return app


def _generation_routes(app: FastAPI, server: _Server) -> None:
    endpoints: dict[str, type[Endpoint]] = {
        "/completion": llamacpp.Completion,
        "/completions": llamacpp.Completion,
        "/infill": llamacpp.Infill,
        "/v1/completions": openai.Completions,
        "/v1/chat/completions": openai.ChatCompletions,
        "/api/generate": ollama.Generate,
        "/api/chat": ollama.Chat,
    }
    for path, make in endpoints.items():

        async def handler(request: Request, make=make) -> Response:
            return await _generate(request, make(server.info), server)

        app.add_api_route(path, handler, methods=["POST"])


def _llamacpp_routes(app: FastAPI, server: _Server) -> None:
    backend, info = server.backend, server.info

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/props")
    async def props() -> dict:
        return llamacpp.props(info, backend.max_active)

    @app.get("/slots")
    async def slots() -> list:
        return llamacpp.slots(info, backend.slots(), backend.max_active)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        async def answer():
            content, add_special, pieces = llamacpp.tokenize_request(await server.body(request))
            tokens = await server.off_loop(backend.tokenize, content, add_special=add_special)
            return llamacpp.tokenize_answer(tokens, pieces)

        return await _answering(request, answer)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        async def answer():
            ids = llamacpp.detokenize_request(await server.body(request))
            return {"content": await server.off_loop(backend.detokenize, ids)}

        return await _answering(request, answer)

    async def embedding(request: Request) -> Response:
        async def answer():
            texts = llamacpp.embedding_request(await server.body(request))
            found = await server.embed(texts, truncate=False)
            return llamacpp.embedding_answer(found.vectors.tolist())

        return await _answering(request, answer)

    app.add_api_route("/embedding", embedding, methods=["POST"])
    app.add_api_route("/embeddings", embedding, methods=["POST"])


def _openai_routes(app: FastAPI, server: _Server) -> None:
    info = server.info

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict:
        return openai.models(info)

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> Response:
        async def answer():
            return openai.model(info, model_id)

        return await _answering(request, answer)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        async def answer():
            inputs, as_base64 = openai.embeddings_request(await server.body(request), info)
            found = await server.embed(inputs, truncate=False)
            return openai.embeddings_answer(info, found.vectors, found.tokens, as_base64)

        return await _answering(request, answer)


def _ollama_routes(app: FastAPI, server: _Server) -> None:
    backend, info = server.backend, server.info

    @app.get("/api/tags")
    async def tags() -> dict:
        return ollama.tags(info)

    @app.get("/api/ps")
    async def ps() -> dict:
        return ollama.ps(info, backend.loaded)

    @app.get("/api/version")
    async def version() -> dict:
        return {"version": "0.5.0"}  # the Ollama API level these adapters follow

    @app.post("/api/show")
    async def show(request: Request) -> Response:
        async def answer():
            return ollama.show(info, await server.body(request))

        return await _answering(request, answer)

    @app.post("/api/embed")
    async def embed(request: Request) -> Response:
        async def answer():
            started = asyncio.get_running_loop().time()
            texts, truncate, unload = ollama.embed_request(await server.body(request), info)
            found = await server.embed(texts, truncate=truncate)
            if unload:
                backend.unload()
            ms = (asyncio.get_running_loop().time() - started) * 1000
            return ollama.embed_answer(info, found.vectors.tolist(), sum(found.tokens), ms)

        return await _answering(request, answer)


def _web_routes(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"])
    async def root(request: Request) -> Response:
        """The playground for browsers; Ollama's greeting for its clients."""
        if "text/html" in request.headers.get("accept", ""):
            return await web_file("index.html")
        return PlainTextResponse("Ollama is running")

    @app.get("/web/{name}")
    async def web_file(name: str) -> Response:
        if name not in WEB_FILES:
            raise HTTPException(404, "no such file")
        data = resources.files("codegemma.serving").joinpath("web", name).read_bytes()
        return Response(data, media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})


async def _answering(request: Request, answer: Callable) -> Response:
    """The JSON of `answer()`, or its refusal in the format of the path's peer."""
    try:
        return JSONResponse(await answer())
    except RequestError as exc:
        return error_response(request.url.path, exc)
    except CodeGemmaError as exc:  # e.g. an input the model cannot take
        return error_response(request.url.path, RequestError(str(exc)))


async def _generate(request: Request, endpoint: Endpoint, server: _Server) -> Response:
    stats = stats_of(request.scope)
    try:
        parsed = endpoint.parse(await server.body(request))
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        fan_out = _FanOut(parsed)

        def deliver(event: Event) -> None:
            for each in fan_out(event):
                if parsed.stream or not isinstance(each, Piece):
                    loop.call_soon_threadsafe(events.put_nowait, each)

        job = await server.off_loop(server.backend.submit, fan_out.request, deliver)
    except RequestError as exc:
        return error_response(request.url.path, exc)
    except CodeGemmaError as exc:  # a value the engine refuses, e.g. a sampling setting
        return error_response(request.url.path, RequestError(str(exc)))
    finish = functools.partial(_finished, server, endpoint, stats)
    if parsed.stream:
        return StreamingResponse(
            _stream(job, events, endpoint, parsed.n, finish),
            media_type=endpoint.stream_media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    outcome = await _outcome(job, events, request, parsed.n)
    if outcome is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    if isinstance(outcome, Failed):
        error = RequestError(outcome.message, 500, kind="server_error")
        return error_response(request.url.path, error)
    finish(outcome)
    return JSONResponse(endpoint.whole(outcome))


class _FanOut:
    """Candidates of a greedy request are identical: one is computed and its events are sent
    under every candidate's index (other requests pass through)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.copies = request.n if request.n > 1 and request.sampling.greedy else 1
        self.request = dataclasses.replace(request, n=1) if self.copies > 1 else request

    def __call__(self, event: Event) -> list[Event]:
        if self.copies == 1 or isinstance(event, Failed):
            return [event]
        if isinstance(event, Piece):
            return [Piece(event.text, i) for i in range(self.copies)]
        return [Done(dataclasses.replace(event.result, index=i)) for i in range(self.copies)]


def _finished(server: _Server, endpoint: Endpoint, stats: RequestStats, results: list) -> None:
    """A generation's last step: metrics, the access log's figures, Ollama's unloading."""
    server.metrics.observe(results)
    stats.generation = True
    stats.prompt_tokens = results[0].prompt_tokens
    stats.cached_tokens = results[0].cached_tokens
    stats.generated_tokens = sum(r.completion_tokens for r in results)
    if endpoint.unload_after:
        server.backend.unload()


async def _stream(job: Job, events: asyncio.Queue[Event], endpoint: Endpoint, n: int, finish):
    results: list[Result] = []
    try:
        for chunk in endpoint.opening():
            yield chunk
        while len(results) < n:
            event = await events.get()
            if isinstance(event, Piece):
                yield endpoint.chunk(event.text, event.index)
            elif isinstance(event, Done):
                results.append(event.result)
                for chunk in endpoint.finished(event.result):
                    yield chunk
            else:
                yield endpoint.stream_error(RequestError(event.message, 500, kind="server_error"))
                return
        results.sort(key=lambda r: r.index)
        finish(results)
        for chunk in endpoint.closing(results):
            yield chunk
    finally:
        job.cancel()  # the client went away (Starlette cancels us), or the job is over anyway


async def _outcome(
    job: Job, events: asyncio.Queue[Event], request: Request, n: int
) -> list[Result] | Failed | None:
    """Every candidate's result (by index), the Failed event, or None once the client
    disconnects (the job is cancelled)."""
    gone = asyncio.ensure_future(_disconnect(request))
    results: list[Result] = []
    try:
        while len(results) < n:
            waiting = asyncio.ensure_future(events.get())
            await asyncio.wait({gone, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                job.cancel()
                return None
            event = waiting.result()
            if isinstance(event, Failed):
                job.cancel()
                return event
            results.append(event.result)
        return sorted(results, key=lambda r: r.index)
    except asyncio.CancelledError:  # the server dropped the request (Ray Serve's proxy does
        job.cancel()  # when the client leaves, instead of sending http.disconnect)
        raise
    finally:
        gone.cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def read_json(request: Request, limit: int) -> object:
    """The request body as JSON: at most `limit` bytes of valid UTF-8, else a RequestError."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is larger than {limit} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the request body is larger than {limit} bytes", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        raise RequestError(message) from None
    except RecursionError:
        raise RequestError("invalid JSON: nested too deeply") from None


def _reject_constant(name: str) -> None:
    raise RequestError(f"invalid JSON: {name} is not a number JSON allows")
