"""llama.cpp server formats: `POST /infill`, `POST /completion` (SSE streams, no [DONE])."""

from __future__ import annotations

from codegemma.serving.adapters import ERROR_TYPES, Endpoint, sse, timings
from codegemma.serving.requests import (
    Fields,
    FimInput,
    GenerationRequest,
    RequestError,
    TextInput,
    context_files,
    max_tokens_field,
)
from codegemma.serving.scheduler import Result


class Completion(Endpoint):
    """`POST /completion`: a raw prompt (clients such as Continue bring their own templates)."""

    slot = -1
    response_fields: tuple[str, ...] = ()

    def parse(self, body: object) -> GenerationRequest:
        fields = Fields(body)
        return self._request(fields, TextInput(fields.text("prompt", "")))

    def _request(self, fields: Fields, source) -> GenerationRequest:
        self.slot = fields.integer("id_slot", -1, low=-1)
        self.response_fields = _paths(fields.array("response_fields"))
        self.max_tokens = max_tokens_field(
            fields, "n_predict", self.info.context_length, unlimited=(-1,)
        )
        return GenerationRequest(
            source,
            max_tokens=self.max_tokens,
            sampling=fields.sampling(temperature=0.8, top_k=40, top_p=0.95),
            stop=fields.stop(),
            stream=fields.boolean("stream", False),
            client=f"slot:{self.slot}" if self.slot >= 0 else None,
            cache_prompt=fields.boolean("cache_prompt", True),
            min_indent=fields.integer("n_indent", 0, low=0),
            newline_deadline_ms=fields.number("t_max_predict_ms", 0.0, low=0.0),
            stable_prefix=fields.optional_boolean("stable_prefix"),
            ignore_eos=fields.boolean("ignore_eos", False),
        )

    def chunk(self, text: str) -> str:
        return sse({"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": self.slot})

    def closing(self, result: Result) -> list[str]:
        return [sse(self._final(result, ""))]

    def whole(self, result: Result) -> dict:
        return self._final(result, result.text)

    def _final(self, result: Result, content: str) -> dict:
        """The last answer, cut down to `response_fields` (llama.vim asks for a few) if any."""
        answer = self._answer(result, content)
        return nested_values(self.response_fields, answer) if self.response_fields else answer

    def _answer(self, result: Result, content: str) -> dict:
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": self.slot,
            "stop": True,
            "model": self.info.name,
            "tokens_predicted": result.completion_tokens,
            "tokens_evaluated": result.prompt_tokens,
            "generation_settings": {
                "n_ctx": self.info.context_length,
                "n_predict": self.max_tokens,
            },
            "prompt": "",
            "has_new_line": "\n" in result.text,
            "truncated": result.truncated_tokens > 0,
            "stop_type": result.stop_type,
            "stopping_word": result.stopping_word,
            "tokens_cached": result.cached_tokens,
            "timings": timings(result),
        }

    def error(self, error: RequestError) -> dict:
        kind = ERROR_TYPES.get(error.status, "invalid_request_error")
        return {"error": {"code": error.status, "message": error.message, "type": kind}}


class Infill(Completion):
    """`POST /infill`: prefix, suffix and repository context (`input_extra`); `prompt` is text
    typed on the cursor's line, placed at the end of the prefix as llama.cpp does."""

    def parse(self, body: object) -> GenerationRequest:
        if not self.info.has_fim:
            raise RequestError(
                "Infill is not supported by this model: it has no FIM tokens",
                status=501,
                kind="not_supported_error",
            )
        fields = Fields(body)
        source = FimInput(
            prefix=fields.text("input_prefix") + fields.text("prompt", ""),
            suffix=fields.text("input_suffix"),
            files=context_files(fields.array("input_extra"), path_key="filename", text_key="text"),
            mode=fields.fim_mode(),
        )
        return self._request(fields, source)


def nested_values(paths: tuple[str, ...], data: dict) -> dict:
    """llama.cpp's `response_fields`: {"timings/prompt_n": value, ...} for each path found."""
    out = {}
    for path in paths:
        value = data
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            out[path] = value
    return out


def _paths(items: list) -> tuple[str, ...]:
    if not all(isinstance(item, str) for item in items):
        raise RequestError("'response_fields' must be a list of strings", param="response_fields")
    return tuple(items)
