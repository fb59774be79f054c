"""Ollama formats: `POST /api/generate` (a `suffix`, even an empty one, means FIM),
`POST /api/chat`, `POST /api/embed`, `GET /api/tags`, `GET /api/ps`, `POST /api/show`.
Streams are newline-delimited JSON and streaming is on unless `"stream": false`; durations
are nanoseconds. As Ollama does, a prompt too long for the context is cut to fit unless the
request says `"truncate": false`."""

from __future__ import annotations

import datetime
import re

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
from codegemma.serving.results import Result

# Request fields and options this server does not implement: refused unless absent or neutral.
NEUTRAL = {"system": ("",), "template": ("",), "context": ([],), "think": (False,)}
NEUTRAL |= {"format": ("",), "images": ([],), "shift": (False,), "tools": ([],)}
OPTIONS_NEUTRAL = {
    "min_p": (0, 0.0),
    "typical_p": (1, 1.0),
    "tfs_z": (1, 1.0),
    "repeat_penalty": (1, 1.0),  # Ollama's default is 1.1; ours 1 (none)
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "mirostat": (0,),
}
# Options accepted with no effect: how Ollama loads and runs a model (this server loads its
# one model at start, with `codegemma serve` flags; Continue sends `num_ctx`, for one), and
# settings of samplers that are off.
OPTIONS_ACCEPTED = (
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "numa",
    "num_keep",
    "repeat_last_n",
    "penalize_newline",
    "mirostat_tau",
    "mirostat_eta",
)
MESSAGE_NEUTRAL = {"images": ([],), "tool_calls": ([],), "thinking": ("",), "tool_name": ()}
QUANTIZATION = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
QUANTIZATION |= {"int8": "Q8_0", "int4": "Q4_0"}
NEVER = "2318-01-01T00:00:00Z"  # `expires_at` of a model that stays loaded


class Generate(Endpoint):
    """`POST /api/generate`. An empty prompt without a suffix only loads the model (or, with
    `keep_alive: 0`, unloads it)."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        self.load_only = False

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        prompt = fields.text("prompt", "")
        suffix = fields.optional_text("suffix")
        fields.accept("raw")  # no template is applied to prompts either way (see README)
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
        self.unload_after = keep_alive(fields) == 0
        return fields

    def _request(self, fields: Fields, source) -> GenerationRequest:
        options = fields.object("options")
        max_tokens = max_tokens_field(
            options, "num_predict", self.info.context_length, unlimited=(-1, -2)
        )
        truncate = options.boolean("truncate", fields.boolean("truncate", True))
        request = GenerationRequest(
            source,
            max_tokens=0 if self.load_only else max_tokens,
            sampling=options.sampling(temperature=0.8, top_k=40, top_p=0.9),
            stop=options.stop(),
            stream=fields.boolean("stream", True),
            stable_prefix=fields.optional_boolean("stable_prefix"),
            truncate=truncate,
        )
        options.unsupported(OPTIONS_NEUTRAL)
        options.accept(*OPTIONS_ACCEPTED)
        options.check_known()
        fields.unsupported(NEUTRAL)
        fields.check_known()
        return request

    def chunk(self, text: str, index: int = 0) -> str:
        return self._line(self._message(text, done=False))

    def finished(self, result: Result) -> list[str]:
        return [self._line(self._final(result, ""))]

    def whole(self, results: list[Result]) -> dict:
        return self._final(results[0], results[0].text)

    def _final(self, result: Result, text: str) -> dict:
        if self.load_only:
            reason = "unload" if self.unload_after else "load"
        else:
            reason = done_reason(result)
        return {**self._message(text, done=True), "done_reason": reason, **_durations(result)}

    def error(self, error: RequestError) -> dict:
        return {"error": error.message}

    def stream_error(self, error: RequestError) -> str:
        return self._line(self.error(error))

    def _message(self, text: str, *, done: bool) -> dict:
        return {"model": self.info.name, "created_at": now(), "response": text, "done": done}

    @staticmethod
    def _line(data: dict) -> str:
        return dumps(data) + "\n"


class Chat(Generate):
    """`POST /api/chat`. An empty message list only loads (or unloads) the model."""

    def parse(self, body: object) -> GenerationRequest:
        fields = self._common(body)
        messages = tuple(
            chat_message(m, i, MESSAGE_NEUTRAL) for i, m in enumerate(fields.array("messages"))
        )
        self.load_only = not messages
        source = ChatInput(messages) if messages else TextInput("")
        return self._request(fields, source)

    def _message(self, text: str, *, done: bool) -> dict:
        return {
            "model": self.info.name,
            "created_at": now(),
            "message": {"role": "assistant", "content": text},
            "done": done,
        }


def keep_alive(fields: Fields) -> float | None:
    """Ollama's `keep_alive` in seconds (None: absent; negative: forever; 0: unload after
    this request): a number of seconds or a duration such as "5m", "1h30m", "-1"."""
    value = fields.data.get("keep_alive")
    fields.accept("keep_alive")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        seconds = _duration(value.strip())
        if seconds is not None:
            return seconds
    raise RequestError(
        f"'keep_alive' must be seconds or a duration such as \"5m\", got {value!r}",
        param="keep_alive",
    )


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _duration(text: str) -> float | None:
    """Go's duration syntax ("1h30m", "-5m", "300ms") or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not parts or "".join(a + b for a, b in parts) != body:
        return None
    return sign * sum(float(amount) * _UNITS[unit] for amount, unit in parts)


