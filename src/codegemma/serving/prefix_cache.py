"""Recent sequences' KV caches, found again by the longest token prefix they share with a prompt.

An editor sends a new request on nearly every keystroke, and consecutive prompts share almost
all of their tokens. Keeping each finished sequence's cache and starting the next request from
the longest shared prefix turns a full prompt evaluation into a few tokens of work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from codegemma.kv_cache import KVCache


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items `a` and `b` share (bisection over slice comparisons, C speed)."""
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low] holds throughout
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclasses.dataclass
class _Entry:
    ids: list[int]  # the tokens whose keys and values `cache` holds (len(ids) == cache.length)
    cache: KVCache

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes


class PrefixCache:
    """An LRU of single-sequence KV caches keyed by the token ids they hold.

    `acquire` hands a request a cache already holding the longest prefix of its prompt that any
    entry shares; `release` takes a cache back when the request ends (finished, cancelled or
    superseded: its prompt evaluation is still worth keeping). A request that continues an
    entry's own line of work (it shares at least half of the entry) takes the entry over and
    truncates it in place; one that shares less gets a copy of the shared slots, leaving the
    entry for the client it belongs to. Entries are evicted least recently used first once
    their memory passes `budget_bytes`.
    """

    def __init__(
        self,
        new_cache: Callable[[int], KVCache],
        *,
        max_capacity: int,
        budget_bytes: int,
        grain: int = 512,
    ) -> None:
        self._new_cache = new_cache  # capacity -> an empty one-row cache
        self.max_capacity = max_capacity  # the model's context length
        self.budget_bytes = budget_bytes
        self.grain = grain  # capacities are rounded up to this, so prompts can grow in place
        self._entries: list[_Entry] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries)

    def acquire(self, prompt: Sequence[int], needed: int) -> tuple[KVCache, int]:
        """A cache of capacity >= `needed` holding `prompt[:n]`, and n (0 when nothing matched)."""
        needed = min(needed, self.max_capacity)
        best, shared = None, 0
        for entry in self._entries:
            length = common_prefix_length(entry.ids, prompt)
            if length > shared:
                best, shared = entry, length
        if best is None:
            return self.new(needed), 0
        takes_over = 2 * shared >= len(best.ids)
        if takes_over:
            self._entries.remove(best)
            if best.cache.capacity >= needed:
                best.cache.truncate(shared)
                return best.cache, shared
        cache = self.new(needed)
        cache.copy_prefix(best.cache, shared)
        return cache, shared

    def release(self, ids: Sequence[int], cache: KVCache) -> None:
        """Keep `cache`, which holds the keys and values of `ids`, as the most recent entry."""
        ids = list(ids)
        if len(ids) != cache.length:
            raise ValueError(f"{len(ids)} ids for a cache holding {cache.length} tokens")
        if not ids:
            return
        # An entry whose tokens all start this one is now useless: this one answers its lookups.
        self._entries = [
            entry
            for entry in self._entries
            if common_prefix_length(entry.ids, ids) < len(entry.ids)
        ]
        self._entries.append(_Entry(ids, cache))
        while self._entries and self.nbytes > self.budget_bytes:
            self._entries.pop(0)

    def clear(self) -> None:
        self._entries.clear()

    def new(self, needed: int) -> KVCache:
        """An empty cache of capacity >= `needed` (rounded up to the grain, within the context)."""
        capacity = min(self.max_capacity, -(-needed // self.grain) * self.grain)
        return self._new_cache(max(capacity, 1))
