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
from codegemma.tokenizer import Tokenizer

EMBEDDING = "model.embed_tokens.weight"


def load_model_and_tokenizer(
    reference: str | Path, dtype: torch.dtype, device: torch.device
) -> tuple[GemmaForCausalLM, Tokenizer, Path]:
    """Model (eval mode, weights assigned) and tokenizer of a Hugging Face style directory."""
    directory = resolve_model_dir(reference)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file; give the model directory (with config.json, "
            "model.safetensors and tokenizer.model or tokenizer.json)"
        )
    config = GemmaConfig.from_json_file(directory / "config.json")
    tokenizer = Tokenizer.from_dir(directory)
    state = load_hf_weights(directory)
    config = _vocab_from_embedding(config, state, tokenizer, directory)
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, dtype, device)
    return model.eval(), tokenizer, directory


def _vocab_from_embedding(
    config: GemmaConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer, directory: Path
) -> GemmaConfig:
    """Take the vocabulary size from the embedding rows, which may exceed the tokenizer's."""
    embedding = state.get(EMBEDDING)
    if embedding is None or embedding.dim() != 2:
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
