"""Turning a loaded model's weights into block-quantized ones, laid out for their readers."""

from __future__ import annotations

import torch
from torch import nn

from codegemma.model import Embedding, GemmaForCausalLM, Linear
from codegemma.quant.blocks import Int4Blocks, Int8Blocks, quantize_int4, quantize_int8
from codegemma.quant.formats import format_name
from codegemma.quant.mapped_pages import FileMappings
from codegemma.quant.row_groups import RowGroups, can_group, regroup

BITS = {"int8": 8, "int4": 4}
_CHUNK_ROWS = 4096  # quantize in slices so a 256000-row embedding never widens at once


def quantizable(model: GemmaForCausalLM) -> list[tuple[str, nn.Module]]:
    """The modules whose weights are quantized: every Linear and the (tied) embedding."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (Linear, Embedding))]


def set_weight(module: nn.Module, weight: torch.Tensor | Int8Blocks | Int4Blocks) -> None:
    """Replace a module's weight with a tensor or a quantized weight (not a Parameter)."""
    module._parameters.pop("weight", None)
    module.__dict__.pop("weight", None)
    if isinstance(weight, torch.Tensor):
        module.weight = nn.Parameter(weight, requires_grad=False)
    else:
        module.__dict__["weight"] = weight


def quantize_weight(weight: torch.Tensor, bits: int) -> Int8Blocks | Int4Blocks:
    """Block-quantize a 2-D weight slice by slice."""
    quantize = quantize_int8 if bits == 8 else quantize_int4
    parts = [quantize(weight[i : i + _CHUNK_ROWS]) for i in range(0, weight.shape[0], _CHUNK_ROWS)]
    if len(parts) == 1:
        return parts[0]
    scales = torch.cat([p.scales for p in parts])
    if bits == 8:
        return Int8Blocks(torch.cat([p.qs for p in parts]), scales)
    return Int4Blocks(torch.cat([p.packed for p in parts]), scales)


def quantize_model(model: GemmaForCausalLM, mode: str, progress=None) -> None:
    """Quantize every Linear and the embedding in place to `mode` ("int8" or "int4").

    In int4 mode the tied embedding / LM head stays at 8 bits: it decides every logit, and
    llama.cpp's own 4-bit files keep that tensor at 6-8 bits for the same reason.
    """
    if mode not in BITS:
        raise ValueError(f"quantize must be one of {', '.join(BITS)}, got {mode!r}")
    for _, module in quantizable(model):
        bits = 8 if isinstance(module, Embedding) else BITS[mode]
        if isinstance(module.weight, torch.Tensor):
            set_weight(module, quantize_weight(module.weight.detach(), bits))
        if progress is not None:
            progress.update(1)


def prepare_for_kernels(model: GemmaForCausalLM, row_groups: bool, kernels=None) -> int:
    """Lay the quantized weights out for the kernels that will read them; returns how many
    weights were regrouped here.

    With `row_groups` (the native kernels on CPUs with byte dot products), block-quantized
    weights in rows are regrouped 16 rows at a time, on huge pages; pages of file-mapped
    sources are released as they are copied, so memory stays at one copy, and `kernels`
    (NativeKernels) moves the bytes on every thread. Weights already in row groups (read in
    place from a checkpoint of `codegemma quantize`) stay where they are. Without
    `row_groups`, weights in row groups are laid back in rows, which every other path reads.

    bfloat16 weights stay where they are (views of the file): a huge-page copy decodes ~10%
    faster here but costs 1-2 s per GB at every start on the benchmark machine (a virtual
    machine, where memory a process touches for the first time is slow to come), 5-10 s for a
    2B model. The same holds for regrouping at load, which is why quantized checkpoints store
    the row groups."""
    mappings = FileMappings() if row_groups else None
    owners: dict[int, list[nn.Module]] = {}  # modules sharing one weight (a tied head)
    weights: dict[int, object] = {}
    for _, module in quantizable(model):
        owners.setdefault(id(module.weight), []).append(module)
        weights[id(module.weight)] = module.weight
    count = 0
    for key, modules in owners.items():
        weight = weights.pop(key)  # the last reference once the modules let go of it
        if row_groups and can_group(weight):
            laid_out = regroup(weight, mappings, kernels)
            count += 1
        elif not row_groups and isinstance(weight, RowGroups):
            laid_out = weight.to_blocks()
        else:
            continue
        for module in modules:
            set_weight(module, laid_out)
    return count


def row_group_count(model: GemmaForCausalLM) -> int:
    """How many distinct weights of `model` are in 16-row groups."""
    return len({id(m.weight) for _, m in quantizable(model) if isinstance(m.weight, RowGroups)})


def weight_bits(model: GemmaForCausalLM) -> str:
    """'int8', 'int4', 'mixed' or the weights' dtype name of the linear layers, for reports."""
    kinds = {format_name(m.weight) for _, m in quantizable(model) if not isinstance(m, Embedding)}
    return kinds.pop() if len(kinds) == 1 else "mixed"