def embed_request(body: object, info: ModelInfo) -> tuple[list[str], bool, bool]:
    """`POST /api/embed`: (inputs, truncate, unload after)."""
    fields = Fields(body)
    name = fields.text("model")
    if not info.accepts(name):
        raise RequestError(f"model '{name}' not found", status=404, param="model")
    value = fields.data.get("input")
    fields.accept("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError("'input' must be a string or a non-empty list of strings")
    truncate = fields.boolean("truncate", True)
    unload = keep_alive(fields) == 0
    dimensions = fields.integer("dimensions", None, low=1)
    if dimensions not in (None, info.hidden_size):
        raise RequestError(f"'dimensions' must be {info.hidden_size}, the model's width")
    options = fields.object("options")
    options.accept(*OPTIONS_ACCEPTED)
    options.check_known()
    fields.check_known()
    return texts, truncate, unload


def embed_answer(info: ModelInfo, vectors: list[list[float]], tokens: int, ms: float) -> dict:
    return {
        "model": info.name,
        "embeddings": vectors,
        "total_duration": int(ms * 1_000_000),
        "load_duration": 0,
        "prompt_eval_count": tokens,
    }


def tags(info: ModelInfo) -> dict:
    """`GET /api/tags`: the one model this server serves."""
    return {"models": [_model(info)]}


def ps(info: ModelInfo, loaded: bool) -> dict:
    """`GET /api/ps`: the model, while it is in memory (it stays until `keep_alive: 0`)."""
    if not loaded:
        return {"models": []}
    entry = _model(info)
    del entry["modified_at"]
    return {"models": [{**entry, "expires_at": NEVER, "size_vram": 0}]}


def show(info: ModelInfo, body: object) -> dict:
    """`POST /api/show`: details and the context length (Continue reads `num_ctx`)."""
    fields = Fields(body)
    name = fields.optional_text("model") or fields.optional_text("name")
    fields.accept("verbose")
    fields.check_known()
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
            "gemma.embedding_length": info.hidden_size,
        },
        "capabilities": ["completion", "insert", "embedding"]
        if info.has_fim
        else ["completion", "embedding"],
        "modified_at": _modified(info),
    }


def _model(info: ModelInfo) -> dict:
    return {
        "name": f"{info.name}:latest",
        "model": f"{info.name}:latest",
        "modified_at": _modified(info),
        "size": info.size_bytes,
        "digest": info.digest.removeprefix("sha256:"),
        "details": _details(info),
    }


def _details(info: ModelInfo) -> dict:
    return {
        "parent_model": "",
        "format": "gguf" if info.path.endswith(".gguf") else "safetensors",
        "family": "gemma",
        "families": ["gemma"],
        "parameter_size": parameter_size(info.parameters),
        "quantization_level": QUANTIZATION.get(info.weights, info.weights.upper()),
    }


def parameter_size(count: int) -> str:
    """Ollama's rounded parameter count: "2.5B", "137.4M"."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def done_reason(result: Result) -> str:
    """Ollama's `done_reason`: "stop", "length" or "cancelled" (superseded or abandoned)."""
    return result.finish_reason if result.finish_reason in ("length", "cancelled") else "stop"


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


def _modified(info: ModelInfo) -> str:
    return datetime.datetime.fromtimestamp(info.created, datetime.UTC).isoformat()


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
