"""OpenAI formats: `POST /v1/completions` (a `suffix` means FIM), `POST /v1/chat/completions`,
`GET /v1/models`. Streams are SSE chunks ending with `data: [DONE]`."""

from __future__ import annotations

import uuid

from codegemma.serving.adapters import Endpoint, ModelInfo, sse, timings
from codegemma.serving.requests import (
    ChatInput,
    Fields,
    FimInput,
    GenerationRequest,
    RequestError,
    TextInput,
    max_tokens_field,
)
from codegemma.serving.scheduler import Result

DONE = "data: [DONE]\n\n"


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

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        prompt = fields.data.get("prompt", "")
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
        max_tokens = max_tokens_field(fields, "max_tokens", self.info.context_length)
        return self._request(fields, source, 16 if max_tokens is None else max_tokens)

    def _common(self, body: object) -> Fields:
        fields = Fields(body)
        check_model(fields.optional_text("model"), self.info)
        fields.integer("n", 1, low=1, high=1)  # one choice per request
        if fields.data.get("logprobs") not in (None, 0, False):
            raise RequestError("'logprobs' is not supported", param="logprobs")
        self.include_usage = fields.object("stream_options").boolean("include_usage", False)
        return fields

    def _request(self, fields: Fields, source, max_tokens: int | None) -> GenerationRequest:
        return GenerationRequest(
            source,
            max_tokens=max_tokens,
            sampling=fields.sampling(temperature=1.0),
            stop=fields.stop(),
            stream=fields.boolean("stream", False),
            client=fields.optional_text("user") if self.supersedes else None,
            stable_prefix=fields.optional_boolean("stable_prefix"),
        )

    def opening(self) -> list[str]:
        return [self.chunk(self.echo)] if self.echo else []

    def chunk(self, text: str) -> str:
        return sse(
            self._envelope([{"text": text, "index": 0, "logprobs": None, "finish_reason": None}])
        )

    def closing(self, result: Result) -> list[str]:
        choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": finish(result)}
        events = [sse(self._envelope([choice]))]
        if self.include_usage:
            events.append(sse({**self._envelope([]), "usage": usage(result)}))
        return [*events, DONE]

    def whole(self, result: Result) -> dict:
        choice = {
            "text": self.echo + result.text,
            "index": 0,
            "logprobs": None,
            "finish_reason": finish(result),
        }
        return {**self._envelope([choice]), "usage": usage(result), "timings": timings(result)}

    def error(self, error: RequestError) -> dict:
        code = "model_not_found" if error.status == 404 else None
        return {
            "error": {
                "message": error.message,
                "type": error.kind,
                "param": error.param,
                "code": code,
            }
        }

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
        messages = tuple(chat_message(m, i) for i, m in enumerate(fields.array("messages")))
        if not messages:
            raise RequestError("'messages' must be a non-empty array", param="messages")
        max_tokens = max_tokens_field(fields, "max_completion_tokens", self.info.context_length)
        if max_tokens is None:
            max_tokens = max_tokens_field(fields, "max_tokens", self.info.context_length)
        return self._request(fields, ChatInput(messages), max_tokens)

    def opening(self) -> list[str]:
        return [self._delta({"role": "assistant", "content": ""}, None)]

    def chunk(self, text: str) -> str:
        return self._delta({"content": text}, None)

    def closing(self, result: Result) -> list[str]:
        events = [self._delta({}, finish(result))]
        if self.include_usage:
            events.append(sse({**self._chunk_envelope([]), "usage": usage(result)}))
        return [*events, DONE]

    def whole(self, result: Result) -> dict:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": finish(result),
        }
        return {**self._envelope([choice]), "usage": usage(result), "timings": timings(result)}

    def _delta(self, delta: dict, reason: str | None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return sse(self._chunk_envelope([choice]))

    def _chunk_envelope(self, choices: list[dict]) -> dict:
        return {**self._envelope(choices), "object": "chat.completion.chunk"}


def models(info: ModelInfo) -> dict:
    """`GET /v1/models`."""
    model = {"id": info.name, "object": "model", "created": info.created, "owned_by": "codegemma"}
    return {"object": "list", "data": [model]}


def check_model(name: str | None, info: ModelInfo) -> None:
    if name is None:
        raise RequestError("'model' is required", param="model")
    if not info.accepts(name):
        raise RequestError(
            f"The model '{name}' does not exist; this server serves '{info.name}'",
            status=404,
            param="model",
        )


def chat_message(item: object, index: int) -> dict[str, str]:
    """{role, content} with content as a string (text parts of a content array are joined)."""
    fields = Fields(item, where=f"message {index}")
    role = fields.text("role")
    content = fields.data.get("content")
    if isinstance(content, list):
        parts = [Fields(part, where=f"message {index} content part") for part in content]
        content = "".join(part.text("text") for part in parts if part.data.get("type") == "text")
    if not isinstance(content, str):
        raise RequestError(f"message {index}: 'content' must be a string", param="messages")
    return {"role": role, "content": content}


def finish(result: Result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def usage(result: Result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }
