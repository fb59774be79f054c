"""Choosing the device and the weight dtype; the one table of dtype names."""

from __future__ import annotations

import torch

from codegemma.errors import InvalidRequestError

# The floating dtypes weights are stored in, by the names options and files use.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIASES = {
    "bf16": "bfloat16",
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
}


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16', 'float32', ... as options and reports spell it."""
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or the CPU when none is given."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidRequestError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError("device 'cuda' was requested but no CUDA GPU is available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bfloat16 by default; float32 on request; float16 refused on the CPU."""
    if dtype is None:
        return torch.bfloat16
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype.lower(), dtype.lower())
        if name not in DTYPES:
            raise InvalidRequestError(f"unknown dtype {dtype!r}; use bfloat16 (default) or float32")
        dtype = DTYPES[name]
    if dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise InvalidRequestError(f"unsupported dtype {dtype}; use bfloat16 or float32")
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidRequestError(
            "float16 is refused on the CPU: PyTorch's CPU float16 matrix multiply is about 1000x "
            "slower than bfloat16 here. Use bfloat16 (the default, same memory) or float32."
        )
    return dtype
