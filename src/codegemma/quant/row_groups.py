"""Quantized weights regrouped 16 rows at a time, for the native kernels' decode path.

`Int8Blocks` / `Int4Blocks` keep each row's blocks together (the file layouts). A matrix-vector
product over them reduces every row on its own. `RowGroups` stores, for each group of 16 rows
and each block of 32 inputs, runs of 64 bytes that hold 4 consecutive bytes of all 16 rows, so
one byte dot-product instruction advances 16 rows together (see csrc/cg_groups.h for the exact
byte layout). Values are stored unsigned (int8: q + 128; int4: the nibbles as Q4_0 keeps them,
q + 8); scales (groups, blocks, 16) keep the source's dtype, so the numbers are the source's
exactly.

The regrouping is a pure byte permutation done once when an engine loads a model. When the
source weight is a view of a file mapping, its pages are handed back to the kernel slice by
slice as they are regrouped, so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks
from codegemma.quant.mapped_pages import FileMappings, huge_page_empty

GROUP = 16  # rows regrouped together
RUN_BYTES = 4  # consecutive bytes of one row in a run
_SLICE_ROWS = 1024  # rows regrouped at a time (bounded temporaries, pages released per slice)


@dataclasses.dataclass
class RowGroups:
    """An [out, in] block-quantized weight (out a multiple of 16) in 16-row groups."""

    bits: int  # 8 or 4
    values: torch.Tensor  # uint8 (out / 16, in / 32, runs, 16, 4); runs = 8 (int8) or 4 (int4)
    scales: torch.Tensor  # float16 / float32 (out / 16, in / 32, 16)
    STORED_AS: ClassVar[str] = "groups"  # `values` as they are, in a quantized checkpoint

    def __post_init__(self) -> None:
        _check(self.bits in (8, 4), "RowGroups.bits must be 8 or 4")
        _check(self.values.dtype == torch.uint8, "RowGroups.values must be uint8")
        runs = _runs(self.bits)
        groups, blocks = self.values.shape[:2]
        _check(
            tuple(self.values.shape) == (groups, blocks, runs, GROUP, RUN_BYTES),
            f"RowGroups.values must be (groups, blocks, {runs}, {GROUP}, {RUN_BYTES})",
        )
        _check(self.values.is_contiguous(), "RowGroups.values must be contiguous")
        _check(tuple(self.scales.shape) == (groups, blocks, GROUP), "RowGroups.scales shape")
        _check(self.scales.dtype in (torch.float16, torch.float32), "scales: float16/float32")
        _check(self.scales.is_contiguous(), "RowGroups.scales must be contiguous")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.values.shape[0] * GROUP, self.values.shape[1] * BLOCK)

    @property
    def nbytes(self) -> int:
        return self.values.numel() + self.scales.numel() * self.scales.element_size()

    @property
    def device(self) -> torch.device:
        return self.values.device

    def take_groups(self, start: int, end: int) -> RowGroups:
        """Rows [16 * start, 16 * end) as a RowGroups view."""
        return RowGroups(self.bits, self.values[start:end], self.scales[start:end])

    def row_slice(self, start: int, stop: int) -> RowGroups:
        """The groups that hold rows [start, stop) (whole groups: bounds are multiples of 16
        where callers slice)."""
        return self.take_groups(start // GROUP, -(-stop // GROUP))

    def stored_values(self) -> torch.Tensor:
        return self.values

    @classmethod
    def from_stored(cls, values: torch.Tensor, scales: torch.Tensor) -> RowGroups:
        if values.dim() != 5 or values.shape[2] not in (8, 4):
            shape = list(values.shape)
            raise ValueError(f"row groups must be (groups, blocks, 8 or 4, 16, 4), got {shape}")
        return cls(8 if values.shape[2] == 8 else 4, values, scales)

    def to_blocks(self, rows: torch.Tensor | None = None) -> Int8Blocks | Int4Blocks:
        """The given rows (default all) back in the row-major block layout."""
        out, inp = self.shape
        nb = inp // BLOCK
        rows = torch.arange(out) if rows is None else rows
        group, lane = rows // GROUP, rows % GROUP
        # the two index tensors apart put their dimension first: (R, nb, runs, 4), and only
        # the requested rows' bytes are gathered
        picked = self.values[group, :, :, lane]
        scales = self.scales[group, :, lane] if len(rows) else self.scales.new_empty(0, nb)
        if self.bits == 8:
            qs = (picked.reshape(len(rows), inp) ^ 0x80).view(torch.int8)
            return Int8Blocks(qs, scales.contiguous())
        return Int4Blocks(picked.reshape(len(rows), inp // 2).contiguous(), scales.contiguous())

    def take_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows (an embedding lookup)."""
        return self.to_blocks(rows).dequantize()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) in `dtype`, computed in float32."""
        return self.to_blocks().dequantize(dtype)


def can_group(weight: object) -> bool:
    """True for block-quantized weights whose row count is a multiple of 16."""
    return isinstance(weight, (Int8Blocks, Int4Blocks)) and weight.shape[0] % GROUP == 0


def regroup(
    weight: Int8Blocks | Int4Blocks, mappings: FileMappings | None = None, kernels=None
) -> RowGroups:
    """The weight in 16-row groups. With `mappings`, source pages that belong to a file
    mapping are released after each slice (read again from the file if ever touched). With
    `kernels` (the native kernels' `group_rows`), the bytes move on every thread in C (several
    times faster than PyTorch's strided copy); the bytes are the same."""
    _check(can_group(weight), f"cannot regroup a weight of shape {list(weight.shape)}")
    bits = weight.bits
    out, inp = weight.shape
    nb, runs = inp // BLOCK, _runs(bits)
    values = huge_page_empty((out // GROUP, nb, runs, GROUP, RUN_BYTES), torch.uint8)
    scales = torch.empty(out // GROUP, nb, GROUP, dtype=weight.scales.dtype)
    source = weight.qs.view(torch.uint8) if bits == 8 else weight.packed
    for start in range(0, out, _SLICE_ROWS):
        stop = min(start + _SLICE_ROWS, out)
        g0, g1 = start // GROUP, stop // GROUP
        rows = _as_blocks(source[start:stop], nb)
        if kernels is not None and rows is not None:
            flip = _SIGN_BITS & 0xFFFFFFFF if bits == 8 else 0  # q -> q + 128 in every byte
            kernels.group_rows(rows, values[g0:g1], RUN_BYTES, flip)
            row_scales = weight.scales[start:stop]
            kernels.group_rows(row_scales.unsqueeze(-1), scales[g0:g1], row_scales.element_size())
        else:
            _permute_runs(source[start:stop], values[g0:g1])
            if bits == 8:
                as_words = values[g0:g1].view(torch.int32)
                as_words ^= _SIGN_BITS  # q -> q + 128 in every byte
            scales[g0:g1] = weight.scales[start:stop].reshape(g1 - g0, GROUP, nb).transpose(1, 2)
        if mappings is not None:
            mappings.release(source[start:stop])
            mappings.release(weight.scales[start:stop])
    return RowGroups(bits, values, scales)


def _permute_runs(rows: torch.Tensor, out: torch.Tensor) -> None:
    """rows (16 G, ...) of block bytes -> out (G, nb, runs, 16, 4), moving 4-byte words."""
    groups, nb, runs = out.shape[:3]
    words = _as_words(rows)
    if words is not None:  # 4-byte moves: several times faster than byte moves
        source = words.reshape(groups, GROUP, nb, runs).permute(0, 2, 3, 1)
        out.view(torch.int32).view(groups, nb, runs, GROUP).copy_(source)
    else:
        source = rows.reshape(groups, GROUP, nb, runs, RUN_BYTES).permute(0, 2, 3, 1, 4)
        out.copy_(source)


def _as_blocks(rows: torch.Tensor, blocks: int) -> torch.Tensor | None:
    """Block bytes as (rows, blocks, block bytes) with contiguous blocks, else None."""
    if rows.dim() == 3:
        return rows if rows.stride(2) == 1 else None
    return rows.unflatten(1, (blocks, -1)) if rows.stride(1) == 1 else None


def _as_words(rows: torch.Tensor) -> torch.Tensor | None:
    """The rows as int32 words when they are contiguous and 4-byte aligned, else None."""
    if not rows.is_contiguous() or rows.data_ptr() % 4:
        return None
    return rows.reshape(rows.shape[0], -1).view(torch.int32)


_SIGN_BITS = -0x7F7F7F80  # 0x80808080 as a signed 32-bit integer


def _runs(bits: int) -> int:
    return BLOCK // RUN_BYTES if bits == 8 else BLOCK // 2 // RUN_BYTES


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
