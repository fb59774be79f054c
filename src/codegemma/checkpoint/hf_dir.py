"""A Hugging Face model directory: its weights (one `model.safetensors` or indexed shards),
read memory-mapped, and writing a model as one (the one writer every converter uses)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from codegemma.checkpoint.safetensors_file import load_mapped
from codegemma.errors import CheckpointError
from codegemma.model import GemmaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def load_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory by name, memory-mapped."""
    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        return _load_sharded(directory)
    if (directory / SINGLE_FILE).is_file():
        return load_mapped(directory / SINGLE_FILE)
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(others) == 1:
        return load_mapped(directory / others[0])
    hint = ""
    if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
        hint = " (PyTorch pickle weights are not loaded, for safety: use the safetensors files)"
    raise CheckpointError(
        f"{directory} holds no {SINGLE_FILE} and no {INDEX_FILE}{hint}; found: "
        f"{', '.join(sorted(p.name for p in directory.iterdir())) or 'nothing'}"
    )


def _load_sharded(directory: Path) -> dict[str, torch.Tensor]:
    index_path = directory / INDEX_FILE
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a valid safetensors index: {exc}") from exc
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: weight_map must be an object")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = directory / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"shard {shard} listed in {INDEX_FILE} is missing from {directory}"
            )
        for name, tensor in load_mapped(shard_path).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in more than one shard")
            tensors[name] = tensor
    for name, shard in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"tensor {name!r} listed in {INDEX_FILE} is not in shard {shard}")
    return tensors


def save_hf_checkpoint(model: GemmaForCausalLM, directory: str | Path) -> None:
    """Write `model`'s `config.json` and `model.safetensors` in the Hugging Face layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})
