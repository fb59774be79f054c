"""The quantized checkpoint format written by `codegemma quantize`.

A Hugging Face style directory: `config.json` with an added `"quantization"` object
(`{"format": "codegemma-blocks", "mode": "int8" | "int4", "block_size": 32, "layout":
"row-groups"}`), the tokenizer file, and `model.safetensors`. The blocks are GGUF's Q8_0 /
Q4_0 blocks (32 inputs, one float16 scale each) with the scales stored apart. Each quantized
weight `W` (every linear layer and the tied embedding, [out, in]) is stored in one of two
layouts:

- 16-row groups, the layout the native kernels read (every weight whose `out` is a multiple
  of 16): `W.groups` uint8 [out / 16, in / 32, runs, 16, 4] and `W.scales` float16
  [out / 16, in / 32, 16]. For group g, block b, run r, lane l and byte k, the byte belongs to
  row 16 g + l and holds, unsigned, int8: q + 128 of input 32 b + 4 r + k (runs = 8); int4:
  byte 4 r + k of that row's Q4_0 block b, whose low nibble is input 32 b + 4 r + k and high
  nibble input 32 b + 4 r + k + 16, each q + 8 (runs = 4). The scale of that row's block is
  `W.scales[g, b, l]`.
- rows (other weights, and every weight of files written before the row-group layout, which
  have no "layout" key): int8 `W.qs` int8 [out, in] and `W.scales` float16 [out, in / 32],
  value = qs * scale; int4 `W.q4` uint8 [out, in / 2] and `W.scales` float16 [out, in / 32],
  in each block byte j holds element j (low nibble) and element j + 16 (high nibble),
  value = (q - 8) * scale.

Norm weights stay as they are. Every tensor starts on a 64-byte boundary of the file, so the
engine maps the file and reads the weights in place: loading copies and converts nothing. The
file leaves the page cache once written, so its first read caches it in 2 MB pieces, which
the map then uses as huge pages (see quant/mapped_pages.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from codegemma.checkpoint.safetensors_file import save_aligned
from codegemma.errors import CheckpointError
from codegemma.model import GemmaForCausalLM
from codegemma.quant.apply import prepare_for_kernels, quantizable
from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks
from codegemma.quant.formats import BlockWeight, Weight, is_quantized
from codegemma.quant.mapped_pages import drop_cached
from codegemma.quant.row_groups import RowGroups

FORMAT = "codegemma-blocks"
LAYOUT = "row-groups"  # absent in files written before it: every weight stored in rows
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def save_quantized(
    model: GemmaForCausalLM, tokenizer: dict[str, Path | bytes], out_dir: Path, mode: str
) -> None:
    """Write `model` (already quantized to `mode`) and its tokenizer files (name -> a file
    to copy or the bytes to write). The model's weights are regrouped in place (16-row groups:
    the same values, the stored layout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_for_kernels(model, row_groups=True)
    quantized = {f"{name}.weight" for name, _ in quantizable(model)}
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name not in quantized:
            tensors[name] = param.detach().contiguous()
    for name, module in quantizable(model):
        tensors.update(_stored(f"{name}.weight", module.weight))
    config = model.config.to_hf_dict()
    config["quantization"] = {
        "format": FORMAT,
        "mode": mode,
        "block_size": BLOCK,
        "layout": LAYOUT,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_aligned(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    drop_cached(out_dir / "model.safetensors")  # read back in 2 MB pieces, mapped so
    for name, content in tokenizer.items():
        if isinstance(content, bytes):
            (out_dir / name).write_bytes(content)
        else:
            shutil.copyfile(content, out_dir / name)


def _stored(name: str, weight: Weight) -> dict[str, torch.Tensor]:
    """The tensors that store one quantized weight."""
    if not is_quantized(weight):
        raise CheckpointError(f"{name} is not quantized; quantize the model first")
    return {
        f"{name}.{weight.STORED_AS}": weight.stored_values(),
        f"{name}.scales": weight.scales.to(torch.float16).contiguous(),
    }


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
    """Merge each quantized weight's tensors (`W.groups`, `W.qs` or `W.q4`, with `W.scales`)
    of a quantized file into one block weight named `W` (views of the file, nothing copied)."""
    grouped: dict[str, object] = {}
    for name, tensor in state.items():
        base, _, part = name.rpartition(".")
        if part in _VALUE_PARTS:
            scales = state.get(f"{base}.scales")
            if scales is None:
                raise CheckpointError(f"quantized tensor {name!r} has no {base}.scales")
            try:
                grouped[base] = _block_weight(part, tensor, scales)
            except ValueError as exc:
                raise CheckpointError(f"quantized tensor {base!r}: {exc}") from exc
        elif part == "scales" and any(f"{base}.{kind}" in state for kind in _VALUE_PARTS):
            continue
        else:
            grouped[name] = tensor
    return grouped


# The formats by the name of their values tensor ("W.groups", "W.qs", "W.q4").
_FORMATS = {f.STORED_AS: f for f in (RowGroups, Int8Blocks, Int4Blocks)}
_VALUE_PARTS = tuple(_FORMATS)


def _block_weight(part: str, values: torch.Tensor, scales: torch.Tensor) -> BlockWeight:
    return _FORMATS[part].from_stored(values, scales)
