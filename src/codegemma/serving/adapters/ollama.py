"""Ollama formats: `POST /api/generate` (a `suffix`, even an empty one, means FIM),
`POST /api/chat`, `GET /api/tags`, `POST /api/show`. Streams are newline-delimited JSON and
streaming is on unless `"stream": false`; durations are nanoseconds."""

from __future__ import annotations

import datetime

from codegemma.serving.adapters import Endpoint, ModelInfo, dumps
from codegemma.serving.adapters.openai import chat_message
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


class Generate(Endpoint):
    """`POST /api/generate`. An empty prompt without a suffix only loads the model."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        self.load_only = False

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        prompt = fields.text("prompt", "")
        suffix = fields.optional_text("suffix")
        if suffix is not None:
            source = FimInput(prefix=prompt, suffix=suffix, mode=fields.fim_mode())
        else:
            source = TextInput(prompt)
        self.load_only = suffix is None and not prompt
        return self._request(fields, source)

    def _common(self, body: object) -> Fields:
        fields = Fields(body)
        name = fields.text("model")
        if not self.info.accepts(name):
            raise RequestError(f"model '{name}' not found", status=404, param="model")
        if fields.data.get("format") not in (None, ""):
            raise RequestError("'format' (structured output) is not supported", param="format")
        if fields.data.get("images"):
            raise RequestError("images are not supported by this model", param="images")
        return fields

    def _request(self, fields: Fields, source) -> GenerationRequest:
        options = fields.object("options")
        max_tokens = max_tokens_field(
            options, "num_predict", self.info.context_length, unlimited=(-1, -2)
        )
        return GenerationRequest(
            source,
            max_tokens=0 if self.load_only else max_tokens,
            sampling=options.sampling(temperature=0.8, top_k=40, top_p=0.9),
            stop=options.stop(),
            stream=fields.boolean("stream", True),
            stable_prefix=fields.optional_boolean("stable_prefix"),
        )

    def chunk(self, text: str) -> str:
        return self._line(self._message(text, done=False))

    def closing(self, result: Result) -> list[str]:
        return [self._line(self.whole(result, streamed=True))]

    def whole(self, result: Result, *, streamed: bool = False) -> dict:
        text = "" if streamed else result.text
        reason = "load" if self.load_only else _done_reason(result)
        return {**self._message(text, done=True), "done_reason": reason, **_durations(result)}

    def error(self, error: RequestError) -> dict:
        return {"error": error.message}

    def stream_error(self, error: RequestError) -> str:
        return self._line(self.error(error))

    def _message(self, text: str, *, done: bool) -> dict:
        return {"model": self.info.name, "created_at": _now(), "response": text, "done": done}

    @staticmethod
    def _line(data: dict) -> str:
        return dumps(data) + "\n"


class Chat(Generate):
    """`POST /api/chat`. An empty message list only loads the model."""

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        messages = tuple(chat_message(m, i) for i, m in enumerate(fields.array("messages")))
        self.load_only = not messages
        source = ChatInput(messages) if messages else TextInput("")
        return self._request(fields, source)

    def _message(self, text: str, *, done: bool) -> dict:
        return {
            "model": self.info.name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": text},
            "done": done,
        }


def tags(info: ModelInfo) -> dict:
    """`GET /api/tags`: the one model this server serves."""
    modified = datetime.datetime.fromtimestamp(info.created, datetime.UTC).isoformat()
    return {
        "models": [
            {
                "name": f"{info.name}:latest",
                "model": f"{info.name}:latest",
                "modified_at": modified,
                "size": info.size_bytes,
                "digest": "",
                "details": _details(info),
            }
        ]
    }


def show(info: ModelInfo, body: object) -> dict:
    """`POST /api/show`: details and the context length (Continue reads `num_ctx`)."""
    fields = Fields(body)
    name = fields.optional_text("model") or fields.optional_text("name")
    if not info.accepts(name):
        raise RequestError(f"model '{name}' not found", status=404, param="model")
    return {
        "modelfile": "",
        "parameters": f"num_ctx {info.context_length}",
        "template": "{{ .Prompt }}",
        "details": _details(info),
        "model_info": {
            "general.architecture": "gemma",
            "general.parameter_count": info.parameters,
            "gemma.context_length": info.context_length,
        },
        "capabilities": ["completion", "insert"] if info.has_fim else ["completion"],
    }


def _details(info: ModelInfo) -> dict:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": "gemma",
        "families": ["gemma"],
        "parameter_size": f"{info.parameters / 1e9:.1f}B",
        "quantization_level": info.weights.upper(),
    }


def _done_reason(result: Result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _durations(result: Result) -> dict:
    ns = 1_000_000
    return {
        "total_duration": int((result.queue_ms + result.prompt_ms + result.generation_ms) * ns),
        "load_duration": 0,
        "prompt_eval_count": result.evaluated_tokens,
        "prompt_eval_duration": int(result.prompt_ms * ns),
        "eval_count": result.completion_tokens,
        "eval_duration": int(result.generation_ms * ns),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
