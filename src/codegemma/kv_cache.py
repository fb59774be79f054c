"""Pre-allocated key/value cache shared by all layers of one batch of sequences."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, written in place as tokens are processed.

    All rows of the batch share one fill level (`length`); rows that started shorter are
    left-padded by the caller, which masks the padding slots out of attention.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        capacity: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, batch_size, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, KV, S, hd)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, KV, S, hd)
        self.length = 0

    @property
    def capacity(self) -> int:
        """How many token slots each row holds."""
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def write(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, KV, T, hd) at slots [start, start+T); return the layer's filled slots."""
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} slots needed, capacity {self.capacity}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (keeps a shared prefix for reuse)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drops finished sequences from a batch)."""
        self.keys = self.keys.index_select(1, rows)
        self.values = self.values.index_select(1, rows)
