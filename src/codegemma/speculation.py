"""Drafting tokens from the text itself (prompt lookup, n-gram speculation), and the rule that
keeps sampling exact when drafted tokens are checked.

Code completion often types again what is already there: a renamed call, a mirrored branch, a
test that repeats its subject. When the last few tokens occurred earlier in the prompt or in
the answer so far, the tokens that followed them then are a cheap guess at what comes next.
The engine checks the guesses in the same forward pass as the next token (a decode step reads
every weight once for all its rows), keeps the ones the model would have produced itself, and
so never changes the output: greedy decoding gives the same tokens, sampling the same
distribution.
"""

from __future__ import annotations

import torch


class NgramDrafter:
    """The latest earlier occurrence of every n-gram (n = `longest` down to `shortest`) of a
    growing token list, found in constant time per token."""

    def __init__(self, ids: list[int], *, longest: int = 3, shortest: int = 2) -> None:
        if not 1 <= shortest <= longest:
            raise ValueError("n-gram lengths must satisfy 1 <= shortest <= longest")
        self.longest, self.shortest = longest, shortest
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest copy ends
        self._ids: list[int] = []
        self._pending: dict[tuple[int, ...], int] = {}  # the newest copies, not yet "earlier"
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        """Take the next token of the text."""
        self._seen.update(self._pending)
        self._ids.append(token)
        end = len(self._ids)
        self._pending = {
            tuple(self._ids[end - n :]): end
            for n in range(self.shortest, self.longest + 1)
            if end >= n
        }

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest n-gram ending the text the last time
        it occurred (none when no such n-gram occurred before)."""
        if limit < 1:
            return []
        end = len(self._ids)
        for n in range(self.longest, self.shortest - 1, -1):
            if end < n:
                continue
            at = self._seen.get(tuple(self._ids[end - n :]))
            if at is not None:
                return self._ids[at : at + limit]
        return []


def accept_or_replace(
    probs: torch.Tensor, drafted: int, generator: torch.Generator | None
) -> tuple[int, bool]:
    """Sample from `probs` (V,) given a drafted token: the draft is kept with probability
    probs[drafted], else a token is drawn from probs without it. Either way the token has
    exactly the distribution `probs` (the speculative sampling rule for a draft that proposes
    one token with certainty). Returns (token, whether the draft was kept)."""
    keep = float(probs[drafted])
    if float(torch.rand((), generator=generator)) < keep:
        return drafted, True
    rest = probs.clone()
    rest[drafted] = 0.0
    if float(rest.sum()) <= 0.0:  # all the mass was on the draft (rounding): keep it
        return drafted, True
    return int(torch.multinomial(rest, 1, generator=generator)), False
