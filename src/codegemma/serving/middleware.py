"""ASGI middleware of the server: the API key check, and an access log line (with token counts
and milliseconds) plus the request counter per HTTP request. Errors answered here follow the
format of the path's peer."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time

from fastapi.responses import JSONResponse

from codegemma.serving.adapters import llamacpp, openai
from codegemma.serving.metrics import Metrics
from codegemma.serving.requests import RequestError

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/"})  # answered without an API key
PUBLIC_PREFIXES = ("/web/",)  # the playground's files
STATS = "codegemma.stats"  # the scope key of a request's RequestStats

access_log = logging.getLogger("codegemma.serving.access")


def error_body(path: str, error: RequestError) -> dict:
    """An error in the format the path's clients expect."""
    if path.startswith("/v1/"):
        return openai.error_body(error)
    if path.startswith("/api/"):
        return {"error": error.message}  # Ollama's
    return llamacpp.error_body(error)


def error_response(path: str, error: RequestError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status)


@dataclasses.dataclass
class RequestStats:
    """What a generation route reports for the access log (tokens of all its candidates)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    generation: bool = False  # set by generation routes

    def describe(self) -> str:
        if not self.generation:
            return "-"
        return (
            f"prompt={self.prompt_tokens} cached={self.cached_tokens} "
            f"generated={self.generated_tokens}"
        )


def stats_of(scope) -> RequestStats:
    """The request's stats (a fresh one when the access log is not installed)."""
    return scope.setdefault(STATS, RequestStats())


class AccessLog:
    """One INFO line per request once its answer is sent (method, path, status, tokens, ms),
    and the request counter of `metrics`."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        stats = stats_of(scope)
        status = 500  # unless the app starts an answer

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.metrics.count(getattr(route, "path", "other"), status)
            ms = (time.perf_counter() - started) * 1000
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %s %.0f ms',
                client[0],
                scope["method"],
                scope["path"],
                status,
                stats.describe(),
                ms,
            )


class ApiKeyCheck:
    """Every path but the health checks and the playground needs `Authorization: Bearer KEY`
    (or `X-Api-Key: KEY`); otherwise 401 in the format of the path's peer."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or _public(scope["path"]) or self._valid(scope):
            await self.app(scope, receive, send)
            return
        error = RequestError("Invalid API Key", 401, kind="authentication_error")
        await error_response(scope["path"], error)(scope, receive, send)

    def _valid(self, scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization") or headers.get(b"x-api-key") or b""
        given = given.removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(given, self.api_key)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
