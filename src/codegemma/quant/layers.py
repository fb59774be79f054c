"""Layers that compute through the native kernels, swapped into a model from outside.

The model's own `Linear`, `Embedding` and `MLP` compute with plain PyTorch and know nothing of
kernels. `use_native_layers` replaces them, in place and under the same names (checkpoint
names, LoRA and the decode step still find them), by the subclasses here, which hand their
products to one `NativeBackend`, as gpt-fast swaps in its `WeightOnlyInt8Linear`.
"""

from __future__ import annotations

import torch
from torch import nn

from codegemma.config import GemmaConfig
from codegemma.model import MLP, Embedding, GemmaForCausalLM, Linear
from codegemma.quant.backends import NativeBackend


class NativeLinear(Linear):
    """A linear layer whose product runs on the native kernels."""

    def __init__(self, in_features: int, out_features: int, backend: NativeBackend) -> None:
        super().__init__(in_features, out_features)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.linear(x, self.weight)


class NativeEmbedding(Embedding):
    """The embedding whose LM-head product runs on the native kernels (lookups stay plain)."""

    def __init__(self, num_embeddings: int, dim: int, backend: NativeBackend) -> None:
        super().__init__(num_embeddings, dim)
        self.backend = backend

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.linear(x, self.weight)


class NativeMLP(MLP):
    """The feed-forward block, computed in one fused pass over a prompt where the backend
    serves it (`fuses_mlp`), else as the model's MLP does through its native projections."""

    def __init__(self, config: GemmaConfig, backend: NativeBackend) -> None:
        super().__init__(config)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = self.gate_proj, self.up_proj, self.down_proj
        native = type(gate) is type(up) is type(down) is NativeLinear  # not wrapped by LoRA
        if native and not torch.is_grad_enabled():
            if self.backend.fuses_mlp(x, gate.weight, up.weight):
                return self.backend.gated_mlp(x, gate.weight, up.weight, down.weight)
        return super().forward(x)


def use_native_layers(model: GemmaForCausalLM, backend: NativeBackend) -> None:
    """Replace every `Linear`, `MLP` and the `Embedding` of `model` (those inside LoRA
    wrappers too) by their native versions, which take over the same weights."""
    for name, module in list(model.named_modules()):
        if type(module) is Linear:
            out_features, in_features = module.weight.shape
            native = _built(NativeLinear, in_features, out_features, backend)
        elif type(module) is Embedding:
            native = _built(NativeEmbedding, *module.weight.shape, backend)
        elif type(module) is MLP:
            native = _built(NativeMLP, model.config, backend)
            for child in ("gate_proj", "up_proj", "down_proj"):
                setattr(native, child, getattr(module, child))
        else:
            continue
        _take_weight(module, native)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, native)


def _built(kind: type[nn.Module], *args) -> nn.Module:
    with torch.device("meta"):  # the placeholder weights cost nothing
        return kind(*args)


def _take_weight(layer: nn.Module, native: nn.Module) -> None:
    """`native` holds `layer`'s weight object itself (a Parameter, or a block weight kept in
    the module's __dict__ as `quant.apply.set_weight` does)."""
    if "weight" not in layer._parameters and "weight" not in layer.__dict__:
        return  # an MLP: its projections were moved whole
    native._parameters.pop("weight", None)
    if "weight" in layer._parameters:
        native.weight = layer._parameters["weight"]
    else:
        native.__dict__["weight"] = layer.__dict__["weight"]
