"""ggml block formats in torch: dequantization of every type the loader accepts, and zero-copy
views of Q8_0 / Q4_0 as the engine's `Int8Blocks` / `Int4Blocks`.

Each dequantizer takes the raw bytes of whole blocks, a uint8 tensor (n, type_size), and returns
float32 values (n, block_size). The arithmetic is done in float32 in the same order as ggml's
reference (`dequantize_row_*`), so results are bit-identical to it. Layouts, per block:

  Q8_0  d:f16, q:int8[32]                         x = d*q
  Q4_0  d:f16, qs[16]                              x = d*(nibble-8)
  Q4_1  d:f16, m:f16, qs[16]                       x = d*nibble + m
  Q5_0  d:f16, qh[4], qs[16]                       x = d*(nibble | highbit<<4 - 16)
  Q5_1  d:f16, m:f16, qh[4], qs[16]                x = d*(nibble | highbit<<4) + m
  Q4_K  d:f16, dmin:f16, scales[12], qs[128]       8 sub-blocks of 32: x = d*sc*q - dmin*mn
  Q5_K  d:f16, dmin:f16, scales[12], qh[32], qs[128]
  Q6_K  ql[128], qh[64], scales:int8[16], d:f16    16 sub-blocks of 16: x = d*sc*(q-32)

In the 32-value types, byte j of qs holds element j (low nibble) and j+16 (high nibble), and
bit i of the little-endian qh word is the fifth bit of element i. In the K types each group of
32 nibble bytes holds two sub-blocks (low nibbles first), Q5_K's qh byte j holds bit s of
element j of sub-block s, and the 6-bit scales/mins of the 8 sub-blocks are packed in 12 bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from codegemma.gguf.ggml_types import GGMLType
from codegemma.gguf.reader import GGUFError
from codegemma.quant.blocks import Int4Blocks, Int8Blocks


def _shifts(*amounts: int) -> torch.Tensor:
    """Shift amounts as a (len, 1) uint8 column, to broadcast over a trailing byte axis."""
    return torch.tensor(amounts, dtype=torch.uint8).view(-1, 1)


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 at byte `at` of each block, as float32 (n, 1)."""
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor, group: int) -> torch.Tensor:
    """Split (n, k*group) bytes into (n, k, 2, group) nibbles: low nibbles, then high ones."""
    grouped = packed.unflatten(-1, (-1, 1, group))
    return (grouped >> _shifts(0, 4)) & 0x0F


def _low_bits(qh: torch.Tensor) -> torch.Tensor:
    """The 32 bits of 4 little-endian bytes (n, 4) as (n, 32), bit i of the word at i."""
    return ((qh.unsqueeze(-1) >> _shifts(*range(8)).view(8)) & 1).flatten(1)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].contiguous().view(torch.int8).float() * _f16(blocks, 0)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 2:], 16).flatten(1).float() - 8
    return _f16(blocks, 0) * q


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 4:], 16).flatten(1).float()
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 6:], 16).flatten(1) | (_low_bits(blocks[:, 2:6]) << 4)
    return _f16(blocks, 0) * (q.float() - 16)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 8:], 16).flatten(1) | (_low_bits(blocks[:, 4:8]) << 4)
    return _f16(blocks, 0) * q.float() + _f16(blocks, 2)


def k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins (n, 8) of Q4_K / Q5_K from their 12 packed bytes.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; sub-blocks 4-7 take
    their low 4 bits from bytes 8-11 (scale: low nibble, min: high nibble) and their top 2
    bits from the top 2 bits of bytes 0-3 (scale) and 4-7 (min).
    """
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat((first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)), dim=1)
    mins = torch.cat((second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)), dim=1)
    return scales, mins


def _k_affine(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x = (d*scale)*q - (dmin*min) for the 8 sub-blocks of Q4_K / Q5_K; q is (n, 8, 32)."""
    scales, mins = k_scales_mins(blocks[:, 4:16])
    step = (_f16(blocks, 0) * scales.float()).unsqueeze(-1)  # (n, 8, 1)
    offset = (_f16(blocks, 2) * mins.float()).unsqueeze(-1)
    return (step * q.float() - offset).flatten(1)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 16:144], 32).flatten(1, 2)  # (n, 8, 32)
    return _k_affine(blocks, q)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    low = _nibbles(blocks[:, 48:176], 32).flatten(1, 2)  # (n, 8, 32)
    high = (blocks[:, 16:48].unsqueeze(1) >> _shifts(*range(8))) & 1  # (n, 8, 32)
    return _k_affine(blocks, low | (high << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    low = _nibbles(blocks[:, 0:128], 64).reshape(n, 8, 32)
    high = (blocks[:, 128:192].unflatten(1, (2, 1, 32)) >> _shifts(0, 2, 4, 6)) & 0x03
    q = (low | (high.reshape(n, 8, 32) << 4)).float() - 32
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16)
    step = (_f16(blocks, 208) * scales).unsqueeze(-1)  # (n, 16, 1)
    return (step * q.view(n, 16, 16)).flatten(1)


def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def _f16_values(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": _f32,
    "F16": _f16_values,
    "BF16": _bf16,
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def dequantize(raw: torch.Tensor, ggml_type: GGMLType) -> torch.Tensor:
    """Float32 values (rows, width) of raw rows (rows, row_bytes) of the given type."""
    function = DEQUANTIZERS.get(ggml_type.name)
    if function is None:
        raise GGUFError(
            f"tensor type {ggml_type.name} is not supported; supported: {', '.join(DEQUANTIZERS)}"
        )
    rows, row_bytes = raw.shape
    if row_bytes % ggml_type.type_size:
        raise GGUFError(f"{row_bytes}-byte rows are not whole {ggml_type.name} blocks")
    blocks = raw.reshape(-1, ggml_type.type_size)
    return function(blocks).reshape(rows, -1)


def q8_0_view(raw: torch.Tensor) -> Int8Blocks:
    """Q8_0 rows (rows, nb*34) as Int8Blocks whose tensors are strided views of `raw`.

    Each 34-byte block is a float16 scale followed by 32 int8 values, so the values are a
    (rows, nb, 32) view at byte 2 of every block and the scales a (rows, nb) float16 view at
    byte 0: nothing is copied, and the engine reads the file's pages directly.
    """
    blocks = raw.view(raw.shape[0], -1, 34)
    return Int8Blocks(blocks[..., 2:].view(torch.int8), _scale_view(blocks))


def q4_0_view(raw: torch.Tensor) -> Int4Blocks:
    """Q4_0 rows (rows, nb*18) as Int4Blocks of strided views (same nibble order as Q4_0)."""
    blocks = raw.view(raw.shape[0], -1, 18)
    return Int4Blocks(blocks[..., 2:], _scale_view(blocks))


def _scale_view(blocks: torch.Tensor) -> torch.Tensor:
    # Reinterpreting the first two bytes of each block as float16 keeps the view: every block
    # starts at an even byte (34 and 18 are even; tensor data is 32-byte aligned).
    return blocks[..., :2].view(torch.float16).squeeze(-1)
