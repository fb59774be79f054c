"""The small model shipped inside the package, used when no model is given (see MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path


def default_model_dir() -> Path:
    """The directory holding the default model's config, weights and tokenizer."""
    return Path(__file__).resolve().parent
