"""Random-weight Gemma checkpoints: test fixtures and a demo model for trying the tools.

Their output is noise; they exist so that loading, generation and every interface can run
without downloading real weights.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import torch

from codegemma.checkpoint.hf_dir import save_hf_checkpoint
from codegemma.config import GemmaConfig
from codegemma.model import GemmaForCausalLM
from codegemma.tokenizer_training import train_tokenizer

DEMO_CONFIG = GemmaConfig(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=2048,
)


def random_model(config: GemmaConfig, seed: int = 0) -> GemmaForCausalLM:
    """A model with variance-preserving random weights, like a trained one in scale.

    Linear weights ~ N(0, 1/fan_in), norm weights ~ N(0, 0.1^2), embedding rows ~ N(0, 1/D)
    (the model multiplies them by sqrt(D)). Logits then have a spread like a real model's,
    so numerical comparisons (quantization, kernels, bf16) mean something.
    """
    generator = torch.Generator().manual_seed(seed)
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(noise * 0.1)
            else:  # linear (out, in) and embedding (V, D): both scale by 1/sqrt(dim 1)
                param.copy_(noise / param.shape[1] ** 0.5)
    return model.eval()


def write_random_checkpoint(
    directory: str | Path, config: GemmaConfig, tokenizer_file: str | Path, seed: int = 0
) -> Path:
    """A Hugging Face style directory: config.json, model.safetensors and the tokenizer file."""
    directory = Path(directory)
    save_hf_checkpoint(random_model(config, seed), directory)
    tokenizer_file = Path(tokenizer_file)
    if tokenizer_file.resolve() != (directory / tokenizer_file.name).resolve():
        shutil.copyfile(tokenizer_file, directory / tokenizer_file.name)
    return directory


def make_demo_model(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random model whose tokenizer is trained on this Python's standard library."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_file = train_tokenizer(
        _stdlib_sample(), directory / "tokenizer.model", DEMO_CONFIG.vocab_size
    )
    return write_random_checkpoint(directory, DEMO_CONFIG, tokenizer_file, seed)


def _stdlib_sample(limit_bytes: int = 400_000) -> list[str]:
    """The first Python files of the standard library, in sorted order, up to a size."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return texts
