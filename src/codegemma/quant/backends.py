"""How linear layers compute: the plain PyTorch path, or the native kernels.

A backend is owned by one engine and attached to that engine's Linear/Embedding modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.quant.native import MAX_ROWS, NativeKernels

Weight = torch.Tensor | Int8Blocks | Int4Blocks


class NativeBackend:
    """Float32 activations; small batches through the C matrix-vector kernels (which read
    bfloat16 or quantized weights directly), long inputs through a float32 GEMM on a
    dequantized copy of one weight at a time (reused scratch memory)."""

    def __init__(self, kernels: NativeKernels, fast_bf16_gemm: bool) -> None:
        self.kernels = kernels
        self.fast_bf16_gemm = fast_bf16_gemm  # CPUs with bf16 matrix units: GEMM in bf16
        self._scratch = torch.empty(0, dtype=torch.float32)

    def linear(self, x: torch.Tensor, weight: Weight) -> torch.Tensor:
        """x (B, T, K) or (rows, K) float32 -> (..., N) float32.

        The path depends only on T (tokens per sequence), never on how many sequences share
        the batch, so a sequence computes the same numbers alone or batched.
        """
        if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
            return F.linear(x, weight)
        if x.dim() == 2 or x.shape[-2] == 1:  # one new token per sequence: decode
            flat = x.reshape(-1, x.shape[-1]).float()
            parts = [
                self.kernels.matvec(flat[i : i + MAX_ROWS], weight)
                for i in range(0, flat.shape[0], MAX_ROWS)
            ]
            return torch.cat(parts).view(*x.shape[:-1], -1)
        if isinstance(weight, torch.Tensor):
            if self.fast_bf16_gemm:
                return F.linear(x.to(weight.dtype), weight).float()
            return F.linear(x, self._widened(weight))
        return F.linear(x, self._dequantized(weight))

    def _buffer(self, shape: tuple[int, int]) -> torch.Tensor:
        size = shape[0] * shape[1]
        if self._scratch.numel() < size:
            self._scratch = torch.empty(size, dtype=torch.float32)
        return self._scratch[:size].view(shape)

    def _widened(self, weight: torch.Tensor) -> torch.Tensor:
        return self._buffer(tuple(weight.shape)).copy_(weight)

    def _dequantized(self, weight: Int8Blocks | Int4Blocks) -> torch.Tensor:
        return self.kernels.dequantize(weight, self._buffer(weight.shape))


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False
