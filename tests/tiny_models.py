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
    """A model that emits a fixed token sequence (one per step) whatever the input. Its
    output is no function of the text, so tokens drafted from the text cannot be checked
    against it: engines over it run with `speculate=0`."""

    def __init__(self, config: GemmaConfig, script: list[int]) -> None:
        super().__init__(config)
        self.script = script
        self.steps = 0

    def forward(self, input_ids, *, caches=None, logits_positions=None):
        for cache in caches or ():
            cache.length += input_ids.shape[1]
        token = self.script[min(self.steps, len(self.script) - 1)]
        self.steps += 1
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -10.0)
        logits[:, :, token] = 10.0
        return logits


def train_tiny(model: GemmaForCausalLM, ids: torch.Tensor, steps: int = 150, seed: int = 0):
    """A few hundred AdamW steps on `ids`, so the model predicts like a trained one."""
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add synchronisation
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
        batch = torch.stack([ids[s : s + 65] for s in starts])  # (8, 65)
        logits = model(batch[:, :-1], logits_positions=slice(None))
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for param in model.parameters():
        param.requires_grad_(False)
    torch.set_num_threads(threads)
    return model.eval()


# Text a trained tiny model continues by repeating itself (its greedy output is periodic), so
# tokens drafted from the text are kept: the speculation tests use it.
REPETITIVE = (
    "def area(width, height):\n    return width * height\n\n\n"
    "def volume(width, height, depth):\n    return width * height * depth\n\n\n"
    "def area(width, height):\n    return"
)
