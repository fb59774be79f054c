"""Importing the packages of optional extras, with a message naming the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from codegemma.errors import CodeGemmaError, MissingExtraError


def require(
    module: str, extra: str, purpose: str, error: type[CodeGemmaError] = MissingExtraError
) -> ModuleType:
    """Import `module`, or raise `error` telling which codegemma extra installs it.

    Checkpoint readers pass `CheckpointError`: to their callers a missing reader is one more
    reason the checkpoint cannot be loaded.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(
            f"{purpose} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'codegemma[{extra}]'"
        ) from exc
