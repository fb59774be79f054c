"""The keys and values of one sequence, every layer, written in place as its tokens are computed."""

from __future__ import annotations

import torch


class KVCache:
    """One sequence's cache: `write` at slots from `length` on, `truncate` to keep a prefix.

    A batch is a list of these (each sequence has its own length and capacity), so sequences
    join and leave a running batch without copying anyone's cache, and a finished sequence's
    cache can be kept for the next request that shares its prefix.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        capacity: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"a KV cache needs at least one slot, not {capacity}")
        shape = (num_layers, num_kv_heads, capacity, head_dim)
        # uninitialised: only slots below `length` are ever read
        self.keys = torch.empty(shape, dtype=dtype, device=device)  # (L, KV, S, hd)
        self.values = torch.empty(shape, dtype=dtype, device=device)  # (L, KV, S, hd)
        self.length = 0

    @property
    def capacity(self) -> int:
        """How many token slots the cache holds."""
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def write(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (KV, T, hd) at slots [start, start+T); return the layer's filled slots
        (KV, start+T, hd) each."""
        end = start + k.shape[1]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} slots needed, capacity {self.capacity}")
        self.keys[layer, :, start:end] = k
        self.values[layer, :, start:end] = v
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (keeps a shared prefix for reuse)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def copy_prefix(self, source: KVCache, length: int) -> None:
        """Hold the first `length` slots of `source` (same layers, heads and dtype)."""
        if length > min(source.length, self.capacity):
            raise ValueError(f"cannot copy {length} slots of a cache of length {source.length}")
        self.keys[:, :, :length] = source.keys[:, :, :length]
        self.values[:, :, :length] = source.values[:, :, :length]
        self.length = length
