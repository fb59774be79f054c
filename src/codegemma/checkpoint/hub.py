"""Turning what the user typed after --model into a local directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub

from codegemma.errors import ModelNotFoundError

# Files the engine reads from a Hugging Face repository; nothing else is downloaded.
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model_dir(reference: str | os.PathLike) -> Path:
    """A local directory for a path or a Hub id (`google/codegemma-2b`), downloading if allowed."""
    path = Path(reference).expanduser()
    if path.exists():
        return path
    text = str(reference)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model path {text!r} does not exist (give a model directory, or a Hugging Face id "
            "such as google/codegemma-2b)"
        )
    return _snapshot(text)


def _snapshot(repo_id: str) -> Path:
    cache = hub_cache_dir()
    offline = _offline()
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=HUB_FILES, cache_dir=cache, local_files_only=offline
        )
    except Exception as exc:  # network, auth, gated-repo and not-in-cache errors all end here
        reason = "offline mode (HF_HUB_OFFLINE is set)" if offline else _short(exc)
        raise ModelNotFoundError(_download_help(repo_id, cache, reason)) from exc
    return Path(folder)


def _short(exc: Exception) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:300]


def _download_help(repo_id: str, cache: Path, reason: str) -> str:
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    return (
        f"model {repo_id!r} is not on this machine and could not be downloaded ({reason}).\n"
        f"To get it, on a machine with internet access (after accepting the model's licence at "
        f"https://huggingface.co/{repo_id}), run:\n"
        f"    hf download {repo_id} --include '*.json' '*.safetensors' tokenizer.model\n"
        f"then copy its cache folder to {folder} on this machine; or download with "
        f"`--local-dir DIR` and pass --model DIR."
    )
