"""What the model's owner hands back to the routes: events of a running request, its `Result`,
snapshots of running sequences and embeddings. Adapters read these, never the scheduler, so
any backend (the local scheduler, a remote replica) that produces them serves every route."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from codegemma.generation import TokenLogprob
from codegemma.serving.requests import GenerationRequest
from codegemma.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenChoice:
    """A token as clients see it, with its log-probability (log_softmax of the raw logits)."""

    id: int
    text: str  # its text ("" for a lone byte of a multi-byte character)
    bytes: bytes  # its UTF-8 bytes
    logprob: float
    top: tuple[TokenChoice, ...] = ()  # the most likely tokens at its step, most likely first


@dataclasses.dataclass
class Result:
    """The outcome of one request (one candidate), with the figures every wire format reports."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled" (superseded, or its client left)
    stop_type: str  # llama.cpp's: "eos" (stop token), "word" (stop string), "limit", "none"
    stopping_word: str  # the stop string that ended it, else ""
    prompt_tokens: int  # tokens in the prompt, BOS included
    cached_tokens: int  # prompt tokens whose keys and values were reused from the cache
    completion_tokens: int  # tokens generated, a stop token included
    queue_ms: float  # waiting for the model
    prompt_ms: float  # evaluating the prompt's uncached tokens, to the first new token
    generation_ms: float  # from the first new token to the end
    truncated_tokens: int  # prompt tokens left out to fit or to start at a stable line
    dropped_files: int = 0  # context files (llama.cpp `input_extra` chunks) left out to fit
    dropped_file_tokens: int = 0  # their tokens
    retrieval_ms: float = 0.0  # choosing repository context for the prompt (serve --repo)
    drafted_tokens: int = 0  # tokens drafted from the text and checked (speculation)
    accepted_tokens: int = 0  # of those, the ones kept
    index: int = 0  # which of the request's candidates
    token_ids: tuple[int, ...] = ()  # generated ids, a stop token excluded
    logprobs: tuple[TokenChoice, ...] | None = None  # per generated token, when asked

    @property
    def evaluated_tokens(self) -> int:
        """Prompt tokens computed for this request (not reused)."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def truncated(self) -> bool:
        """Whether any of the prompt was left out (prompt tokens or whole context files)."""
        return self.truncated_tokens > 0 or self.dropped_files > 0


@dataclasses.dataclass(frozen=True)
class Piece:
    """Text released by one candidate."""

    text: str
    index: int = 0  # which of the request's candidates


@dataclasses.dataclass(frozen=True)
class Done:
    """One candidate has ended."""

    result: Result


@dataclasses.dataclass(frozen=True)
class Failed:
    """The request failed inside the server (its other candidates end too)."""

    message: str


Event = Piece | Done | Failed


@dataclasses.dataclass(frozen=True)
class SlotState:
    """One running sequence, as `/slots` shows it (a snapshot: safe to read from any thread)."""

    job: int  # the job's id
    index: int  # which of its request's candidates
    client: str | None  # the key that supersedes (llama.cpp slot, OpenAI user)
    state: str  # "prefill" (computing the prompt) or "decode"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the prefix cache
    computed_tokens: int  # tokens whose keys and values its cache holds now
    generated: int  # tokens generated so far
    request: GenerationRequest


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Embedding vectors (N, D) float32 of N inputs, and each input's token count."""

    vectors: torch.Tensor
    tokens: tuple[int, ...]


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The UTF-8 bytes a token stands for (one byte for a byte-fallback token)."""
    byte = tokenizer.byte_value(token)
    if byte is not None:
        return bytes([byte])
    return tokenizer.id_to_piece(token).replace("\u2581", " ").encode("utf-8")


def token_choices(
    tokenizer: Tokenizer, logprobs: Sequence[TokenLogprob], top: int
) -> tuple[TokenChoice, ...]:
    """`logprobs` as clients see them, with `top` alternatives each."""
    return tuple(
        dataclasses.replace(
            _choice(tokenizer, entry.token_id, entry.logprob),
            top=tuple(_choice(tokenizer, i, lp) for i, lp in entry.top[:top]),
        )
        for entry in logprobs
    )


def _choice(tokenizer: Tokenizer, token: int, logprob: float) -> TokenChoice:
    data = token_bytes(tokenizer, token)
    return TokenChoice(token, data.decode("utf-8", errors="ignore"), data, logprob)
