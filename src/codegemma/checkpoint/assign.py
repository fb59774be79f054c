"""The one place where loaded tensors become model parameters, every key and shape checked."""

from __future__ import annotations

import torch
from torch import nn

from codegemma.errors import CheckpointError
from codegemma.model import Embedding, Linear
from codegemma.quant.apply import set_weight

# Tensors a checkpoint may carry that the model does not need: the LM head is tied to the
# embedding in Gemma v1; exporters may still write a copy (it is shape-checked, then dropped).
OPTIONAL_TENSORS = ("lm_head.weight",)


def assign_weights(
    model: nn.Module, state: dict[str, object], dtype: torch.dtype, device: torch.device
) -> None:
    """Replace every parameter of `model` (which may live on the meta device) with `state`'s.

    Values are tensors or, for linear layers and the embedding, block-quantized weights
    (`Int8Blocks` / `Int4Blocks`, kept as they are). Missing, unexpected and mis-shaped tensors
    raise a CheckpointError naming them. A tensor that already has the right dtype and device
    is used as it is (no copy), so memory-mapped weights stay shared with the page cache.
    """
    expected = {name: p.shape for name, p in model.named_parameters()}
    extra = sorted(set(state) - set(expected) - set(OPTIONAL_TENSORS))
    missing = sorted(set(expected) - set(state))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensor(s): {_listing(missing)}")
        if extra:
            parts.append(f"unexpected tensor(s): {_listing(extra)}")
        raise CheckpointError("checkpoint does not match the model config; " + "; ".join(parts))
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {list(state[name].shape)}, "
                f"the config expects {list(shape)}"
            )
    embed_shape = expected.get("model.embed_tokens.weight")
    for name in OPTIONAL_TENSORS:
        if (
            name in state
            and embed_shape is not None
            and tuple(state[name].shape) != tuple(embed_shape)
        ):
            raise CheckpointError(
                f"tensor {name!r} has shape {list(state[name].shape)}, expected {list(embed_shape)}"
            )
    for name in expected:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = state[name]
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype)
        elif not isinstance(module, (Linear, Embedding)):
            raise CheckpointError(f"tensor {name!r} cannot be quantized (only linear weights)")
        if attr != "weight":
            raise CheckpointError(f"unexpected parameter {name!r}")
        set_weight(module, value)


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
