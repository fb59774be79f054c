"""OpenAI formats: `POST /v1/completions` (a `suffix` means FIM), `POST /v1/chat/completions`,
`GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/embeddings`. Streams are SSE chunks ending
with `data: [DONE]`."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import torch

from codegemma.serving.adapters import Endpoint, ModelInfo, candidates, sse, timings, truncate_field
from codegemma.serving.requests import (
    ChatInput,
    Fields,
    FimInput,
    GenerationRequest,
    RequestError,
    TextInput,
    max_tokens_field,
)
from codegemma.serving.results import Result, TokenChoice

DONE = "data: [DONE]\n\n"
MAX_LOGPROBS = 5  # completions' `logprobs`, as OpenAI allows
MAX_TOP_LOGPROBS = 20  # chat's `top_logprobs`, as OpenAI allows

# Parameters this server does not implement: refused unless absent, null or neutral.
NEUTRAL = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
}
CHAT_NEUTRAL = {
    **NEUTRAL,
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),  # with no tools, both mean plain text
    "function_call": ("none", "auto"),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
# Accepted with no effect on the answer: hints for OpenAI's own storage and caching.
CHAT_ACCEPTED = ("parallel_tool_calls", "metadata", "prompt_cache_key", "safety_identifier")
MESSAGE_NEUTRAL = {
    "name": ("",),
    "tool_calls": ([],),
    "tool_call_id": (),
    "function_call": (),
    "refusal": (),
    "audio": (),
}


class Completions(Endpoint):
    """`POST /v1/completions`."""

    object_name = "text_completion"
    id_prefix = "cmpl-"
    supersedes = True  # a newer completion from the same `user` cancels the older one

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        self.id = self.id_prefix + uuid.uuid4().hex
        self.include_usage = False
        self.echo = ""
        self.n = 1

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        prompt = fields.data.get("prompt", "")
        fields.accept("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]  # one prompt in a list, as some clients send it
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string (one prompt per request)", param="prompt")
        if fields.boolean("echo", False):
            self.echo = prompt
        suffix = fields.optional_text("suffix")
        if suffix is not None:
            source = FimInput(prefix=prompt, suffix=suffix, mode=fields.fim_mode())
        else:
            source = TextInput(prompt)
        logprobs = fields.integer("logprobs", None, low=0, high=MAX_LOGPROBS)
        best_of = fields.integer("best_of", None, low=1)
        if best_of not in (None, self.n):
            raise RequestError("'best_of' must equal 'n' here (no ranking)", param="best_of")
        max_tokens = max_tokens_field(fields, "max_tokens", self.info.context_length)
        request = self._request(fields, source, 16 if max_tokens is None else max_tokens, logprobs)
        fields.unsupported(NEUTRAL)
        fields.check_known()
        return request

    def _common(self, body: object) -> Fields:
        fields = Fields(body)
        check_model(fields.optional_text("model"), self.info)
        self.n = candidates(fields, "n")
        options = fields.object("stream_options")
        self.include_usage = options.boolean("include_usage", False)
        options.accept("include_obfuscation")  # padding against side channels: no effect
        options.check_known()
        return fields

    def _request(
        self, fields: Fields, source, max_tokens: int | None, logprobs: int | None
    ) -> GenerationRequest:
        user = fields.optional_text("user")
        return GenerationRequest(
            source,
            max_tokens=max_tokens,
            sampling=fields.sampling(temperature=1.0),
            stop=fields.stop(),
            stream=fields.boolean("stream", False),
            client=user if self.supersedes else None,
            stable_prefix=fields.optional_boolean("stable_prefix"),
            truncate=truncate_field(fields),
            n=self.n,
            logprobs=logprobs,
        )

    def opening(self) -> list[str]:
        if not self.echo:
            return []
        return [self.chunk(self.echo, index) for index in range(self.n)]

    def chunk(self, text: str, index: int = 0) -> str:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        return sse(self._envelope([choice]))

    def finished(self, result: Result) -> list[str]:
        choice = {"text": "", "index": result.index, "finish_reason": finish(result)}
        return [sse(self._envelope([{**choice, "logprobs": self._logprobs(result)}]))]

    def closing(self, results: list[Result]) -> list[str]:
        if not self.include_usage:
            return [DONE]
        return [sse({**self._envelope([]), "usage": usage(results)}), DONE]

    def whole(self, results: list[Result]) -> dict:
        choices = [
            {
                "text": self.echo + result.text,
                "index": result.index,
                "logprobs": self._logprobs(result),
                "finish_reason": finish(result),
            }
            for result in results
        ]
        return {**self._envelope(choices), "usage": usage(results), "timings": timings(results[0])}

    def _logprobs(self, result: Result) -> dict | None:
        """The legacy completions `logprobs` object."""
        if result.logprobs is None:
            return None
        offsets, at = [], len(self.echo)
        for choice in result.logprobs:
            offsets.append(at)
            at += len(choice.text)
        return {
            "tokens": [c.text for c in result.logprobs],
            "token_logprobs": [c.logprob for c in result.logprobs],
            "top_logprobs": [{t.text: t.logprob for t in c.top} for c in result.logprobs],
            "text_offset": offsets,
        }

    def error(self, error: RequestError) -> dict:
        return error_body(error)

    def _envelope(self, choices: list[dict]) -> dict:
        return {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.info.name,
            "choices": choices,
        }


class ChatCompletions(Completions):
    """`POST /v1/chat/completions`."""

    object_name = "chat.completion"
    id_prefix = "chatcmpl-"
    supersedes = False  # a user may hold several conversations, and complete code meanwhile

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        messages = tuple(
            chat_message(m, i, MESSAGE_NEUTRAL) for i, m in enumerate(fields.array("messages"))
        )
        if not messages:
            raise RequestError("'messages' must be a non-empty array", param="messages")
        max_tokens = max_tokens_field(fields, "max_completion_tokens", self.info.context_length)
        if max_tokens is None:
            max_tokens = max_tokens_field(fields, "max_tokens", self.info.context_length)
        top = fields.integer("top_logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
        if fields.boolean("logprobs", False):
            logprobs = top or 0
        elif top is not None:
            raise RequestError("'top_logprobs' needs \"logprobs\": true", param="top_logprobs")
        else:
            logprobs = None
        request = self._request(fields, ChatInput(messages), max_tokens, logprobs)
        fields.unsupported(CHAT_NEUTRAL)
        fields.accept(*CHAT_ACCEPTED)
        fields.check_known()
        return request

    def opening(self) -> list[str]:
        return [self._delta({"role": "assistant", "content": ""}, None, i) for i in range(self.n)]

    def chunk(self, text: str, index: int = 0) -> str:
        return self._delta({"content": text}, None, index)

    def finished(self, result: Result) -> list[str]:
        return [self._delta({}, finish(result), result.index, self._logprobs(result))]

    def closing(self, results: list[Result]) -> list[str]:
        if not self.include_usage:
            return [DONE]
        return [sse({**self._chunk_envelope([]), "usage": usage(results)}), DONE]

    def whole(self, results: list[Result]) -> dict:
        choices = [
            {
                "index": result.index,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": self._logprobs(result),
                "finish_reason": finish(result),
            }
            for result in results
        ]
        return {**self._envelope(choices), "usage": usage(results), "timings": timings(results[0])}

    def _logprobs(self, result: Result) -> dict | None:
        """The chat `logprobs` object: {content: [{token, logprob, bytes, top_logprobs}]}."""
        if result.logprobs is None:
            return None
        content = [
            {**_token(c), "top_logprobs": [_token(t) for t in c.top]} for c in result.logprobs
        ]
        return {"content": content, "refusal": None}

    def _delta(
        self, delta: dict, reason: str | None, index: int, logprobs: dict | None = None
    ) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return sse(self._chunk_envelope([choice]))

    def _chunk_envelope(self, choices: list[dict]) -> dict:
        return {**self._envelope(choices), "object": "chat.completion.chunk"}


def error_body(error: RequestError) -> dict:
    """OpenAI's error object."""
    code = "model_not_found" if error.status == 404 and error.param == "model" else None
    return {
        "error": {"message": error.message, "type": error.kind, "param": error.param, "code": code}
    }


