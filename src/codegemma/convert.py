"""Writing a keras-hub preset, Flax checkpoint or Jlama directory as a Hugging Face directory
(config.json, model.safetensors, tokenizer file) or, through one, as a GGUF file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from codegemma.checkpoint.assign import assign_weights
from codegemma.model import GemmaForCausalLM
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.sources.base import SourceCheckpoint, float_dtype
from codegemma.sources.detect import load_source

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_hf_from_source(
    source: str | Path, out_dir: str | Path, dtype: str | None = None
) -> list[str]:
    """Write `source` as a Hugging Face directory; `dtype` defaults to the source's float type
    (bfloat16 for quantized Jlama files). Returns notes on what was read and written."""
    checkpoint = load_source(source)
    target = DTYPES[dtype] if dtype else (float_dtype(checkpoint.state) or torch.bfloat16)
    _write_hf(checkpoint, Path(out_dir), target)
    return checkpoint.notes + [f"weights written as {str(target).removeprefix('torch.')}"]


def write_gguf_from_source(source: str | Path, out_path: str | Path, out_type: str) -> Path:
    """Write `source` as a GGUF file of type `out_type`, through a temporary Hugging Face
    directory next to `out_path` in the source's float type (float32 for quantized files)."""
    from codegemma.gguf.writer import write_gguf

    checkpoint = load_source(source)
    out_path = Path(out_path)
    target = float_dtype(checkpoint.state) or torch.float32
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".convert-") as scratch:
        hf_dir = Path(scratch) / Path(source).resolve().name  # the GGUF's general.name
        _write_hf(checkpoint, hf_dir, target)
        del checkpoint
        return write_gguf(hf_dir, out_path, out_type)


def _write_hf(checkpoint: SourceCheckpoint, out_dir: Path, dtype: torch.dtype) -> None:
    from codegemma.loading import save_hf_checkpoint

    state = {
        name: w.dequantize(dtype) if isinstance(w, (Int8Blocks, Int4Blocks)) else w
        for name, w in checkpoint.state.items()
    }
    with torch.device("meta"):
        model = GemmaForCausalLM(checkpoint.config)
    assign_weights(model, state, dtype, torch.device("cpu"))  # every name and shape checked
    save_hf_checkpoint(model, out_dir)
    tokenizer = checkpoint.tokenizer_file
    name = "tokenizer.json" if tokenizer.suffix == ".json" else "tokenizer.model"
    shutil.copyfile(tokenizer, out_dir / name)
