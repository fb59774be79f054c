"""The quantized checkpoint format written by `codegemma quantize`.

A Hugging Face style directory: `config.json` with an added `"quantization"` object, the
tokenizer file, and `model.safetensors` where each quantized weight `W` (every linear layer
and the tied embedding) is stored as two tensors:

- int8: `W.qs` int8 [out, in] and `W.scales` float16 [out, in / 32]; value = qs * scale
- int4: `W.q4` uint8 [out, in / 2] and `W.scales` float16 [out, in / 32]; in each block of 32,
  byte j holds element j (low nibble) and element j + 16 (high nibble); value = (q - 8) * scale

Norm weights stay as they are. These are GGUF's Q8_0 / Q4_0 blocks with the scales stored
apart, so loading maps the file without converting anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from codegemma.errors import CheckpointError
from codegemma.model import GemmaForCausalLM
from codegemma.quant.apply import quantizable
from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks

FORMAT = "codegemma-blocks"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def save_quantized(model: GemmaForCausalLM, source_dir: Path, out_dir: Path, mode: str) -> None:
    """Write `model` (already quantized to `mode`) and the tokenizer of `source_dir`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    quantized = {f"{name}.weight" for name, _ in quantizable(model)}
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name not in quantized:
            tensors[name] = param.detach().contiguous()
    for name, module in quantizable(model):
        weight = module.weight
        if isinstance(weight, Int8Blocks):
            tensors[f"{name}.weight.qs"] = weight.qs.reshape(weight.shape).contiguous()
        elif isinstance(weight, Int4Blocks):
            tensors[f"{name}.weight.q4"] = weight.packed.reshape(weight.shape[0], -1).contiguous()
        else:
            raise CheckpointError(f"{name} is not quantized; quantize the model first")
        tensors[f"{name}.weight.scales"] = weight.scales.to(torch.float16).contiguous()
    config = model.config.to_hf_dict()
    config["quantization"] = {"format": FORMAT, "mode": mode, "block_size": BLOCK}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for file in TOKENIZER_FILES:
        if (source_dir / file).is_file():
            shutil.copyfile(source_dir / file, out_dir / file)


def quantization_mode(config_path: Path) -> str | None:
    """The mode recorded in a checkpoint's config.json, or None for a plain checkpoint."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # reading the config properly reports the problem
    info = raw.get("quantization") if isinstance(raw, dict) else None
    if info is None:
        return None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(
            f"{config_path} declares quantization {info!r}; codegemma reads only its own "
            f"'{FORMAT}' format (written by `codegemma quantize`)"
        )
    return info.get("mode")


def group_blocks(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Merge `W.qs`/`W.q4` + `W.scales` pairs of a quantized file into block weights named `W`."""
    grouped: dict[str, object] = {}
    for name, tensor in state.items():
        base, _, part = name.rpartition(".")
        if part in ("qs", "q4"):
            scales = state.get(f"{base}.scales")
            if scales is None:
                raise CheckpointError(f"quantized tensor {name!r} has no {base}.scales")
            try:
                grouped[base] = (
                    Int8Blocks(tensor, scales) if part == "qs" else Int4Blocks(tensor, scales)
                )
            except ValueError as exc:
                raise CheckpointError(f"quantized tensor {base!r}: {exc}") from exc
        elif part == "scales" and (f"{base}.qs" in state or f"{base}.q4" in state):
            continue
        else:
            grouped[name] = tensor
    return grouped
