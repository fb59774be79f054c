"""Jlama model directories (e.g. `tjake/codegemma-2b-JQ4`): Hugging Face names, Jlama's types.

Jlama writes one `model.safetensors` (or shards with `model.safetensors.index.json`) whose
header may name its own dtypes, which standard safetensors readers refuse:
- "Q4": logical shape [rows, cols], rows * cols / 2 bytes; each block of 32 values along a row
  is 16 bytes, byte j holding element j in its low nibble and element j + 16 in its high one,
  value = (nibble - 8) * scale: GGUF Q4_0's nibble order, with the scales kept apart.
- "I8": int8 values, value = q * scale, blocks of 32 along a row.
The scales of tensor `W` are the float32 tensor `W.qb` of shape [rows, cols / 32]. Jlama packs
tensors back to back with no alignment. These are exactly the engine's `Int4Blocks` and
`Int8Blocks` (float32 scales), so quantized weights are views of the file, never expanded.
`config.json` (Hugging Face's) and `tokenizer.json` sit beside the weights.
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path

import torch

from codegemma.checkpoint.safetensors_file import DTYPES, read_header
from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks
from codegemma.sources.base import SourceCheckpoint, Weight

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
SCALES_SUFFIX = ".qb"
# Jlama dtype -> (bits per value, the engine's block class, its value dtype). Jlama's Q5 was
# never finished there (its writer raises), so no file has it.
QUANTIZED = {"Q4": (4, Int4Blocks, torch.uint8), "I8": (8, Int8Blocks, torch.int8)}
Entry = tuple[str, tuple[int, ...], torch.Tensor]  # Jlama dtype, logical shape, data


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a model directory, or [] when there are none."""
    if (directory / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{directory / INDEX_FILE} is not a valid index: {exc}") from exc
        return [directory / name for name in sorted(set(weight_map.values()))]
    return [directory / SINGLE_FILE] if (directory / SINGLE_FILE).is_file() else []


def is_jlama_dir(directory: Path) -> bool:
    """A model directory whose safetensors header uses one of Jlama's own dtypes."""
    files = weight_files(directory)
    if not files or not (directory / "config.json").is_file() or not files[0].is_file():
        return False
    try:
        header, _ = read_header(files[0])
    except CheckpointError:
        return False
    # Int8 is a standard safetensors dtype (checkpoints of `codegemma quantize` hold it too):
    # Jlama's mark is a quantized tensor `W` with its float32 scales `W.qb` beside it.
    return any(
        isinstance(entry, dict)
        and entry.get("dtype") in QUANTIZED
        and name + SCALES_SUFFIX in header
        for name, entry in header.items()
    )


def load_jlama(directory: str | Path) -> SourceCheckpoint:
    """Config, weights (quantized ones as engine blocks), and the tokenizer file."""
    directory = Path(directory)
    config = GemmaConfig.from_json_file(directory / "config.json")
    raw: dict[str, Entry] = {}
    for path in weight_files(directory):
        for name, entry in _mapped(path).items():
            if name in raw:
                raise CheckpointError(f"tensor {name!r} appears in more than one shard")
            raw[name] = entry
    state, notes = _engine_state(raw, directory)
    embedding = state.get("model.embed_tokens.weight")
    if embedding is not None and len(embedding.shape) == 2:
        config = config.replace(vocab_size=embedding.shape[0])
    return SourceCheckpoint(config, state, _tokenizer_file(directory), notes)


def _engine_state(raw: dict[str, Entry], directory: Path) -> tuple[dict[str, Weight], list[str]]:
    state: dict[str, Weight] = {}
    counts: dict[str, int] = {}
    for name, (dtype, shape, tensor) in raw.items():
        if name.endswith(SCALES_SUFFIX):
            base = name[: -len(SCALES_SUFFIX)]
            if base not in raw or raw[base][0] not in QUANTIZED:
                raise CheckpointError(f"{directory}: scales {name!r} belong to no Q4/I8 tensor")
            continue
        counts[dtype] = counts.get(dtype, 0) + 1
        if dtype not in QUANTIZED:
            state[name] = tensor
            continue
        scales = raw.get(name + SCALES_SUFFIX)
        if scales is None or scales[0] != "F32":
            raise CheckpointError(f"{directory}: {dtype} tensor {name!r} lacks float32 {name}.qb")
        state[name] = _blocks(name, dtype, shape, tensor, scales[2])
    notes = [f"Jlama {kind}: {count} tensors" for kind, count in sorted(counts.items())]
    notes += [
        f"Jlama {kind} tensors used as stored ({cls.__name__}, views of the file)"
        for kind, (_, cls, _) in QUANTIZED.items()
        if kind in counts
    ]
    return state, notes


def _blocks(
    name: str, dtype: str, shape: tuple[int, ...], values: torch.Tensor, scales: torch.Tensor
) -> Weight:
    """A 2-D Q4 / I8 tensor as engine blocks; a 1-D one (a norm) as float32 values."""
    if not shape or shape[-1] % BLOCK or tuple(scales.shape) != (*shape[:-1], shape[-1] // BLOCK):
        raise CheckpointError(
            f"Jlama tensor {name!r} of shape {list(shape)} has scales of shape "
            f"{list(scales.shape)}; expected one per {BLOCK} values along the last dimension"
        )
    rows = math.prod(shape[:-1])  # 1 for a 1-D tensor
    block_class = QUANTIZED[dtype][1]
    blocks = block_class(values.view(rows, -1), scales.reshape(rows, -1))  # (rows, cols [/ 2])
    if len(shape) == 2:
        return blocks
    return blocks.dequantize().view(shape)  # norms: the engine keeps them in floating point


def _mapped(path: Path) -> dict[str, Entry]:
    """Every tensor of a Jlama safetensors file as (Jlama dtype, logical shape, data), the data
    a view of a private memory map.

    Quantized payloads are flat byte (uint8 / int8) views; scales and float tensors that sit
    at an offset their element size does not divide are copied, to give aligned memory.
    """
    header, start = read_header(path)
    size = path.stat().st_size - start
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(path, name, entry, size)
        if dtype in QUANTIZED:
            bits, _, torch_dtype = QUANTIZED[dtype]
            count = math.prod(shape) * bits // 8
        else:
            torch_dtype = DTYPES[dtype]
            count = math.prod(shape)
        if (end - begin) != count * torch_dtype.itemsize:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype} {list(shape)}) has {end - begin} bytes"
            )
        tensor = torch.frombuffer(
            mapped, dtype=torch.uint8, count=end - begin, offset=start + begin
        )
        if (start + begin) % torch_dtype.itemsize:
            tensor = tensor.clone()
        tensor = tensor.view(torch_dtype)
        tensors[name] = (dtype, shape, tensor if dtype in QUANTIZED else tensor.view(shape))
    return tensors


def _entry(path: Path, name: str, entry: object, size: int) -> tuple[str, tuple, int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry")
    dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    if dtype not in QUANTIZED and dtype not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {dtype!r}; codegemma reads Jlama's Q4 and I8 "
            f"and the standard float types"
        )
    if not 0 <= begin <= end <= size:
        raise CheckpointError(f"{path} is truncated or corrupt at tensor {name!r}")
    return dtype, shape, begin, end


def _tokenizer_file(directory: Path) -> Path:
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"no tokenizer.json or tokenizer.model in the Jlama directory {directory}"
    )
