"""The one internal request type every endpoint is translated into, and checked field access.

Adapters read a peer's JSON through `Fields`, which turns every wrong type or range into a
`RequestError` naming the field, and build a `GenerationRequest`; the scheduler and the
prompt builder never see a wire format. `Fields` also remembers which fields were read, so
that a field nobody read (unknown, or one this server does not implement set to a value that
would change the answer) is refused with a 400 naming it instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from codegemma.fim import FimMode
from codegemma.sampling import SamplingParams


class RequestError(Exception):
    """A request the server refuses: HTTP status, a message for the client, the field at fault."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.kind = kind  # OpenAI-style error type


@dataclasses.dataclass(frozen=True)
class FimInput:
    """Fill in the middle between `prefix` and `suffix`, with other files shown first."""

    prefix: str
    suffix: str
    files: tuple[tuple[str, str], ...] = ()  # (path, content) of repository context files
    path: str | None = None  # the current file's path, shown before it
    mode: FimMode | None = None  # prompt order; None: the server's default


@dataclasses.dataclass(frozen=True)
class TextInput:
    """Continue raw text (BOS is added)."""

    text: str


@dataclasses.dataclass(frozen=True)
class ChatInput:
    """The next assistant turn of a conversation of {role, content} messages."""

    messages: tuple[Mapping[str, str], ...]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What an endpoint asks of the scheduler, whatever its wire format."""

    input: FimInput | TextInput | ChatInput
    max_tokens: int | None = None  # None: until a stop or the end of the context; 0: prefill only
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()  # stop strings, never part of the text
    stream: bool = False
    client: str | None = None  # a newer request with the same key cancels the older one
    cache_prompt: bool = True  # reuse and keep KV caches of shared prompt prefixes
    stable_prefix: bool | None = None  # start long FIM prefixes at an anchor; None: server's
    min_indent: int = 0  # stop at a new line indented less than this (llama.cpp `n_indent`)
    newline_deadline_ms: float = 0.0  # after a newline, stop once this long has passed (0: off)
    ignore_eos: bool = False  # generate through stop tokens (llama.cpp `ignore_eos`)
    truncate: bool = False  # cut a plain or chat prompt too long for the context (oldest first)
    n: int = 1  # candidates (each its own sequence; identical at temperature 0)
    logprobs: int | None = None  # None: off; k: each token's log-probability and k alternatives


_MISSING = object()


class Fields:
    """Checked access to the fields of one JSON object; `where` names it in error messages."""

    def __init__(self, data: object, where: str = "the request body") -> None:
        if not isinstance(data, dict):
            raise RequestError(f"{where} must be a JSON object")
        self.data = data
        self.where = where
        self.read: set[str] = set()  # the fields an adapter has looked at

    def accept(self, *names: str) -> None:
        """Fields accepted as they are, with no effect here (documented per endpoint)."""
        self.read.update(names)

    def unsupported(self, neutral: dict[str, tuple]) -> None:
        """Fields this server does not implement: absent, null or one of their `neutral`
        values (which change nothing) is fine; any other value is refused, naming the field."""
        for name, allowed in neutral.items():
            self.read.add(name)
            value = self.data.get(name)
            if value is not None and not any(_same(value, ok) for ok in allowed):
                raise RequestError(
                    f"'{name}' is not supported by this server (only {_shown(allowed)})",
                    param=name,
                )

    def check_known(self) -> None:
        """Refuse the first field no adapter code read: nothing is silently ignored."""
        for name in self.data:
            if name not in self.read:
                raise RequestError(
                    f"unknown parameter '{name}' in {self.where}: not a field this server "
                    "understands (see the README's list of fields per endpoint)",
                    param=name,
                )

    def _get(self, name: str, default: object) -> object:
        self.read.add(name)
        value = self.data.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise RequestError(f"'{name}' is required", param=name)
            return default
        return value

    def text(self, name: str, default: object = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise RequestError(f"'{name}' must be a string", param=name)
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"'{name}' must be a string", param=name)
        return value

    def optional_boolean(self, name: str) -> bool | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"'{name}' must be true or false", param=name)
        return value

    def fim_mode(self) -> FimMode | None:
        """Our extension field `fim_mode` ("psm" or "spm"); absent: the server's default."""
        mode = self.optional_text("fim_mode")
        if mode not in (None, "psm", "spm"):
            raise RequestError('\'fim_mode\' must be "psm" or "spm"', param="fim_mode")
        return mode

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise RequestError(f"'{name}' must be true or false", param=name)
        return value

    def integer(
        self, name: str, default: int | None, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        value = self._get(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"'{name}' must be an integer", param=name)
        _check_range(name, value, low, high)
        return value

    def number(
        self,
        name: str,
        default: float | None,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> float | None:
        value = self._get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"'{name}' must be a number", param=name)
        _check_range(name, value, low, high)
        return float(value)

    def stop(self, name: str = "stop") -> tuple[str, ...]:
        """A stop string or a list of them (null or absent: none)."""
        value = self._get(name, [])
        if isinstance(value, str):
            return (value,) if value else ()
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise RequestError(f"'{name}' must be a string or a list of strings", param=name)
        if len(value) > 16:
            raise RequestError(f"'{name}' may hold at most 16 strings", param=name)
        return tuple(s for s in value if s)

    def array(self, name: str) -> list:
        value = self._get(name, [])
        if not isinstance(value, list):
            raise RequestError(f"'{name}' must be an array", param=name)
        return value

    def object(self, name: str) -> Fields:
        return Fields(self._get(name, {}), where=f"'{name}'")

    def sampling(
        self, *, temperature: float, top_k: int | None = None, top_p: float | None = None
    ) -> SamplingParams:
        """temperature, top_k, top_p and seed, with the peer's defaults."""
        temp = self.number("temperature", temperature, low=0.0, high=100.0)
        k = self.integer("top_k", top_k, low=0)
        p = self.number("top_p", top_p, low=0.0, high=1.0)
        seed = self.integer("seed", None)
        return SamplingParams(
            temperature=temp,
            top_k=k or None,
            top_p=None if p is None or p >= 1.0 else max(p, 1e-6),
            seed=None if seed is None or seed < 0 else seed,
        )


def _same(value: object, neutral: object) -> bool:
    """JSON equality: a boolean is never a number (JSON true is not 1)."""
    if isinstance(value, bool) != isinstance(neutral, bool):
        return False
    return value == neutral


def _shown(values: tuple) -> str:
    return " or ".join(json.dumps(v) for v in values) if values else "absent or null"


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise RequestError(f"'{name}' must be at least {low}, got {value}", param=name)
    if high is not None and value > high:
        raise RequestError(f"'{name}' must be at most {high}, got {value}", param=name)


def context_files(
    items: list, *, path_key: str, text_key: str, accepted: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    """Repository context as (path, content) pairs from a list of JSON objects (`accepted`:
    other fields a client may send, with no effect)."""
    files = []
    for i, item in enumerate(items):
        fields = Fields(item, where=f"context file {i}")
        files.append((fields.text(path_key, "tmp"), fields.text(text_key)))
        fields.accept(*accepted)
        fields.check_known()
    return tuple(files)


def max_tokens_field(
    fields: Fields, name: str, context_length: int, *, unlimited: tuple[int, ...] = ()
) -> int | None:
    """A token limit: `unlimited` values (the peer's "no limit") give None; the rest must be in
    [0, context length]."""
    value = fields.integer(name, None)
    if value is None or value in unlimited:
        return None
    if value < 0:
        raise RequestError(f"'{name}' must not be negative, got {value}", param=name)
    if value > context_length:
        raise RequestError(
            f"'{name}' is {value} but the model's context window holds {context_length} tokens",
            param=name,
        )
    return value
