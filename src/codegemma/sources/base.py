"""What every source loader returns, and turning the arrays their readers give into tensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from codegemma.config import GemmaConfig
from codegemma.quant.blocks import Int4Blocks, Int8Blocks

Weight = torch.Tensor | Int8Blocks | Int4Blocks


@dataclasses.dataclass
class SourceCheckpoint:
    """A checkpoint read from another system's files, in the engine's names."""

    config: GemmaConfig  # vocab_size is the embedding's row count
    state: dict[str, Weight]  # Hugging Face names -> tensors or block-quantized weights
    tokenizer_file: Path  # a SentencePiece model (.model / .spm) or a tokenizer.json
    notes: list[str]  # how the files were read, for the user


def tensor_from_array(array: np.ndarray, bfloat16: bool = False) -> torch.Tensor:
    """A torch tensor sharing the array's memory. bfloat16 arrays (ml_dtypes' type, or 2-byte
    values the caller knows to be bfloat16) come through their uint16 bit patterns."""
    if array.dtype.name == "bfloat16" or (bfloat16 and array.dtype.itemsize == 2):
        return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def float_dtype(state: dict[str, Weight]) -> torch.dtype | None:
    """The one dtype of the 2-D float weights, or None when they are mixed or quantized."""
    kinds = {
        w.dtype if isinstance(w, torch.Tensor) else None
        for w in state.values()
        if len(w.shape) == 2
    }
    return kinds.pop() if len(kinds) == 1 else None