def models(info: ModelInfo) -> dict:
    """`GET /v1/models`."""
    return {"object": "list", "data": [model_object(info)]}


def model(info: ModelInfo, model_id: str) -> dict:
    """`GET /v1/models/{id}` (RequestError 404 for another model)."""
    check_model(model_id, info)
    return model_object(info)


def model_object(info: ModelInfo) -> dict:
    return {"id": info.name, "object": "model", "created": info.created, "owned_by": "codegemma"}


def check_model(name: str | None, info: ModelInfo) -> None:
    if name is None:
        raise RequestError("'model' is required", param="model")
    if not info.accepts(name):
        raise RequestError(
            f"The model '{name}' does not exist; this server serves '{info.name}'",
            status=404,
            param="model",
        )


def embeddings_request(body: object, info: ModelInfo) -> tuple[list, bool]:
    """`POST /v1/embeddings`: the inputs (texts or token id lists) and whether the answer is
    base64 (the `openai` package asks for base64 unless told otherwise)."""
    fields = Fields(body)
    check_model(fields.optional_text("model"), info)
    fields.accept("input", "user")
    encoding = fields.text("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError(
            '\'encoding_format\' must be "float" or "base64"', param="encoding_format"
        )
    dimensions = fields.integer("dimensions", None, low=1)
    if dimensions not in (None, info.hidden_size):
        raise RequestError(
            f"'dimensions' must be {info.hidden_size}, the model's width", param="dimensions"
        )
    fields.check_known()
    return _embedding_inputs(fields.data.get("input")), encoding == "base64"


