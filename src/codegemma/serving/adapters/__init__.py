"""Peers' wire formats (llama.cpp, OpenAI, Ollama) as thin adapters over `GenerationRequest`.

Each endpoint class is made per HTTP request: `parse` reads the peer's JSON into the internal
request; `opening`, `chunk`, `finished` (one candidate's end) and `closing` (after every
candidate) write the peer's stream; `whole` writes its non-streamed answer from every
candidate's `Result`; `error` writes its error object. Endpoints that do not generate text
(embeddings, tokenizing, model listings) are plain functions in each peer's module.
"""

from __future__ import annotations

import dataclasses
import json
import time

from codegemma.serving.requests import Fields, GenerationRequest, RequestError
from codegemma.serving.results import Result

MAX_CANDIDATES = 16  # the most candidates (OpenAI `n`, llama.cpp `n_cmpl`) one request may ask


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the server tells clients about the model it serves."""

    name: str  # the name clients use in `model` fields
    context_length: int
    weights: str  # "bfloat16", "int8", ...
    parameters: int  # parameter count of the architecture (quantized or not)
    size_bytes: int  # bytes of weights in memory
    has_fim: bool  # whether the tokenizer has the FIM tokens
    digest: str = ""  # "sha256:..." of the checkpoint's files (or of the weights in memory)
    path: str = ""  # where the checkpoint was loaded from
    hidden_size: int = 0  # the embedding width
    vocab_size: int = 0
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def accepts(self, name: str | None) -> bool:
        """Whether `name` refers to this model (Ollama clients add a `:latest` tag)."""
        return name in (self.name, f"{self.name}:latest")


class Endpoint:
    """Base of the per-request endpoint adapters."""

    stream_media_type = "text/event-stream"
    unload_after = False  # free the model once this request is over (Ollama `keep_alive: 0`)

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.created = int(time.time())

    def parse(self, body: object) -> GenerationRequest:
        raise NotImplementedError

    def opening(self) -> list[str]:
        """Stream chunks sent before the first piece of text."""
        return []

    def chunk(self, text: str, index: int = 0) -> str:
        """A stream chunk carrying text of candidate `index`."""
        raise NotImplementedError

    def finished(self, result: Result) -> list[str]:
        """Stream chunks ending one candidate."""
        raise NotImplementedError

    def closing(self, results: list[Result]) -> list[str]:
        """Stream chunks after every candidate has ended."""
        return []

    def whole(self, results: list[Result]) -> dict | list:
        """The non-streamed answer, from every candidate's result (by index)."""
        raise NotImplementedError

    def error(self, error: RequestError) -> dict:
        raise NotImplementedError

    def stream_error(self, error: RequestError) -> str:
        return sse(self.error(error))


def sse(data: object) -> str:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {dumps(data)}\n\n"


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def timings(result: Result) -> dict:
    """llama.cpp's `timings` object."""
    evaluated, predicted = result.evaluated_tokens, result.completion_tokens
    return {
        "cache_n": result.cached_tokens,
        "prompt_n": evaluated,
        "prompt_ms": result.prompt_ms,
        "prompt_per_token_ms": result.prompt_ms / evaluated if evaluated else 0.0,
        "prompt_per_second": 1000 * evaluated / result.prompt_ms if result.prompt_ms else 0.0,
        "predicted_n": predicted,
        "predicted_ms": result.generation_ms,
        "predicted_per_token_ms": result.generation_ms / predicted if predicted else 0.0,
        "predicted_per_second": (
            1000 * predicted / result.generation_ms if result.generation_ms else 0.0
        ),
        "retrieval_ms": result.retrieval_ms,  # ours: repository context (serve --repo)
        # as llama-server with speculation: tokens drafted and checked, and those kept
        "draft_n": result.drafted_tokens,
        "draft_n_accepted": result.accepted_tokens,
    }


def candidates(fields: Fields, name: str) -> int:
    """How many candidates a request asks for (`n`, `n_cmpl`), at most MAX_CANDIDATES."""
    return fields.integer(name, 1, low=1, high=MAX_CANDIDATES)


def truncate_field(fields: Fields, default: bool = False) -> bool:
    """Our extension `truncate`: cut a plain or chat prompt too long for the context."""
    return fields.boolean("truncate", default)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
