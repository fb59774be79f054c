"""The formats a layer's weight may take, behind one interface.

A weight is a tensor (bfloat16, float32, float16) or a block-quantized weight: `Int8Blocks` and
`Int4Blocks` keep each row's blocks together (the layouts of GGUF, Jlama and older quantized
checkpoints), `RowGroups` lays 16 rows side by side (the layout the native kernels read). Every
block-quantized format answers `BlockWeight`; code that handles weights asks them what it needs
instead of testing which class they are.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from codegemma.devices import dtype_name


class BlockWeight(Protocol):
    """An [out, in] weight in blocks of 32 inputs with one scale each (see quant/blocks.py)."""

    bits: int  # 8 or 4 bits per value
    scales: torch.Tensor  # float16 / float32, one per block
    STORED_AS: ClassVar[str]  # name of its values tensor in a quantized checkpoint

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) in `dtype`."""
        ...

    def take_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows (an embedding lookup)."""
        ...

    def row_slice(self, start: int, stop: int) -> BlockWeight:
        """Rows [start, stop) as a view, in the same format."""
        ...

    def stored_values(self) -> torch.Tensor:
        """Its values as a quantized checkpoint stores them (`STORED_AS`)."""
        ...


Weight = torch.Tensor | BlockWeight


def is_quantized(weight: Weight) -> bool:
    """True for a block-quantized weight, False for a tensor."""
    return not isinstance(weight, torch.Tensor)


def format_name(weight: Weight) -> str:
    """'int8', 'int4', or the tensor's dtype name ('bfloat16', 'float32', ...), for reports."""
    if is_quantized(weight):
        return f"int{weight.bits}"
    return dtype_name(weight.dtype)


def row_slice(weight: Weight, start: int, stop: int) -> Weight:
    """Rows [start, stop) of any weight, as a view."""
    return weight.row_slice(start, stop) if is_quantized(weight) else weight[start:stop]