def _embedding_inputs(value: object) -> list:
    """A string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_ids(v) for v in value):
            return value
        if _is_ids(value):
            return [value]
    raise RequestError(
        "'input' must be a string, a list of strings, or token ids (a list of integers or a "
        "list of such lists), and not empty",
        param="input",
    )


def _is_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def embeddings_answer(
    info: ModelInfo, vectors: torch.Tensor, tokens: tuple[int, ...], as_base64: bool
) -> dict:
    """OpenAI's embeddings list (vectors as float lists, or base64 of little-endian float32)."""
    rows = vectors.float().numpy()
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": (
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else row.tolist()
            ),
        }
        for i, row in enumerate(np.asarray(rows))
    ]
    total = sum(tokens)
    return {
        "object": "list",
        "data": data,
        "model": info.name,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def chat_message(item: object, index: int, neutral: dict[str, tuple]) -> dict[str, str]:
    """{role, content} with content as a string (text parts of a content array are joined;
    other parts are refused); `neutral` lists the peer's other message fields we accept only
    when they change nothing."""
    fields = Fields(item, where=f"message {index}")
    role = fields.text("role")
    content = fields.data.get("content")
    fields.accept("content")
    if isinstance(content, list):
        content = "".join(_text_part(part, index) for part in content)
    if not isinstance(content, str):
        raise RequestError(f"message {index}: 'content' must be a string", param="messages")
    fields.unsupported(neutral)
    fields.check_known()
    return {"role": role, "content": content}


def _text_part(part: object, index: int) -> str:
    fields = Fields(part, where=f"message {index} content part")
    kind = fields.text("type")
    if kind != "text":
        raise RequestError(
            f"message {index}: content parts of type '{kind}' are not supported (text only)",
            param="messages",
        )
    text = fields.text("text")
    fields.check_known()
    return text


def finish(result: Result) -> str:
    """OpenAI's finish reason; "cancelled" (superseded, or its client left) is ours."""
    return result.finish_reason if result.finish_reason in ("length", "cancelled") else "stop"


def usage(results: list[Result]) -> dict:
    """Token counts of a request: its prompt once, the completions of every candidate."""
    first = results[0]
    completion = sum(result.completion_tokens for result in results)
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.prompt_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": first.cached_tokens,
            "truncated_tokens": first.truncated_tokens,  # ours: prompt tokens cut to fit
        },
    }


def _token(choice: TokenChoice) -> dict:
    return {"token": choice.text, "logprob": choice.logprob, "bytes": list(choice.bytes)}
