"""One checkpoint written in another format: `codegemma convert` and `codegemma quantize`.

- `convert_checkpoint(..., to="hf")`: a GGUF file (`gguf.writer.write_hf`), or a keras-hub
  preset, Flax checkpoint or Jlama directory, as a Hugging Face directory (config.json,
  model.safetensors, tokenizer file).
- `convert_checkpoint(..., to="gguf")`: a Hugging Face directory (`gguf.writer.write_gguf`) or,
  through a temporary one, another system's checkpoint, as a GGUF file.
- `quantize_checkpoint`: anything `codegemma.load` reads as a checkpoint of `codegemma
  quantize` (`checkpoint.quantized`), which loads without re-quantizing. A GGUF file's Q8_0 /
  Q4_0 blocks are copied exactly (only laid out as the native kernels read them), so the result
  loads in place instead of being regrouped at every start; float tensors are quantized.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import save_hf_checkpoint
from codegemma.checkpoint.quantized import TOKENIZER_FILES, save_quantized
from codegemma.devices import DTYPES, dtype_name
from codegemma.errors import CheckpointError, InvalidRequestError
from codegemma.gguf.reader import read_gguf
from codegemma.gguf.tokenizer import proto_from_metadata
from codegemma.gguf.writer import write_gguf, write_hf
from codegemma.loading import load_model_and_tokenizer
from codegemma.model import Embedding, GemmaForCausalLM
from codegemma.quant.apply import BITS, quantizable, quantize_model
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.quant.formats import is_quantized
from codegemma.sources.base import SourceCheckpoint, float_dtype
from codegemma.sources.detect import SOURCES, detect_format, load_source

TARGETS = ("gguf", "hf")


def convert_checkpoint(
    source: Path,
    dest: Path,
    to: str,
    *,
    file_type: str | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> list[str]:
    """Write `source` at `dest` as `to` ("gguf": of GGUF type `file_type`, default f16; "hf":
    weights in `dtype`, default the source's float type); returns lines for the user."""
    _check_destination(dest, force)
    kind = detect_format(source)
    if to == "gguf":
        if dtype:
            raise InvalidRequestError("--dtype applies to --to hf; use --type for GGUF")
        if kind == "gguf":
            raise InvalidRequestError(f"{source} is already GGUF; give a model directory")
        write = write_gguf_from_source if kind in SOURCES else write_gguf
        path = write(source, dest, file_type or "f16")
        return [f"wrote {path} ({(file_type or 'f16').upper()}, {path.stat().st_size:,} bytes)"]
    if file_type:
        raise InvalidRequestError("--type applies to --to gguf; use --dtype for --to hf")
    if kind in SOURCES:
        notes = write_hf_from_source(source, dest, dtype)
    elif kind == "gguf":
        notes = write_hf(source, dest, dtype)
    else:
        raise InvalidRequestError(
            f"{source} is not a GGUF file, keras-hub preset, Flax checkpoint or Jlama "
            "model directory"
        )
    return [f"wrote {dest}", *(f"  {note}" for note in notes)]


def _check_destination(dest: Path, force: bool) -> None:
    occupied = dest.is_file() or (dest.is_dir() and any(dest.iterdir()))
    if occupied and not force:
        raise InvalidRequestError(f"{dest} exists; pass --force to replace it")


# ------------------------------------------------------------- other systems' checkpoints


def write_hf_from_source(
    source: str | Path, out_dir: str | Path, dtype: str | None = None
) -> list[str]:
    """Write a keras-hub preset, Flax checkpoint or Jlama directory as a Hugging Face
    directory; `dtype` defaults to the source's float type (bfloat16 for quantized Jlama
    files). Returns notes on what was read and written."""
    checkpoint = load_source(source)
    target = DTYPES[dtype] if dtype else (float_dtype(checkpoint.state) or torch.bfloat16)
    _write_hf(checkpoint, Path(out_dir), target)
    return checkpoint.notes + [f"weights written as {dtype_name(target)}"]


def write_gguf_from_source(source: str | Path, out_path: str | Path, out_type: str) -> Path:
    """Write `source` as a GGUF file of type `out_type`, through a temporary Hugging Face
    directory next to `out_path` in the source's float type (float32 for quantized files)."""
    checkpoint = load_source(source)
    out_path = Path(out_path)
    target = float_dtype(checkpoint.state) or torch.float32
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".convert-") as scratch:
        hf_dir = Path(scratch) / Path(source).resolve().name  # the GGUF's general.name
        _write_hf(checkpoint, hf_dir, target)
        del checkpoint
        return write_gguf(hf_dir, out_path, out_type)


def _write_hf(checkpoint: SourceCheckpoint, out_dir: Path, dtype: torch.dtype) -> None:
    state = {
        name: w.dequantize(dtype) if is_quantized(w) else w for name, w in checkpoint.state.items()
    }
    with torch.device("meta"):
        model = GemmaForCausalLM(checkpoint.config)
    assign_weights(model, state, dtype, torch.device("cpu"))  # every name and shape checked
    save_hf_checkpoint(model, out_dir)
    tokenizer = checkpoint.tokenizer_file
    name = "tokenizer.json" if tokenizer.suffix == ".json" else "tokenizer.model"
    shutil.copyfile(tokenizer, out_dir / name)


# ------------------------------------------------------------------ quantized checkpoints


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
        have = weight.bits
        wanted = 8 if isinstance(module, Embedding) else BITS[mode]
        if have != wanted:
            raise CheckpointError(
                f"{path} stores {name}.weight in {have}-bit blocks; --bits {BITS[mode]} would "
                f"re-quantize them. Give --bits {have} to keep them exactly, or quantize the "
                "original model directory"
            )


def _gguf_tokenizer(path: Path) -> bytes:
    """The SentencePiece model the GGUF file's tokenizer metadata describes."""
    file = read_gguf(path)
    return proto_from_metadata(file.metadata, file.path)[0].SerializeToString()


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"
