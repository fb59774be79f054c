"""Recognising a checkpoint by what it holds (never by its name), and loading the checkpoints
of other systems: the one place that sniffs formats."""

from __future__ import annotations

from pathlib import Path

from codegemma.errors import CheckpointError
from codegemma.gguf.reader import is_gguf_file
from codegemma.sources.base import SourceCheckpoint
from codegemma.sources.flax_checkpoint import find_flax_checkpoint, load_flax_checkpoint
from codegemma.sources.jlama import is_jlama_dir, load_jlama
from codegemma.sources.keras_preset import is_keras_preset, load_keras_preset

# name -> (what it is, for messages; loader)
SOURCES = {
    "keras": ("keras-hub preset", load_keras_preset),
    "flax": ("Flax (gemma library) checkpoint", load_flax_checkpoint),
    "jlama": ("Jlama model directory", load_jlama),
}


def detect_format(path: str | Path) -> str:
    """'gguf' for a file that starts with the GGUF magic (an Ollama blob has no suffix), a
    `detect_source` name for a directory of another system, else 'hf': a Hugging Face
    directory, plain or written by `codegemma quantize` (reading it reports what is wrong)."""
    if is_gguf_file(path):
        return "gguf"
    return detect_source(path) or "hf"


def detect_source(path: str | Path) -> str | None:
    """'keras', 'flax' or 'jlama' for a directory in one of those formats, else None.

    Only small files are read (JSON configs, a safetensors header): a Hugging Face directory,
    a GGUF file or a missing path gives None.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if is_keras_preset(path):
        return "keras"
    if is_jlama_dir(path):
        return "jlama"
    if find_flax_checkpoint(path) is not None:
        return "flax"
    return None


def load_source(path: str | Path, kind: str | None = None) -> SourceCheckpoint:
    """Load a keras-hub preset, Flax checkpoint or Jlama directory (`kind` None: detect it)."""
    kind = kind or detect_source(path)
    if kind not in SOURCES:
        names = ", ".join(description for description, _ in SOURCES.values())
        raise CheckpointError(f"{path} is none of: {names}")
    description, loader = SOURCES[kind]
    checkpoint = loader(Path(path))
    checkpoint.notes.insert(0, f"read as a {description}")
    return checkpoint
