"""Building a ready model and tokenizer from a checkpoint on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import load_hf_weights
from codegemma.checkpoint.hub import resolve_model_dir
from codegemma.checkpoint.quantized import group_blocks, quantization_mode
from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.gguf.loader import load_gguf
from codegemma.model import GemmaForCausalLM
from codegemma.sources.detect import SOURCES, detect_format, load_source
from codegemma.tokenizer import Tokenizer

EMBEDDING = "model.embed_tokens.weight"


def load_model_and_tokenizer(
    reference: str | Path, dtype: torch.dtype, device: torch.device
) -> tuple[GemmaForCausalLM, Tokenizer, Path, list[str]]:
    """Model (eval mode, weights assigned), tokenizer, resolved path and notes on conversions.

    Reads a Hugging Face directory (plain or written by `codegemma quantize`), a GGUF file, or
    a keras-hub preset, Flax checkpoint or Jlama directory (recognised by their contents).
    """
    path = resolve_model_dir(reference)
    notes: list[str] = []
    kind = detect_format(path)
    if kind == "gguf":
        config, state, tokenizer, notes = load_gguf(path)
    elif path.is_file():
        raise CheckpointError(
            f"{path} is a file but not a GGUF model; give a GGUF file or a model directory "
            "(with config.json, model.safetensors and tokenizer.model or tokenizer.json)"
        )
    elif kind in SOURCES:
        checkpoint = load_source(path, kind)
        config, state, notes = checkpoint.config, checkpoint.state, checkpoint.notes
        tokenizer = Tokenizer.from_file(checkpoint.tokenizer_file)
    else:
        config = GemmaConfig.from_json_file(path / "config.json")
        quantized = quantization_mode(path / "config.json")
        tokenizer = Tokenizer.from_dir(path)
        state = load_hf_weights(path)
        if quantized:
            state = group_blocks(state)
            notes.append(f"weights stored as {quantized} blocks")
    config = _vocab_from_embedding(config, state, tokenizer, path)
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, dtype, device)
    return model.eval(), tokenizer, path, notes


def _vocab_from_embedding(
    config: GemmaConfig, state: dict[str, object], tokenizer: Tokenizer, directory: Path
) -> GemmaConfig:
    """Take the vocabulary size from the embedding rows, which may exceed the tokenizer's."""
    embedding = state.get(EMBEDDING)
    if embedding is None or len(embedding.shape) != 2:
        return config  # assign_weights reports the missing or mis-shaped tensor
    rows = embedding.shape[0]
    if rows < tokenizer.vocab_size:
        raise CheckpointError(
            f"{EMBEDDING} in {directory} has {rows} rows but the tokenizer has "
            f"{tokenizer.vocab_size} tokens: the tokenizer does not belong to these weights"
        )
    return config.replace(vocab_size=rows) if rows != config.vocab_size else config
