"""Keras and Flax store Gemma's projections as einsum kernels; the engine wants [out, in].

Both libraries use the same layouts (N query heads, K key/value heads, D hidden, H head_dim,
F feed-forward width): query (N, D, H), key / value (K, D, H), attention output (N, H, D),
dense kernels (in, out). Head n's block of rows in q_proj is rows n*H .. n*H+H-1, as in Hugging
Face's layout, so no RoPE permutation is needed (all three use the half-split convention).
"""

from __future__ import annotations

import torch


def heads_in(kernel: torch.Tensor) -> torch.Tensor:
    """(N, D, H) projection into heads -> [N*H, D]."""
    heads, hidden, head_dim = kernel.shape
    return kernel.permute(0, 2, 1).reshape(heads * head_dim, hidden).contiguous()


def heads_out(kernel: torch.Tensor) -> torch.Tensor:
    """(N, H, D) projection out of heads -> [D, N*H]."""
    heads, head_dim, hidden = kernel.shape
    return kernel.reshape(heads * head_dim, hidden).t().contiguous()


def dense(kernel: torch.Tensor) -> torch.Tensor:
    """(in, out) kernel -> [out, in]."""
    return kernel.t().contiguous()


def same(tensor: torch.Tensor) -> torch.Tensor:
    """Norm scales and the embedding (V, D): stored as the engine stores them."""
    return tensor


LAYOUTS = {"heads_in": heads_in, "heads_out": heads_out, "dense": dense, "same": same}
