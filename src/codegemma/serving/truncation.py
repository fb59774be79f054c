"""Cutting FIM prompts at stable points, so a cached prefix stays useful from one keystroke
to the next.

A cut that moves with every keystroke (keep the last N tokens, keep the last N characters)
changes the very first tokens of the prompt each time, and nothing cached can be reused. Here
cuts fall only on lines chosen by their content, never by their position, so a chosen line
stays chosen as text scrolls past: `fit_fim_stably` cuts at *anchor lines* (a blank line, or
one whose checksum is 0 modulo `ANCHOR_GRID`) and moves only when it must pass the next one;
`stable_prefix_start` starts a client's sliding window at the line with the smallest checksum
near its beginning.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable

from codegemma.prompt_fitting import fit_fim_by_lines

ANCHOR_GRID = 16  # one non-blank line in this many is an anchor, on average
STABLE_MIN_CHARS = 1024  # shorter prefixes are taken as they are
STABLE_MAX_FRACTION = 0.25  # a stable start drops at most this share of the prefix


def anchor_offsets(text: str, limit: int | None = None) -> list[int]:
    """Offsets of the starts of anchor lines in `text`, up to `limit` (never 0: the first line
    may be partial)."""
    limit = len(text) - 1 if limit is None else limit
    offsets, start = [], text.find("\n") + 1
    while 0 < start <= limit and start < len(text):
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        body = line.strip()
        if not body or zlib.crc32(body.encode("utf-8", "replace")) % ANCHOR_GRID == 0:
            offsets.append(start)
        start = end + 1
    return offsets


def stable_prefix_start(prefix: str) -> int:
    """Where a long prefix should start so that a client's sliding window reuses the cache.

    Clients that send "the last N characters before the cursor" start their prefix at a point
    that moves with every keystroke, usually mid-line. Among the line starts in the first
    quarter of the prefix, this picks the one whose two lines have the smallest checksum (the
    winnowing rule): as the window slides, that line stays the pick until it leaves the window
    or a line with a smaller checksum enters the quarter, on average once every ten lines or so,
    so the prompt's first tokens stay the same across keystrokes. Returns 0 (keep everything)
    for short prefixes.
    """
    if len(prefix) < STABLE_MIN_CHARS:
        return 0
    limit = int(len(prefix) * STABLE_MAX_FRACTION)
    best: tuple[int, int] | None = None  # (checksum, offset)
    start = prefix.find("\n") + 1  # the first line may be partial: never a candidate
    while 0 < start <= limit:
        end = prefix.find("\n", start)
        after = prefix.find("\n", end + 1) if end >= 0 else -1
        if after < 0:
            break
        key = zlib.crc32(prefix[start:after].encode("utf-8", "replace"))
        if best is None or key < best[0]:
            best = (key, start)
        start = end + 1
    return best[1] if best else 0


def fit_fim_stably(
    prefix: str, suffix: str, encode: Callable[[str, str], list[int]], budget: int
) -> tuple[list[int], int]:
    """Token ids of a FIM prompt within `budget`, cutting the prefix only at anchor lines.

    `encode(prefix, suffix)` builds the whole prompt. The suffix first loses whole lines from its
    end while it holds more than a quarter of the budget (its end does not move as the user
    types); then the prefix starts at the earliest anchor after which everything fits. When no
    anchor cut is enough, lines are dropped one by one (`fit_fim_by_lines`). Returns
    (ids, tokens dropped).
    """
    ids = encode(prefix, suffix)
    original = len(ids)
    if len(ids) <= budget:
        return ids, 0
    lines = suffix.splitlines(keepends=True)
    while lines and len(encode("", "".join(lines))) > max(1, budget // 4):
        lines.pop()
    suffix = "".join(lines)
    anchors = [0, *anchor_offsets(prefix)]
    lengths = {0: len(encode(prefix, suffix))}

    def fits(index: int) -> bool:
        cut = anchors[index]
        if cut not in lengths:
            lengths[cut] = len(encode(prefix[cut:], suffix))
        return lengths[cut] <= budget

    # Token counts fall as the cut moves right, so the earliest fitting anchor is a bisection.
    first = bisect.bisect_left(range(len(anchors)), True, key=fits)
    if first < len(anchors):
        ids = encode(prefix[anchors[first] :], suffix)
    else:
        ids, _ = fit_fim_by_lines(prefix, suffix, encode, budget)
    return ids, original - len(ids)
