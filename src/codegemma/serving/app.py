"""The HTTP application: routes that only translate between a peer's format and the scheduler.

Every generation endpoint goes through `_generate`: read and check the body, let the
endpoint's adapter parse it into a `GenerationRequest`, submit it, then either stream the
adapter's chunks or wait for the whole result. A client that disconnects cancels its job.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from codegemma.engine import CodeGemma
from codegemma.errors import CodeGemmaError
from codegemma.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codegemma.serving.adapters import Endpoint, ModelInfo, llamacpp, ollama, openai
from codegemma.serving.requests import RequestError
from codegemma.serving.scheduler import Done, Event, Failed, Job, Piece, Scheduler

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})  # answered without an API key
DEFAULT_MAX_BODY = 8 << 20


def model_info(lm: CodeGemma, name: str) -> ModelInfo:
    """What clients are told about `lm`, served under `name`."""
    tensors = [*lm.model.parameters(), *lm.model.buffers()]
    tokenizer = lm.tokenizer
    return ModelInfo(
        name=name,
        context_length=lm.context_length,
        weights=lm.weights,
        parameters=sum(t.numel() for t in lm.model.parameters()),
        size_bytes=sum(t.numel() * t.element_size() for t in tensors),
        has_fim=all(
            tokenizer.token_id(t) is not None for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
        ),
    )


def create_app(
    scheduler: Scheduler,
    info: ModelInfo,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    """The ASGI app serving `scheduler`'s model in the llama.cpp, OpenAI and Ollama formats."""
    app = FastAPI(title="codegemma", docs_url=None, redoc_url=None, openapi_url=None)
    # Prompts are tokenized and fitted off the event loop (a large body takes seconds, and
    # every stream would stall meanwhile), by one thread, so requests reach the scheduler in
    # the order they came: a newer request from a client always supersedes an older one.
    intake = ThreadPoolExecutor(1, thread_name_prefix="codegemma-intake")

    async def generate(request: Request, endpoint: Endpoint) -> Response:
        return await _generate(request, endpoint, scheduler, intake, max_body_bytes)

    def route(path: str, make: type[Endpoint]) -> None:
        async def handler(request: Request) -> Response:
            return await generate(request, make(info))

        app.add_api_route(path, handler, methods=["POST"])

    route("/completion", llamacpp.Completion)
    route("/completions", llamacpp.Completion)
    route("/infill", llamacpp.Infill)
    route("/v1/completions", openai.Completions)
    route("/v1/chat/completions", openai.ChatCompletions)
    route("/api/generate", ollama.Generate)
    route("/api/chat", ollama.Chat)

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict:
        return openai.models(info)

    @app.get("/api/tags")
    async def tags() -> dict:
        return ollama.tags(info)

    @app.get("/api/version")
    async def version() -> dict:
        return {"version": "0.5.0"}  # the Ollama API level these adapters follow

    @app.post("/api/show")
    async def show(request: Request) -> Response:
        endpoint = ollama.Generate(info)
        try:
            return JSONResponse(ollama.show(info, await read_json(request, max_body_bytes)))
        except RequestError as exc:
            return error_response(endpoint, exc)

    if api_key:
        app.add_middleware(ApiKeyCheck, api_key=api_key, info=info)
    return app


async def _generate(
    request: Request,
    endpoint: Endpoint,
    scheduler: Scheduler,
    intake: ThreadPoolExecutor,
    max_body_bytes: int,
) -> Response:
    try:
        parsed = endpoint.parse(await read_json(request, max_body_bytes))
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(event: Event) -> None:
            if parsed.stream or not isinstance(event, Piece):
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = await loop.run_in_executor(intake, scheduler.submit, parsed, deliver)
    except RequestError as exc:
        return error_response(endpoint, exc)
    except CodeGemmaError as exc:  # a value the engine refuses, e.g. a sampling setting
        return error_response(endpoint, RequestError(str(exc)))
    if parsed.stream:
        return StreamingResponse(
            _stream(job, events, endpoint),
            media_type=endpoint.stream_media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    event = await _outcome(job, events, request)
    if event is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    if isinstance(event, Failed):
        return error_response(endpoint, RequestError(event.message, 500, kind="server_error"))
    return JSONResponse(endpoint.whole(event.result))


async def _stream(job: Job, events: asyncio.Queue[Event], endpoint: Endpoint):
    try:
        for chunk in endpoint.opening():
            yield chunk
        while True:
            event = await events.get()
            if isinstance(event, Piece):
                yield endpoint.chunk(event.text)
            elif isinstance(event, Done):
                for chunk in endpoint.closing(event.result):
                    yield chunk
                return
            else:
                yield endpoint.stream_error(RequestError(event.message, 500, kind="server_error"))
                return
    finally:
        job.cancel()  # the client went away (Starlette cancels us), or the job is over anyway


async def _outcome(job: Job, events: asyncio.Queue[Event], request: Request) -> Event | None:
    """The job's Done or Failed event, or None once the client disconnects (job cancelled)."""
    gone = asyncio.ensure_future(_disconnect(request))
    waiting = asyncio.ensure_future(events.get())
    try:
        await asyncio.wait({gone, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            return waiting.result()
        job.cancel()
        return None
    finally:
        gone.cancel()
        waiting.cancel()


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


def error_response(endpoint: Endpoint, error: RequestError) -> JSONResponse:
    return JSONResponse(endpoint.error(error), status_code=error.status)


def endpoint_family(path: str, info: ModelInfo) -> Endpoint:
    """The adapter whose error format a path's clients expect."""
    if path.startswith("/v1/"):
        return openai.Completions(info)
    if path.startswith("/api/"):
        return ollama.Generate(info)
    return llamacpp.Completion(info)


class ApiKeyCheck:
    """ASGI middleware: every path but the health checks needs `Authorization: Bearer KEY`
    (or `X-Api-Key: KEY`); otherwise 401 in the format of the path's peer."""

    def __init__(self, app, api_key: str, info: ModelInfo) -> None:
        self.app = app
        self.api_key = api_key.encode()
        self.info = info

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self._valid(scope):
            await self.app(scope, receive, send)
            return
        error = RequestError("Invalid API Key", 401, kind="authentication_error")
        response = error_response(endpoint_family(scope["path"], self.info), error)
        await response(scope, receive, send)

    def _valid(self, scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization") or headers.get(b"x-api-key") or b""
        given = given.removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(given, self.api_key)
