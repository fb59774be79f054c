"""Choosing the device and the weight dtype."""

from __future__ import annotations

import torch

from codegemma.errors import InvalidRequestError

_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


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
        if dtype.lower() not in _DTYPE_NAMES:
            raise InvalidRequestError(f"unknown dtype {dtype!r}; use bfloat16 (default) or float32")
        dtype = _DTYPE_NAMES[dtype.lower()]
    if dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise InvalidRequestError(f"unsupported dtype {dtype}; use bfloat16 or float32")
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidRequestError(
            "float16 is refused on the CPU: PyTorch's CPU float16 matrix multiply is about 1000x "
            "slower than bfloat16 here. Use bfloat16 (the default, same memory) or float32."
        )
    return dtype
