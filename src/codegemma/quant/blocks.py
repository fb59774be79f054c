"""Block-quantized weight formats shared by the engine, GGUF (Q8_0 / Q4_0) and Jlama (I8 / Q4).

Blocks of 32 consecutive values run along each row (the input dimension) with one scale each:
- int8: value = q * scale, q in [-127, 127]                       (GGUF Q8_0, Jlama I8)
- int4: value = (nibble - 8) * scale; in each block's 16 bytes, byte j holds element j in its
  low nibble and element j + 16 in its high nibble                  (GGUF Q4_0, Jlama Q4)
Files in these layouts map onto the dataclasses below without changing a byte. The value
tensor may be 2-D (out, in) or, for files that interleave each block's scale with its values
(GGUF), a strided 3-D view (out, in // 32, 32) (int4: (out, in // 32, 16)) of the file.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

BLOCK = 32  # values per scale, along the input dimension
ROWS_PER_CHUNK = 64  # rows quantized together by quantize_int4


@dataclasses.dataclass
class Int8Blocks:
    """An [out, in] weight as int8 values with one scale per 32 inputs."""

    qs: torch.Tensor  # int8 (out, in) or a (out, in // 32, 32) view
    scales: torch.Tensor  # float16 / float32 (out, in // 32)
    bits: ClassVar[int] = 8
    STORED_AS: ClassVar[str] = "qs"  # int8 [out, in] in a quantized checkpoint

    def __post_init__(self) -> None:
        _check(self.qs.dtype == torch.int8, "Int8Blocks.qs must be int8")
        out, inp = self.shape
        _check(self.qs.dim() in (2, 3), "Int8Blocks.qs must be 2-D or 3-D")
        _check(self.qs.dim() == 2 or self.qs.shape[2] == BLOCK, "Int8Blocks.qs blocks of 32")
        _check(inp % BLOCK == 0, f"input width {inp} is not a multiple of {BLOCK}")
        _check(tuple(self.scales.shape) == (out, inp // BLOCK), "Int8Blocks.scales shape")
        _check(self.scales.dtype in (torch.float16, torch.float32), "scales: float16/float32")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.qs.shape[0], self.qs[0].numel())

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + self.scales.numel() * self.scales.element_size()

    @property
    def device(self) -> torch.device:
        return self.qs.device

    def take_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows (an embedding lookup)."""
        return Int8Blocks(self.qs[rows], self.scales[rows]).dequantize()

    def row_slice(self, start: int, stop: int) -> Int8Blocks:
        """Rows [start, stop) as a view."""
        return Int8Blocks(self.qs[start:stop], self.scales[start:stop])

    def stored_values(self) -> torch.Tensor:
        return self.qs.reshape(self.shape).contiguous()

    @classmethod
    def from_stored(cls, values: torch.Tensor, scales: torch.Tensor) -> Int8Blocks:
        return cls(values, scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) in `dtype`, computed in float32."""
        out, inp = self.shape
        blocks = self.qs.reshape(out, inp // BLOCK, BLOCK).float()  # (out, nb, 32)
        return (blocks * self.scales.float()[..., None]).view(out, inp).to(dtype)


@dataclasses.dataclass
class Int4Blocks:
    """An [out, in] weight as 4-bit values (offset 8) with one scale per 32 inputs."""

    packed: torch.Tensor  # uint8 (out, in // 2) or a (out, in // 32, 16) view; see above
    scales: torch.Tensor  # float16 / float32 (out, in // 32)
    bits: ClassVar[int] = 4
    STORED_AS: ClassVar[str] = "q4"  # uint8 [out, in / 2] in a quantized checkpoint

    def __post_init__(self) -> None:
        _check(self.packed.dtype == torch.uint8, "Int4Blocks.packed must be uint8")
        out, inp = self.shape
        _check(self.packed.dim() in (2, 3), "Int4Blocks.packed must be 2-D or 3-D")
        _check(self.packed.dim() == 2 or self.packed.shape[2] == BLOCK // 2, "Int4 blocks of 16")
        _check(inp % BLOCK == 0, f"input width {inp} is not a multiple of {BLOCK}")
        _check(tuple(self.scales.shape) == (out, inp // BLOCK), "Int4Blocks.scales shape")
        _check(self.scales.dtype in (torch.float16, torch.float32), "scales: float16/float32")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.packed[0].numel() * 2)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel() * self.scales.element_size()

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def take_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows (an embedding lookup)."""
        return Int4Blocks(self.packed[rows], self.scales[rows]).dequantize()

    def row_slice(self, start: int, stop: int) -> Int4Blocks:
        """Rows [start, stop) as a view."""
        return Int4Blocks(self.packed[start:stop], self.scales[start:stop])

    def stored_values(self) -> torch.Tensor:
        return self.packed.reshape(self.shape[0], -1).contiguous()

    @classmethod
    def from_stored(cls, values: torch.Tensor, scales: torch.Tensor) -> Int4Blocks:
        return cls(values, scales)

    def nibbles(self) -> torch.Tensor:
        """The unsigned 4-bit values (out, in) as uint8, in element order."""
        out, inp = self.shape
        blocks = self.packed.reshape(out, inp // BLOCK, BLOCK // 2)  # (out, nb, 16)
        low, high = blocks & 0x0F, blocks >> 4
        return torch.cat([low, high], dim=-1).view(out, inp)  # low = elems 0..15, high = 16..31

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) in `dtype`, computed in float32."""
        out, inp = self.shape
        values = (self.nibbles().float() - 8.0).view(out, inp // BLOCK, BLOCK)
        return (values * self.scales.float()[..., None]).view(out, inp).to(dtype)


QuantizedWeight = Int8Blocks | Int4Blocks


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float16) -> Int8Blocks:
    """Round-to-nearest int8 blocks: scale = max|w| / 127 per block (as GGUF Q8_0 does)."""
    out, inp = _blocked_shape(weight)
    blocks = weight.float().view(out, inp // BLOCK, BLOCK)
    scales = blocks.abs().amax(dim=-1) / 127.0  # (out, nb), float32 as ggml computes it
    inverse = torch.where(scales > 0, 1.0 / scales, torch.zeros(()))
    qs = _round_half_away(blocks * inverse[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Blocks(qs.view(out, inp), scales.to(scale_dtype))


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    """C's roundf (ties away from zero), which ggml uses; torch.round ties to even."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def quantize_int4(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float16) -> Int4Blocks:
    """4-bit blocks in GGUF Q4_0's layout, with the scale of each block chosen to minimise the
    squared error among candidates around Q4_0's own choice (largest magnitude -> -8)."""
    out, inp = _blocked_shape(weight)
    packed = torch.empty(out, inp // 2, dtype=torch.uint8)
    scales = torch.empty(out, inp // BLOCK, dtype=scale_dtype)
    for start in range(0, out, ROWS_PER_CHUNK):  # chunks keep the float32 temporaries in cache
        stop = min(start + ROWS_PER_CHUNK, out)
        packed[start:stop], scales[start:stop] = _quantize_int4_rows(
            weight[start:stop], scale_dtype
        )
    return Int4Blocks(packed, scales)


def _quantize_int4_rows(
    weight: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    out, inp = weight.shape
    blocks = weight.float().view(out, inp // BLOCK, BLOCK)
    index = blocks.abs().argmax(dim=-1, keepdim=True)
    extreme = blocks.gather(-1, index).squeeze(-1) / -8.0  # Q4_0's scale, float32 (out, nb)
    best_scale, best_q = extreme, _nibbles(blocks, extreme)
    best_error = _error(blocks, best_q, best_scale.to(scale_dtype).float())
    for step in range(-6, 7):  # factors 0.82 .. 1.18 of Q4_0's scale
        scale = extreme * (1.0 + 0.03 * step)
        q = _nibbles(blocks, scale)
        error = _error(blocks, q, scale.to(scale_dtype).float())
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        best_q = torch.where(better[..., None], q, best_q)
    low, high = best_q[..., : BLOCK // 2], best_q[..., BLOCK // 2 :]
    packed = (low | (high << 4)).view(out, inp // 2)
    return packed, best_scale.to(scale_dtype)


def _nibbles(blocks: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q4_0's rounding of blocks (out, nb, 32) at the given scales, as uint8 in [0, 15]."""
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros(()))
    return torch.clamp(torch.floor(blocks * inverse[..., None] + 8.5), 0, 15).to(torch.uint8)


def _error(blocks: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return ((q.float() - 8.0) * scale[..., None] - blocks).pow(2).sum(dim=-1)


def _blocked_shape(weight: torch.Tensor) -> tuple[int, int]:
    _check(weight.dim() == 2, f"expected a 2-D weight, got shape {list(weight.shape)}")
    out, inp = weight.shape
    _check(inp % BLOCK == 0, f"input width {inp} is not a multiple of {BLOCK}")
    return out, inp


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
