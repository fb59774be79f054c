"""Loading a GGUF file of architecture `gemma` (llama.cpp, Ollama, LM Studio) for the engine.

What each tensor type becomes:
- F32 / F16 / BF16: a torch view of the file in its stored dtype (cast once at assignment).
- Q8_0 / Q4_0: `Int8Blocks` / `Int4Blocks` whose tensors are strided views of the file, the
  engine's own formats, so nothing is expanded and resident memory stays near the file size.
- Other quantized types are dequantized (exactly as ggml does) and re-quantized at load to
  the engine format nearest in bits per weight: the 4-bit types (Q4_1, Q4_K) to int4, which
  keeps the memory of the file but adds an error about as large as the file's own (int4's
  symmetric grid cannot hold their offset grids); the 5- and 6-bit types (Q5_0, Q5_1, Q5_K,
  Q6_K) to int8, which costs 8.5 bits per weight but adds only about an eighth of their error
  (int4 would throw their extra bits away).
- RMSNorm weights hold 1 + w in GGUF: they are returned as w (float32).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codegemma.config import GemmaConfig
from codegemma.gguf import names
from codegemma.gguf.dequant import DEQUANTIZERS, dequantize, q4_0_view, q8_0_view
from codegemma.gguf.reader import GGUFError, GGUFFile, TensorInfo, read_gguf
from codegemma.gguf.tokenizer import tokenizer_from_metadata
from codegemma.quant.blocks import Int4Blocks, Int8Blocks, quantize_int4, quantize_int8
from codegemma.tokenizer import Tokenizer

ARCHITECTURE = "gemma"
Weight = torch.Tensor | Int8Blocks | Int4Blocks

FLOAT_TYPES = ("F32", "F16", "BF16")
VIEWED_TYPES = {"Q8_0": "int8", "Q4_0": "int4"}
REQUANTIZED_TYPES = {
    "Q4_1": "int4",
    "Q4_K": "int4",
    "Q5_0": "int8",
    "Q5_1": "int8",
    "Q5_K": "int8",
    "Q6_K": "int8",
}
_WHY = {
    "int4": "4 bits per value like int4, which adds about the file's own rounding error",
    "int8": "more than 4 bits per value: int4 would drop some, int8 keeps them",
}
_CHUNK_VALUES = 1 << 22  # values dequantized at a time when re-quantizing (16 MiB of float32)


def load_gguf(
    path: str | Path,
) -> tuple[GemmaConfig, dict[str, Weight], Tokenizer, list[str]]:
    """Config, weights in Hugging Face names, tokenizer, and notes on the type mapping.

    Weights are tensors (floats and norms) or block-quantized `Int8Blocks` / `Int4Blocks`.
    Raises a `GGUFError` (a CheckpointError) naming what is wrong with a file it cannot run.
    """
    file = read_gguf(path)
    config = config_from_metadata(file)
    tokenizer, tokenizer_notes = tokenizer_from_metadata(file.metadata, file.path)
    if tokenizer.vocab_size > config.vocab_size:
        raise GGUFError(
            f"{file.path}: token_embd.weight has {config.vocab_size} rows but the tokenizer "
            f"has {tokenizer.vocab_size} tokens"
        )
    state, notes = engine_state(file)
    return config, state, tokenizer, notes + tokenizer_notes


def config_from_metadata(file: GGUFFile) -> GemmaConfig:
    """The model configuration from `gemma.*` metadata; vocabulary rows from the embedding."""
    architecture = file.metadata.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise GGUFError(
            f"{file.path} holds a model of architecture {architecture!r}; codegemma runs "
            f"{ARCHITECTURE!r} (Gemma v1 / CodeGemma) files only"
        )
    embedding = file.tensors.get("token_embd.weight")
    query = file.tensors.get("blk.0.attn_q.weight")
    if embedding is None or len(embedding.shape) != 2 or query is None:
        raise GGUFError(f"{file.path} lacks token_embd.weight or blk.0.attn_q.weight")
    heads = _integer(file, "attention.head_count")
    head_dim = _integer(file, "attention.key_length", query.shape[0] // heads)
    if _integer(file, "attention.value_length", head_dim) != head_dim:
        raise GGUFError(f"{file.path}: key and value head widths differ; Gemma has one head_dim")
    if _integer(file, "rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(f"{file.path}: partial rotary embeddings are not Gemma v1")
    try:
        return GemmaConfig(
            vocab_size=embedding.shape[0],
            hidden_size=_integer(file, "embedding_length"),
            intermediate_size=_integer(file, "feed_forward_length"),
            num_hidden_layers=_integer(file, "block_count"),
            num_attention_heads=heads,
            num_key_value_heads=_integer(file, "attention.head_count_kv", heads),
            head_dim=head_dim,
            max_position_embeddings=_integer(file, "context_length"),
            rms_norm_eps=_number(file, "attention.layer_norm_rms_epsilon", 1e-6),
            rope_theta=_number(file, "rope.freq_base", 10000.0),
        )
    except ValueError as exc:
        raise GGUFError(f"{file.path} has an invalid gemma configuration: {exc}") from exc


_MISSING = object()


def _metadata(file: GGUFFile, key: str, default: Any) -> Any:
    full = f"{ARCHITECTURE}.{key}"
    value = file.metadata.get(full, default)
    if value is _MISSING:
        raise GGUFError(f"{file.path} lacks the metadata {full!r}")
    if isinstance(value, (list, np.ndarray)):  # a per-layer array
        values = set(np.asarray(value).tolist())
        if len(values) != 1:
            raise GGUFError(f"{file.path}: {full} varies across layers; Gemma v1 does not")
        (value,) = values
    return value


def _integer(file: GGUFFile, key: str, default: Any = _MISSING) -> int:
    value = _metadata(file, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GGUFError(f"{file.path}: {ARCHITECTURE}.{key} must be an integer, got {value!r}")
    return value


def _number(file: GGUFFile, key: str, default: Any = _MISSING) -> float:
    value = _metadata(file, key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise GGUFError(f"{file.path}: {ARCHITECTURE}.{key} must be a number, got {value!r}")
    return float(value)


def gemma_tensors(file: GGUFFile) -> tuple[dict[str, TensorInfo], list[str]]:
    """The file's tensors by Hugging Face name, checked for unknown names and types."""
    tensors, notes, unknown = {}, [], []
    for name, info in file.tensors.items():
        if name in names.IGNORED_NAMES:
            notes.append(f"{name} ignored: Gemma ties the LM head to token_embd.weight")
            continue
        hf = names.hf_name(name)
        if hf is None:
            unknown.append(name)
        else:
            tensors[hf] = info
    if unknown:
        raise GGUFError(f"{file.path} has tensors that are not Gemma's: {', '.join(unknown[:8])}")
    unsupported = [i for i in tensors.values() if i.ggml_type.name not in DEQUANTIZERS]
    if unsupported:
        kinds = sorted({i.ggml_type.name for i in unsupported})
        raise GGUFError(
            f"{file.path} uses tensor type(s) {', '.join(kinds)} (e.g. {unsupported[0].name}), "
            f"which codegemma does not run; supported: {', '.join(DEQUANTIZERS)}"
        )
    return tensors, notes


