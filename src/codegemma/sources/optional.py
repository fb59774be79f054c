"""Importing the optional readers some checkpoint formats need, with a message naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from codegemma.errors import CheckpointError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise a CheckpointError telling which codegemma extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CheckpointError(
            f"{purpose} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'codegemma[{extra}]'"
        ) from exc
