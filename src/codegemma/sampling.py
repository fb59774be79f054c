"""Choosing the next token from logits: small pure functions over (B, V) float tensors."""

from __future__ import annotations

import dataclasses

import torch

from codegemma.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked. temperature 0 means greedy (argmax)."""

    temperature: float = 0.0  # 0 = greedy; >0 divides the logits before softmax
    top_k: int | None = None  # keep only the k most likely tokens (None or 0 = all)
    top_p: float | None = None  # keep the smallest set whose probability reaches p (None = all)
    seed: int | None = None  # seeds the sampler; the same seed gives the same text

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 100:
            raise InvalidRequestError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise InvalidRequestError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.top_p is not None and (
            not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1
        ):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with everything below the k-th largest value per row set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits restricted to the smallest most-likely set whose probability mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always stays (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution (B, V) sampling draws from, after temperature, top-k and top-p."""
    scaled = logits.float() / params.temperature
    if params.top_k:
        scaled = keep_top_k(scaled, params.top_k)
    if params.top_p is not None:
        scaled = keep_top_p(scaled, params.top_p)
    return scaled.softmax(dim=-1)


def pick_tokens(
    logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Next token id per row (B,), one generator per row so each row's draws are its own."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, params)
    picks = [
        torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, generators, strict=True)
    ]
    return torch.cat(picks)


def make_generators(params: SamplingParams, rows: int) -> list[torch.Generator | None]:
    """Per-row generators: each row seeded with `seed`, so row i samples as if it ran alone."""
    if params.greedy or params.seed is None:
        return [None] * rows
    return [torch.Generator().manual_seed(params.seed) for _ in range(rows)]
