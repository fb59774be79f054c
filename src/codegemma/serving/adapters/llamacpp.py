"""llama.cpp server formats: `POST /infill`, `POST /completion` (SSE streams, no [DONE]), and
`GET /props`, `GET /slots`, `POST /tokenize`, `POST /detokenize`, `POST /embedding`."""

from __future__ import annotations

import dataclasses

from codegemma.sampling import SamplingParams
from codegemma.serving.adapters import (
    ERROR_TYPES,
    Endpoint,
    ModelInfo,
    candidates,
    sse,
    timings,
    truncate_field,
)
from codegemma.serving.requests import (
    Fields,
    FimInput,
    GenerationRequest,
    RequestError,
    TextInput,
    context_files,
    max_tokens_field,
)
from codegemma.serving.results import Result, SlotState, TokenChoice

# Options of llama-server this server does not implement: refused unless absent or neutral.
NEUTRAL = {
    "min_p": (0, 0.0),  # llama-server's default is 0.05; ours 0
    "typical_p": (1, 1.0),
    "repeat_penalty": (1, 1.0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "dry_multiplier": (0, 0.0),
    "xtc_probability": (0, 0.0),
    "mirostat": (0,),
    "dynatemp_range": (0, 0.0),
    "top_n_sigma": (-1, -1.0),
    "grammar": ("",),
    "json_schema": (),
    "logit_bias": ([], {}),
    "n_keep": (0, -1),  # truncation (`truncate`) keeps BOS and the end of the prompt
    "n_discard": (0,),
    "min_keep": (0,),
    "n_cache_reuse": (0,),
    "post_sampling_probs": (False,),
    "timings_per_token": (False,),
    "return_progress": (False,),
    "lora": ([],),
    "image_data": ([],),
    "multimodal_data": ([],),
}
# Accepted with no effect: settings of samplers that are off (their switch above is neutral),
# `t_max_prompt_ms` (llama-server does not enforce it either) and `model` (a single-model
# llama-server ignores it too).
ACCEPTED = (
    "model",
    "t_max_prompt_ms",
    "repeat_last_n",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "mirostat_tau",
    "mirostat_eta",
    "xtc_threshold",
    "dynatemp_exponent",
)
# llama.cpp's sampler names. We run top_k, top_p and temperature, as listed; the others are
# off at their neutral settings, except "infill" (llama.cpp's FIM sampler), which is accepted
# because llama.vim and llama.vscode always list it, and not applied.
SAMPLERS = frozenset(
    {"top_k", "top_p", "temperature", "infill", "dry", "typ_p", "min_p", "xtc", "penalties"}
    | {"top_n_sigma"}
)
RUN_SAMPLERS = ("top_k", "top_p", "temperature")
MAX_PROBS = 100  # the most alternatives `n_probs` may ask per token


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
        self.n_probs = fields.integer("n_probs", 0, low=0, high=MAX_PROBS)
        self.return_tokens = fields.boolean("return_tokens", False)
        self.samplers = _samplers(fields)
        sampling = fields.sampling(temperature=0.8, top_k=40, top_p=0.95)
        request = GenerationRequest(
            source,
            max_tokens=self.max_tokens,
            sampling=_run_only(sampling, self.samplers),
            stop=fields.stop(),
            stream=fields.boolean("stream", False),
            client=f"slot:{self.slot}" if self.slot >= 0 else None,
            cache_prompt=fields.boolean("cache_prompt", True),
            min_indent=fields.integer("n_indent", 0, low=0),
            newline_deadline_ms=fields.number("t_max_predict_ms", 0.0, low=0.0),
            stable_prefix=fields.optional_boolean("stable_prefix"),
            ignore_eos=fields.boolean("ignore_eos", False),
            truncate=truncate_field(fields),
            n=candidates(fields, "n_cmpl"),
            logprobs=self.n_probs or None,
        )
        fields.unsupported(NEUTRAL)
        fields.accept(*ACCEPTED)
        fields.check_known()
        self.request = request
        return request

    def chunk(self, text: str, index: int = 0) -> str:
        return sse(
            {"index": index, "content": text, "tokens": [], "stop": False, "id_slot": self.slot}
        )

    def finished(self, result: Result) -> list[str]:
        return [sse(self._final(result, ""))]

    def whole(self, results: list[Result]) -> dict | list:
        answers = [self._final(result, result.text) for result in results]
        return answers[0] if len(answers) == 1 else answers  # n_cmpl > 1: one per candidate

    def _final(self, result: Result, content: str) -> dict:
        """The last answer, cut down to `response_fields` (llama.vim asks for a few) if any."""
        answer = self._answer(result, content)
        return nested_values(self.response_fields, answer) if self.response_fields else answer

    def _answer(self, result: Result, content: str) -> dict:
        answer = {
            "index": result.index,
            "content": content,
            "tokens": list(result.token_ids) if self.return_tokens else [],
            "id_slot": self.slot,
            "stop": True,
            "model": self.info.name,
            "tokens_predicted": result.completion_tokens,
            "tokens_evaluated": result.prompt_tokens,
            "generation_settings": self._settings(),
            "prompt": "",
            "has_new_line": "\n" in result.text,
            "truncated": result.truncated,
            # ours: what `truncated` left out (prompt tokens; whole `input_extra` chunks)
            "truncated_tokens": result.truncated_tokens,
            "input_extra_dropped": result.dropped_files,
            "input_extra_dropped_tokens": result.dropped_file_tokens,
            "stop_type": result.stop_type,
            "stopping_word": result.stopping_word,
            "tokens_cached": result.cached_tokens,
            "timings": timings(result),
        }
        if self.n_probs:
            answer["completion_probabilities"] = [_probability(c) for c in result.logprobs or ()]
        return answer

    def _settings(self) -> dict:
        sampling = self.request.sampling
        return {
            "n_ctx": self.info.context_length,
            "n_predict": -1 if self.max_tokens is None else self.max_tokens,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k or 0,
            "top_p": sampling.top_p or 1.0,
            "seed": -1 if sampling.seed is None else sampling.seed,
            "stop": list(self.request.stop),
            "n_probs": self.n_probs,
            "n_cmpl": self.request.n,
            "ignore_eos": self.request.ignore_eos,
            "samplers": [name for name in self.samplers if name in RUN_SAMPLERS],
        }

    def error(self, error: RequestError) -> dict:
        return error_body(error)


class Infill(Completion):
    """`POST /infill`: prefix, suffix and repository context (`input_extra`); `prompt` is text
    typed on the cursor's line, placed at the end of the prefix as llama.cpp does. Context
    chunks that do not fit are dropped, farthest (first) first, and reported."""

    def parse(self, body: object) -> GenerationRequest:
        if not self.info.has_fim:
            raise RequestError(
                "Infill is not supported by this model: it has no FIM tokens",
                status=501,
                kind="not_supported_error",
            )
        fields = Fields(body)
        extra = fields.array("input_extra")
        source = FimInput(
            prefix=fields.text("input_prefix") + fields.text("prompt", ""),
            suffix=fields.text("input_suffix"),
            files=context_files(extra, path_key="filename", text_key="text", accepted=("time",)),
            mode=fields.fim_mode(),
        )
        return self._request(fields, source)


def error_body(error: RequestError) -> dict:
    """llama-server's error object."""
    kind = ERROR_TYPES.get(error.status, "invalid_request_error")
    return {"error": {"code": error.status, "message": error.message, "type": kind}}


def props(info: ModelInfo, total_slots: int) -> dict:
    """`GET /props`: server and model settings."""
    return {
        "default_generation_settings": {
            "id": 0,
            "id_task": -1,
            "n_ctx": info.context_length,
            "speculative": False,
            "is_processing": False,
            "params": {
                "n_predict": -1,
                "seed": -1,
                "temperature": 0.8,
                "top_k": 40,
                "top_p": 0.95,
                "min_p": 0.0,
                "n_probs": 0,
                "n_keep": 0,
                "stop": [],
                "ignore_eos": False,
                "stream": False,
                "samplers": list(RUN_SAMPLERS),
            },
        },
        "total_slots": total_slots,
        "model_alias": info.name,
        "model_path": info.path,
        "chat_template": GEMMA_TEMPLATE,
        "modalities": {"vision": False, "audio": False},
        "build_info": "codegemma",
        "is_sleeping": False,
    }


# The Gemma instruction-tuned turn format (codegemma.chat), as a Jinja template.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def slots(info: ModelInfo, states: tuple[SlotState, ...], total: int) -> list[dict]:
    """`GET /slots`: one object per running sequence, then idle slots up to `total`."""
    out = [_slot(info, i, state) for i, state in enumerate(states)]
    idle = {"is_processing": False, "id_task": -1, "n_ctx": info.context_length}
    out += [{"id": i, **idle} for i in range(len(out), total)]
    return out


def _slot(info: ModelInfo, slot: int, state: SlotState) -> dict:
    request = state.request
    sampling = request.sampling
    return {
        "id": slot,
        "id_task": state.job,
        "n_ctx": info.context_length,
        "speculative": False,
        "is_processing": True,
        "state": state.state,  # ours: "prefill" or "decode"
        "client": state.client,  # ours: the key a newer request supersedes it by
        "candidate": state.index,
        "n_prompt_tokens": state.prompt_tokens,
        "n_prompt_tokens_cache": state.cached_tokens,
        "n_past": state.computed_tokens,
        "params": {
            "n_predict": -1 if request.max_tokens is None else request.max_tokens,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k or 0,
            "top_p": sampling.top_p or 1.0,
            "seed": -1 if sampling.seed is None else sampling.seed,
            "stream": request.stream,
        },
        "next_token": {
            "has_next_token": True,
            "n_remain": -1 if request.max_tokens is None else request.max_tokens - state.generated,
            "n_decoded": state.generated,
        },
    }


def tokenize_request(body: object) -> tuple[str, bool, bool]:
    """`POST /tokenize`: (content, add_special, with_pieces)."""
    fields = Fields(body)
    content = fields.text("content")
    add_special = fields.boolean("add_special", False)
    with_pieces = fields.boolean("with_pieces", False)
    fields.unsupported({"parse_special": (True,)})  # special tokens in text are always tokens
    fields.check_known()
    return content, add_special, with_pieces


def tokenize_answer(tokens: list[tuple[int, bytes]], with_pieces: bool) -> dict:
    """{"tokens": [ids]} or, with pieces, [{id, piece}] (a piece that is not valid UTF-8 on
    its own is a list of byte values)."""
    if not with_pieces:
        return {"tokens": [token for token, _ in tokens]}
    return {"tokens": [{"id": token, "piece": _piece(data)} for token, data in tokens]}


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


def detokenize_request(body: object) -> list[int]:
    """`POST /detokenize`: the token ids."""
    fields = Fields(body)
    tokens = fields.array("tokens")
    fields.check_known()
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise RequestError("'tokens' must be a list of integers", param="tokens")
    return tokens


def embedding_request(body: object) -> list[str]:
    """`POST /embedding` (and `/embeddings`): `content` (or `input`), a string or a list of
    them; normalization must be llama-server's default (2: Euclidean)."""
    fields = Fields(body)
    name = "content" if "content" in fields.data else "input"
    content = fields.data.get(name)
    fields.accept(name, "model", "encoding_format")
    if fields.data.get("encoding_format") not in (None, "float"):
        raise RequestError("'encoding_format' must be \"float\" here", param="encoding_format")
    fields.unsupported({"embd_normalize": (2,)})
    fields.check_known()
    texts = [content] if isinstance(content, str) else content
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(f"'{name}' must be a string or a list of strings", param=name)
    return texts


def embedding_answer(vectors: list[list[float]]) -> list[dict]:
    """llama-server's `/embedding` answer for pooled embeddings: one object per input."""
    return [{"index": i, "embedding": [vector]} for i, vector in enumerate(vectors)]


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


def _samplers(fields: Fields) -> tuple[str, ...]:
    """llama.cpp's `samplers` (default: the ones we run); an unknown name is refused."""
    names = fields.data.get("samplers")
    fields.accept("samplers")
    if names is None:
        return RUN_SAMPLERS
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError("'samplers' must be a list of strings", param="samplers")
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise RequestError(f"'samplers': unknown sampler '{unknown[0]}'", param="samplers")
    return tuple(names)


def _run_only(sampling: SamplingParams, samplers: tuple[str, ...]) -> SamplingParams:
    """As llama.cpp does, a sampler left out of `samplers` is not run (no temperature:
    sampling at temperature 1)."""
    return dataclasses.replace(
        sampling,
        top_k=sampling.top_k if "top_k" in samplers else None,
        top_p=sampling.top_p if "top_p" in samplers else None,
        temperature=sampling.temperature if "temperature" in samplers else 1.0,
    )


def _probability(choice: TokenChoice) -> dict:
    """One entry of llama.cpp's `completion_probabilities`."""
    return {
        **_token(choice),
        "top_logprobs": [_token(alternative) for alternative in choice.top],
    }


def _token(choice: TokenChoice) -> dict:
    return {
        "id": choice.id,
        "token": choice.text,
        "bytes": list(choice.bytes),
        "logprob": choice.logprob,
    }
