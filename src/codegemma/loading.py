"""Building a ready model and tokenizer from a checkpoint on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import load_hf_weights
from codegemma.checkpoint.hub import resolve_model_dir
from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.model import GemmaForCausalLM
from codegemma.quant.checkpoint import group_blocks, quantization_mode
from codegemma.sources.detect import detect_source, load_source
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
    if path.is_file():
        if not _is_gguf(path):
            raise CheckpointError(
                f"{path} is a file but not a GGUF model; give a GGUF file or a model directory "
                "(with config.json, model.safetensors and tokenizer.model or tokenizer.json)"
            )
        from codegemma.gguf.loader import load_gguf

        config, state, tokenizer, notes = load_gguf(path)
    elif (source := detect_source(path)) is not None:
        checkpoint = load_source(path, source)
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


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


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


def save_hf_checkpoint(model: GemmaForCausalLM, directory: str | Path) -> None:
    """Write `config.json` and `model.safetensors` in the Hugging Face layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
