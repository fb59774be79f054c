"""Tiny random Gemma checkpoints and a scripted model, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from codegemma.config import GemmaConfig
from codegemma.model import GemmaForCausalLM
from codegemma.random_model import write_random_checkpoint


def tiny_config(vocab_size: int, **changes) -> GemmaConfig:
    """A 2-layer multi-query config; `changes` override fields."""
    base = GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
    )
    return base.replace(**changes)


def make_checkpoint(
    directory: Path, tokenizer_dir: Path, vocab_size: int, seed: int = 0, **changes
):
    return write_random_checkpoint(
        directory, tiny_config(vocab_size, **changes), tokenizer_dir / "tokenizer.model", seed
    )


class ScriptedModel(GemmaForCausalLM):
    """A model that emits a fixed token sequence (one per step) whatever the input."""

    def __init__(self, config: GemmaConfig, script: list[int]) -> None:
        super().__init__(config)
        self.script = script
        self.steps = 0

    def forward(self, input_ids, *, cache=None, pad=None, logits_positions=None):
        if cache is not None:
            cache.length += input_ids.shape[1]
        token = self.script[min(self.steps, len(self.script) - 1)]
        self.steps += 1
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -10.0)
        logits[:, :, token] = 10.0
        return logits
