"""Block-quantized weight formats shared by the engine, GGUF (Q8_0 / Q4_0) and Jlama (I8 / Q4).

Blocks of 32 consecutive values run along each row (the input dimension) with one scale each:
- int8: value = q * scale, q in [-127, 127]                       (GGUF Q8_0, Jlama I8)
- int4: value = (nibble - 8) * scale; in each block's 16 bytes, byte j holds element j in its
  low nibble and element j + 16 in its high nibble                  (GGUF Q4_0, Jlama Q4)
Files in these layouts map onto the dataclasses below without changing a byte.
"""

from __future__ import annotations

import dataclasses

import torch

BLOCK = 32  # values per scale, along the input dimension


@dataclasses.dataclass
class Int8Blocks:
    """An [out, in] weight as int8 values with one scale per 32 inputs."""

    qs: torch.Tensor  # int8 (out, in)
    scales: torch.Tensor  # float16 / bfloat16 / float32 (out, in // 32)

    def __post_init__(self) -> None:
        out, inp = self.qs.shape
        _check(self.qs.dtype == torch.int8, "Int8Blocks.qs must be int8")
        _check(inp % BLOCK == 0, f"input width {inp} is not a multiple of {BLOCK}")
        _check(tuple(self.scales.shape) == (out, inp // BLOCK), "Int8Blocks.scales shape")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qs.shape)

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + self.scales.numel() * self.scales.element_size()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) in `dtype`, computed in float32."""
        out, inp = self.qs.shape
        blocks = self.qs.view(out, inp // BLOCK, BLOCK).float()  # (out, nb, 32)
        return (blocks * self.scales.float()[..., None]).view(out, inp).to(dtype)


@dataclasses.dataclass
class Int4Blocks:
    """An [out, in] weight as 4-bit values (offset 8) with one scale per 32 inputs."""

    packed: torch.Tensor  # uint8 (out, in // 2): per block 16 bytes, see the module docstring
    scales: torch.Tensor  # float16 / bfloat16 / float32 (out, in // 32)

    def __post_init__(self) -> None:
        out, half = self.packed.shape
        _check(self.packed.dtype == torch.uint8, "Int4Blocks.packed must be uint8")
        _check((2 * half) % BLOCK == 0, f"input width {2 * half} is not a multiple of {BLOCK}")
        _check(tuple(self.scales.shape) == (out, 2 * half // BLOCK), "Int4Blocks.scales shape")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.packed.shape[1] * 2)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel() * self.scales.element_size()

    def nibbles(self) -> torch.Tensor:
        """The unsigned 4-bit values (out, in) as uint8, in element order."""
        out, inp = self.shape
        blocks = self.packed.view(out, inp // BLOCK, BLOCK // 2)  # (out, nb, 16)
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
    qs = torch.round(blocks * inverse[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Blocks(qs.view(out, inp), scales.to(scale_dtype))


def quantize_int4(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float16) -> Int4Blocks:
    """Round-to-nearest 4-bit blocks with GGUF Q4_0's choice of scale: the value of largest
    magnitude maps to -8, so scale = -max_signed / 8 and the full range [-8, 7] is used."""
    out, inp = _blocked_shape(weight)
    blocks = weight.float().view(out, inp // BLOCK, BLOCK)
    index = blocks.abs().argmax(dim=-1, keepdim=True)
    extreme = blocks.gather(-1, index).squeeze(-1)  # signed value of largest magnitude
    scales = extreme / -8.0  # (out, nb), float32 as ggml computes it
    inverse = torch.where(scales != 0, 1.0 / scales, torch.zeros(()))
    q = torch.clamp(torch.floor(blocks * inverse[..., None] + 8.5), 0, 15).to(torch.uint8)
    low, high = q[..., : BLOCK // 2], q[..., BLOCK // 2 :]
    packed = (low | (high << 4)).view(out, inp // 2)
    return Int4Blocks(packed, scales.to(scale_dtype))


def _blocked_shape(weight: torch.Tensor) -> tuple[int, int]:
    _check(weight.dim() == 2, f"expected a 2-D weight, got shape {list(weight.shape)}")
    out, inp = weight.shape
    _check(inp % BLOCK == 0, f"input width {inp} is not a multiple of {BLOCK}")
    return out, inp


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
