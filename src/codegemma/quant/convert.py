"""`codegemma quantize IN OUT`: a quantized checkpoint that loads without re-quantizing."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from codegemma.errors import CheckpointError
from codegemma.loading import load_model_and_tokenizer
from codegemma.quant.apply import quantizable, quantize_model
from codegemma.quant.checkpoint import save_quantized


def quantize_checkpoint(source: str | Path, out_dir: str | Path, mode: str) -> str:
    """Quantize every linear layer and the embedding of `source` into `out_dir`; a summary."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; choose a new directory")
    started = time.perf_counter()
    model, _, path, _ = load_model_and_tokenizer(source, torch.bfloat16, torch.device("cpu"))
    if path.is_file():
        raise CheckpointError(
            f"{path} is a GGUF file, which loads quantized as it is; to re-quantize it, first "
            "write a Hugging Face directory with `codegemma convert IN OUT --to hf`"
        )
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    with tqdm(total=len(quantizable(model)), desc=f"quantizing to {mode}", unit="matrix") as bar:
        quantize_model(model, mode, progress=bar)
    save_quantized(model, path, out_dir, mode)
    after = (out_dir / "model.safetensors").stat().st_size
    return (
        f"wrote {out_dir}: {mode} weights, {_size(after)} on disk "
        f"(bf16 weights were {_size(before)}) in {time.perf_counter() - started:.1f} s"
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"