def engine_state(file: GGUFFile) -> tuple[dict[str, Weight], list[str]]:
    """Every Gemma tensor in the engine's formats (see the module docstring), with notes."""
    tensors, notes = gemma_tensors(file)
    state: dict[str, Weight] = {}
    counts: Counter[str] = Counter()
    for hf, info in tensors.items():
        if names.is_norm(info.name):
            state[hf] = dequantize(file.raw(info), info.ggml_type).view(info.shape) - 1.0
            continue
        kind = info.ggml_type.name
        counts[kind] += 1
        if kind in FLOAT_TYPES:
            state[hf] = file.float_tensor(info)
        elif kind in VIEWED_TYPES:
            view = q8_0_view if kind == "Q8_0" else q4_0_view
            state[hf] = view(file.raw(info))
        else:
            state[hf] = _requantize(file, info, REQUANTIZED_TYPES[kind])
    return state, notes + [_type_note(kind, count) for kind, count in sorted(counts.items())]


def _requantize(file: GGUFFile, info: TensorInfo, target: str) -> Int8Blocks | Int4Blocks:
    if len(info.shape) != 2:
        raise GGUFError(f"{file.path}: tensor {info.name!r} should be 2-D, is {list(info.shape)}")
    quantize = quantize_int8 if target == "int8" else quantize_int4
    raw = file.raw(info)
    step = max(1, _CHUNK_VALUES // info.shape[1])
    parts = [
        quantize(dequantize(raw[start : start + step], info.ggml_type))
        for start in range(0, info.rows, step)
    ]
    file.release(info)  # the converted copy replaces the file's pages
    if target == "int8":
        return Int8Blocks(torch.cat([p.qs for p in parts]), torch.cat([p.scales for p in parts]))
    return Int4Blocks(torch.cat([p.packed for p in parts]), torch.cat([p.scales for p in parts]))


def _type_note(kind: str, count: int) -> str:
    tensors = f"{count} tensor{'s' if count != 1 else ''}"
    if kind in FLOAT_TYPES:
        return f"{kind}: {tensors} used as stored"
    if kind in VIEWED_TYPES:
        target = VIEWED_TYPES[kind]
        return f"{kind}: {tensors} used as stored ({target} blocks, views of the file)"
    target = REQUANTIZED_TYPES[kind]
    layout = "Q8_0" if target == "int8" else "Q4_0"
    return f"{kind}: {tensors} re-quantized to {target} ({layout} layout): {_WHY[target]}"
