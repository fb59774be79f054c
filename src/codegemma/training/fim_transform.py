"""The fill-in-the-middle transform: one document becomes one PSM, SPM or plain example.

CodeGemma trains on 80-90% FIM examples split 50-50 between the two orders. The layouts are the
ones `codegemma.fim.fim_prompt` builds at inference time, with the middle appended:

    PSM  <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}
    SPM  <|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>{middle}

What follows the middle (a `<|file_separator|>` before the next file, or EOS) is added by the
packing step, and is what teaches the model where a middle ends.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Literal

from codegemma.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codegemma.training.split_points import DEFAULT_KIND_WEIGHTS, Candidates, Span

Mode = Literal["psm", "spm", "plain"]


@dataclasses.dataclass(frozen=True)
class FimOptions:
    """How often and where documents are cut."""

    fim_rate: float = 0.9  # share of documents turned into FIM examples (the rest stay plain)
    spm_rate: float = 0.5  # share of FIM examples in SPM order (the rest PSM)
    splits: Literal["syntax", "random"] = "syntax"  # natural split points, or uniform characters
    kind_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS)
    )  # relative frequency of each kind of middle (see split_points)

    def __post_init__(self) -> None:
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if self.splits not in ("syntax", "random"):
            raise ValueError(f"splits must be 'syntax' or 'random', got {self.splits!r}")
        if any(w < 0 for w in self.kind_weights.values()) or not any(self.kind_weights.values()):
            raise ValueError("kind_weights must be non-negative and not all zero")


@dataclasses.dataclass(frozen=True)
class FimExample:
    """A document cut in three; `prefix + middle + suffix` is the document."""

    prefix: str
    middle: str
    suffix: str
    mode: Mode

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix

    def pieces(self) -> list[tuple[str | None, str]]:
        """The example as (sentinel, text) pairs in training order; sentinel None = no token."""
        if self.mode == "psm":
            return [
                (FIM_PREFIX, self.prefix),
                (FIM_SUFFIX, self.suffix),
                (FIM_MIDDLE, self.middle),
            ]
        if self.mode == "spm":
            return [
                (FIM_SUFFIX, self.suffix),
                (FIM_PREFIX, self.prefix),
                (FIM_MIDDLE, self.middle),
            ]
        return [(None, self.document)]

    def text(self) -> str:
        """The example as one string with the sentinel tokens written out."""
        return "".join((sentinel or "") + body for sentinel, body in self.pieces())


def random_span(length: int, rng: random.Random) -> Span:
    """Two uniform cut points in `[0, length]`, sorted (the middle may be empty)."""
    a, b = rng.randint(0, length), rng.randint(0, length)
    return (a, b) if a <= b else (b, a)


def choose_span(
    length: int,
    candidates: Candidates | None,
    rng: random.Random,
    options: FimOptions,
) -> Span:
    """A middle span: a natural candidate of a randomly drawn kind, or uniform characters."""
    if options.splits == "random" or candidates is None:
        return random_span(length, rng)
    kinds = [k for k, w in options.kind_weights.items() if w > 0 and k in candidates.kinds]
    if "random" in options.kind_weights and options.kind_weights["random"] > 0:
        kinds.append("random")
    if not kinds:
        return random_span(length, rng)
    kind = rng.choices(kinds, weights=[options.kind_weights[k] for k in kinds])[0]
    if kind == "random":
        return random_span(length, rng)
    return rng.choice(candidates.kinds[kind])


def fim_transform(
    text: str,
    rng: random.Random,
    options: FimOptions | None = None,
    candidates: Candidates | None = None,
) -> FimExample:
    """Cut `text` into a FIM example (or leave it plain) as `options` say.

    `candidates` are natural middles of `text` (see `split_points.candidates_for`); without
    them the cut points are uniform random characters.
    """
    options = options or FimOptions()
    if rng.random() >= options.fim_rate:
        return FimExample(text, "", "", "plain")
    start, end = choose_span(len(text), candidates, rng, options)
    mode: Mode = "spm" if rng.random() < options.spm_rate else "psm"
    return FimExample(text[:start], text[start:end], text[end:], mode)
