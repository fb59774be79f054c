"""`codegemma quantize IN OUT`: a quantized checkpoint that loads without re-quantizing.

IN is a model directory (or any source `codegemma.load` reads) or a GGUF file. A GGUF file's
Q8_0 / Q4_0 blocks are copied exactly (only laid out as the native kernels read them), so the
result loads in place instead of being regrouped at every start; float tensors are quantized.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from codegemma.errors import CheckpointError
from codegemma.loading import load_model_and_tokenizer
from codegemma.model import Embedding
from codegemma.quant.apply import BITS, quantizable, quantize_model
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.quant.checkpoint import TOKENIZER_FILES, save_quantized


def quantize_checkpoint(source: str | Path, out_dir: str | Path, mode: str) -> str:
    """Quantize every linear layer and the embedding of `source` into `out_dir`; a summary."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; choose a new directory")
    started = time.perf_counter()
    model, _, path, _ = load_model_and_tokenizer(source, torch.bfloat16, torch.device("cpu"))
    _check_block_bits(model, mode, path)  # blocks a source holds (GGUF, Jlama) are kept
    if path.is_file():  # GGUF: the tokenizer is rebuilt from the file's metadata
        tokenizer = {"tokenizer.model": _gguf_tokenizer(path)}
        before = f"{path.name} was {_size(path.stat().st_size)}"
    else:
        tokenizer = {n: path / n for n in TOKENIZER_FILES if (path / n).is_file()}
        floats = sum(p.numel() * p.element_size() for p in model.parameters())
        before = f"bf16 weights were {_size(floats)}"
    with tqdm(total=len(quantizable(model)), desc=f"quantizing to {mode}", unit="matrix") as bar:
        quantize_model(model, mode, progress=bar)
    save_quantized(model, tokenizer, out_dir, mode)
    after = (out_dir / "model.safetensors").stat().st_size
    return (
        f"wrote {out_dir}: {mode} weights, {_size(after)} on disk "
        f"({before}) in {time.perf_counter() - started:.1f} s"
    )


def _check_block_bits(model, mode: str, path: Path) -> None:
    """Refuse to re-quantize a source's blocks to other bits (that only loses quality)."""
    for name, module in quantizable(model):
        weight = module.weight
        if not isinstance(weight, (Int8Blocks, Int4Blocks)):
            continue
        have = 8 if isinstance(weight, Int8Blocks) else 4
        wanted = 8 if isinstance(module, Embedding) else BITS[mode]
        if have != wanted:
            raise CheckpointError(
                f"{path} stores {name}.weight in {have}-bit blocks; --bits {BITS[mode]} would "
                f"re-quantize them. Give --bits {have} to keep them exactly, or quantize the "
                "original model directory"
            )


def _gguf_tokenizer(path: Path) -> bytes:
    """The SentencePiece model the GGUF file's tokenizer metadata describes."""
    from codegemma.gguf.reader import read_gguf
    from codegemma.gguf.tokenizer import proto_from_metadata

    file = read_gguf(path)
    return proto_from_metadata(file.metadata, file.path)[0].SerializeToString()


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"
