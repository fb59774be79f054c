"""One token per sequence through the whole decoder stack in one C call (decode_step.c).

A decode step through PyTorch runs ~50 small operations per layer (norms, rotary positions,
cache writes, attention, GeGLU, residual adds) around the matrix-vector kernels: ~20 ms per
token on a 2B model, a third of an int4 step. The C step does the same work in float32 with
the same projections, so its logits match the PyTorch path to float32 rounding.
"""

from __future__ import annotations

import operator

import torch

from codegemma.model import RMSNorm
from codegemma.quant.bindings import kernel_header
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.quant.layers import NativeLinear
from codegemma.quant.native import NativeKernels, weight_layout
from codegemma.quant.row_groups import RowGroups

_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")  # cg_layer's fields, in this order
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # the model's module names for them
_MLP = ("gate_proj", "up_proj", "down_proj")


def _struct(name: str):
    """A structure of csrc/cg_kernels.h as ctypes declares it."""
    return kernel_header().structs[name]


def _describe(weight):
    """The C description of a weight (a cg_weight), or None for a kind the C step does not
    read."""
    rows, cols = weight.shape
    if isinstance(weight, RowGroups):
        f32 = int(weight.scales.dtype == torch.float32)
        values, scales = weight.values.data_ptr(), weight.scales.data_ptr()
        return _struct("cg_weight")(
            kernel_header().codes["CG_KIND_GROUPS"] + weight.bits,
            values,
            scales,
            0,
            0,
            0,
            0,
            f32,
            rows,
            cols,
        )
    plain_bf16 = isinstance(weight, torch.Tensor) and weight.dtype == torch.bfloat16
    if not (plain_bf16 and weight.stride(1) == 1) and not isinstance(
        weight, Int8Blocks | Int4Blocks
    ):
        return None
    kind, values, v_row, v_block, scales, s_row, s_block, s_f32 = weight_layout(weight)
    return _struct("cg_weight")(
        kind, values, scales, v_row, v_block, s_row, s_block, s_f32, rows, cols
    )


class DecodeStep:
    """The C decode step for one model, owned by an engine (its Acceleration).

    `serves` says whether a forward pass can take it (one new token per sequence, no
    gradients, plain layers, weights the kernels read, a float32 cache); `run` computes the
    decoder stack in place. The description of the model's weights is built once and rebuilt
    whenever a weight or module is replaced.
    """

    def __init__(self, kernels: NativeKernels) -> None:
        self.kernels = kernels
        self._weights: tuple | None = None  # what the description was built from (kept alive)
        self._layers = None  # ctypes array of cg_layer, or None if some weight is unsupported
        self._norms: list[torch.Tensor] = []  # 1 + norm weights, float32, kept alive
        self._work = torch.empty(0, dtype=torch.float32)

    def serves(self, model, caches) -> bool:
        """True when one new token per cache of `model` may go through `run`: no gradients,
        plain layers, weights the kernels read, float32 caches on the CPU."""
        if torch.is_grad_enabled() or model.activation_dtype != torch.float32:
            return False
        for cache in caches:
            for table in (cache.keys, cache.values):
                if table.dtype != torch.float32 or table.device.type != "cpu":
                    return False
                if not table.is_contiguous():
                    return False
        return self._described(model) is not None

    def run(self, model, x: torch.Tensor, rope, caches, slots) -> torch.Tensor:
        """x (M, D) after every decoder layer; row m's key and value are written to slot
        slots[m] of caches[m] and it attends to that cache's slots [0, slots[m]] (rows may
        share a cache at consecutive slots: every row is written before any attends). rope:
        cos, sin (M, hd). Called right after `serves` said yes (which checked the weights).
        Cache lengths are the caller's to update."""
        layers = self._layers
        if layers is None:
            raise RuntimeError("DecodeStep.run needs a model that `serves` accepted")
        config = model.config
        M, D = x.shape
        if len(caches) != M or len(slots) != M:
            raise ValueError(f"{M} new tokens for {len(caches)} caches and {len(slots)} slots")
        for cache, slot in zip(caches, slots, strict=True):
            if not 0 <= slot < cache.capacity:
                raise ValueError(
                    f"KV cache overflow: {slot + 1} slots needed, capacity {cache.capacity}"
                )
        hd = config.head_dim
        dims = _struct("cg_dims")(
            D,
            config.num_attention_heads,
            config.num_key_value_heads,
            hd,
            config.intermediate_size,
            config.rms_norm_eps,
            hd**-0.5,
        )
        rows = (_struct("cg_row") * M)(
            *(
                _struct("cg_row")(c.keys.data_ptr(), c.values.data_ptr(), c.capacity, slot)
                for c, slot in zip(caches, slots, strict=True)
            )
        )
        x = x.contiguous()
        cos, sin = (table.reshape(M, hd).contiguous() for table in rope)
        work = self._work_floats(self.kernels.decode_work_floats(dims, M, max(slots)))
        self.kernels.decode_layers(
            layers,
            len(layers),
            dims,
            x,
            cos,
            sin,
            rows,
            work,
            max(D, dims.heads * hd, dims.intermediate),  # the widest projection input
        )
        return x

    def _work_floats(self, count: int) -> torch.Tensor:
        if self._work.numel() < count:
            self._work = torch.empty(count, dtype=torch.float32)
        return self._work

    def _described(self, model):
        """The ctypes layer array for `model`'s current weights, or None if unsupported.
        Runs at every decode step, so it reads the modules' own dictionaries (through
        nn.Module's attribute lookup this took 0.42 ms a step on CodeGemma-2B; now 0.04)."""
        parts = []
        for layer in model.model.layers:
            children = layer._modules
            attn, mlp = children["self_attn"]._modules, children["mlp"]._modules
            modules = [attn[name] for name in _ATTENTION] + [mlp[name] for name in _MLP]
            norms = [children["input_layernorm"], children["post_attention_layernorm"]]
            if not all(type(m) is NativeLinear for m in modules):
                return None  # e.g. a LoRA wrapper: its own forward must run
            if not all(type(n) is RMSNorm for n in norms):
                return None
            parts += [m.weight for m in modules] + [n._parameters["weight"] for n in norms]
        if not self._same_weights(parts):
            self._build(tuple(parts))
        return self._layers

    def _same_weights(self, weights: list) -> bool:
        """Whether the description was built from exactly these objects."""
        old = self._weights
        return old is not None and len(old) == len(weights) and all(map(operator.is_, old, weights))

    def _build(self, weights: tuple) -> None:
        """weights: per layer, its 7 projection weights then its 2 norm weights."""
        self._weights, self._layers, self._norms = weights, None, []
        per_layer = len(_PROJECTIONS) + 2
        grouped = [weights[i : i + per_layer] for i in range(0, len(weights), per_layer)]
        layers = (_struct("cg_layer") * len(grouped))()
        for described, parts in zip(layers, grouped, strict=True):
            for name, weight in zip(_PROJECTIONS, parts[: len(_PROJECTIONS)], strict=True):
                c_weight = _describe(weight)
                if c_weight is None:
                    return
                setattr(described, name, c_weight)
            # the reference scales by (1 + w) in float32
            attn_norm, mlp_norm = (1.0 + w.detach().float() for w in parts[len(_PROJECTIONS) :])
            self._norms += [attn_norm, mlp_norm]
            described.attn_norm = attn_norm.data_ptr()
            described.mlp_norm = mlp_norm.data_ptr()
        self._layers = layers
