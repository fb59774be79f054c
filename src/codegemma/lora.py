"""LoRA adapters, saved and read in PEFT's layout so other tools can use them.

An adapter directory holds `adapter_config.json` (PEFT's `LoraConfig` fields) and
`adapter_model.safetensors` with keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (r, in) and `...lora_B.weight`
(out, r). A wrapped layer computes `base(x) + scaling * B(A(x))`, with `scaling = alpha / r`
(or `alpha / sqrt(r)` with rsLoRA); merging adds `scaling * B @ A` to the base weight.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from codegemma.errors import CheckpointError
from codegemma.model import GemmaForCausalLM, Linear

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


class LoraLinear(nn.Module):
    """A frozen projection plus a trainable low-rank update (PEFT's module names)."""

    def __init__(
        self,
        base: nn.Module,
        in_features: int,
        out_features: int,
        r: int,
        scaling: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as PEFT initialises A
        nn.init.zeros_(self.lora_B.weight)  # so a fresh adapter changes nothing
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return out + (update * self.scaling).to(out.dtype)

    def merged(self) -> nn.Module:
        """A plain linear layer holding base + scaling * B @ A (a new tensor, never in place:
        the base weight may be a read-only view of a memory-mapped file)."""
        base, weight = self.base_layer, self.base_layer.weight
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        out_features, in_features = weight.shape
        with torch.device("meta"):  # the model's own Linear: native layers are swapped in
            if isinstance(base, nn.Linear):
                layer = nn.Linear(in_features, out_features, bias=False)
            else:
                layer = Linear(in_features, out_features)
        layer.weight = nn.Parameter((weight.float() + delta).to(weight.dtype), requires_grad=False)
        return layer


def add_lora(
    model: GemmaForCausalLM,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Iterable[str] = DEFAULT_TARGETS,
    seed: int = 0,
) -> list[str]:
    """Freeze `model` and wrap every linear layer named in `targets` (by last name component)
    with a float32 LoRA update; returns the wrapped module names."""
    if r < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {r}")
    targets = tuple(targets)
    for param in model.parameters():
        param.requires_grad_(False)
    torch.manual_seed(seed)  # A's initialisation
    names = [n for n, m in model.named_modules() if _is_target(n, m, targets)]
    if not names:
        raise ValueError(f"no linear layer matches the LoRA targets {targets}")
    device = model.model.embed_tokens.weight.device
    for name in names:
        base = model.get_submodule(name)
        out_features, in_features = base.weight.shape
        wrapped = LoraLinear(base, in_features, out_features, r, alpha / r, dropout)
        wrapped.lora_A.to(device)
        wrapped.lora_B.to(device)
        _replace(model, name, wrapped)
    model.lora_settings = {"r": r, "alpha": alpha, "dropout": dropout, "targets": list(targets)}
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of `model` under PEFT's key names."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            for part in ("A", "B"):
                weight = getattr(module, f"lora_{part}").weight
                tensors[f"{PEFT_PREFIX}{name}.lora_{part}.weight"] = weight.detach().cpu()
    return tensors


def save_adapter(model: GemmaForCausalLM, directory: str | Path, *, base_model: str) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` of a model from `add_lora`."""
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        raise ValueError("the model has no LoRA layers (use add_lora first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings["r"],
        "lora_alpha": settings["alpha"],
        "lora_dropout": settings["dropout"],
        "target_modules": settings["targets"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA-wrapped layer by one linear layer with the update added in."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            if not isinstance(module.base_layer.weight, torch.Tensor):
                raise CheckpointError(
                    f"cannot merge a LoRA update into {name} ({type(module.base_layer).__name__}); "
                    "apply the adapter with merge=False"
                )
            _replace(model, name, module.merged())
    return model


def apply_adapter(
    model: GemmaForCausalLM, adapter_dir: str | Path, *, merge: bool = True
) -> GemmaForCausalLM:
    """Apply a PEFT LoRA adapter directory to `model`: merged into the weights (default), or
    as separate low-rank layers (`merge=False`). Every adapter tensor must find its layer."""
    directory = Path(adapter_dir)
    config = read_adapter_config(directory)
    weights = _read_weights(directory)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _KEY.match(key.removeprefix(PEFT_PREFIX))
        if not key.startswith(PEFT_PREFIX) or match is None:
            raise CheckpointError(f"{directory / WEIGHTS_FILE}: unexpected tensor {key!r}")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    device = model.model.embed_tokens.weight.device
    for name, pair in sorted(pairs.items()):
        base = _lora_base(model, name, pair, directory)
        a, b = pair["A"], pair["B"]
        out_features, in_features = base.weight.shape
        if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"adapter tensors of {name} have shapes {list(a.shape)} and {list(b.shape)}, "
                f"which do not fit a {in_features} -> {out_features} layer"
            )
        r = a.shape[0]
        alpha = _alpha_for(name, config)
        scaling = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        wrapped = LoraLinear(base, in_features, out_features, r, scaling)
        wrapped.lora_A.weight = nn.Parameter(a.float().to(device), requires_grad=False)
        wrapped.lora_B.weight = nn.Parameter(b.float().to(device), requires_grad=False)
        _replace(model, name, wrapped)
    return merge_lora(model) if merge else model


def read_adapter_config(directory: Path) -> dict:
    """`adapter_config.json`, checked for the LoRA features this module implements."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"no {CONFIG_FILE} in adapter directory {directory}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"adapter type {config.get('peft_type')!r} is not LoRA")
    unsupported = [
        name
        for name, ok in (
            ("use_dora", not config.get("use_dora")),
            ("bias", config.get("bias", "none") == "none"),
            ("modules_to_save", not config.get("modules_to_save")),
            ("fan_in_fan_out", not config.get("fan_in_fan_out")),
        )
        if not ok
    ]
    if unsupported:
        raise CheckpointError(f"unsupported LoRA setting(s) in {CONFIG_FILE}: {unsupported}")
    if "lora_alpha" not in config:
        raise CheckpointError(f"{CONFIG_FILE} lacks lora_alpha")
    return config


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in adapter directory {directory}")
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from exc


def _lora_base(model: nn.Module, name: str, pair: dict, directory: Path) -> nn.Module:
    if set(pair) != {"A", "B"}:
        raise CheckpointError(f"adapter {directory} has only lora_{''.join(pair)} for {name}")
    try:
        base = model.get_submodule(name)
    except AttributeError as exc:
        raise CheckpointError(f"adapter {directory} names {name!r}, not a layer here") from exc
    weight = getattr(base, "weight", None)
    if isinstance(base, LoraLinear) or weight is None or len(weight.shape) != 2:
        raise CheckpointError(f"adapter {directory}: {name!r} is not a plain linear layer")
    return base


def _alpha_for(name: str, config: dict) -> float:
    """`lora_alpha`, or the first `alpha_pattern` entry whose pattern ends the module name."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?{pattern}$", name):
            return float(alpha)
    return float(config["lora_alpha"])


def _is_target(name: str, module: nn.Module, targets: tuple[str, ...]) -> bool:
    """A projection (ours or torch's) whose last name component is one of `targets`."""
    linear = isinstance(module, (nn.Linear, Linear))
    return linear and name.rsplit(".", 1)[-1] in targets


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
