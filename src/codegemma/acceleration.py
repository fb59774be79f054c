"""What makes an engine fast, owned by that engine: kernels, threads, compute dtype."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import torch

from codegemma.errors import InvalidRequestError
from codegemma.model import GemmaForCausalLM
from codegemma.quant.apply import attach_backend, prepare_for_kernels, row_group_count
from codegemma.quant.backends import NativeBackend
from codegemma.quant.native import KernelUnavailable, NativeKernels

KERNEL_CHOICES = ("auto", "native", "torch")


@dataclasses.dataclass
class Acceleration:
    """The engine's choice of kernels and threads, with the cost of preparing them."""

    kernels: str  # "native" (C kernels, float32 activations) or "torch" (plain PyTorch)
    threads: int  # threads for kernels and PyTorch
    build_seconds: float = 0.0  # time spent compiling kernels (0 when cached)
    layout_seconds: float = 0.0  # time spent regrouping quantized weights at load
    regrouped: int = 0  # weights regrouped 16 rows at a time
    note: str = ""  # why "auto" picked what it did
    native: NativeKernels | None = None
    backend: NativeBackend | None = None

    def close(self) -> None:
        if self.native is not None:
            self.native.close()

    def prompt_threads(self) -> contextlib.AbstractContextManager:
        """A context in which PyTorch computes a prompt on the engine's threads (the native
        kernels' decode steps run on their own pool, PyTorch on one thread)."""
        if self.backend is None:
            return contextlib.nullcontext()
        return self.backend.prompt_threads()


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def accelerate(
    model: GemmaForCausalLM, device: torch.device, kernels: str = "auto", threads: int | None = None
) -> Acceleration:
    """Set threads and attach the chosen backend to `model`'s layers."""
    if kernels not in KERNEL_CHOICES:
        raise InvalidRequestError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidRequestError(f"threads must be a positive integer, got {threads!r}")
    threads = threads or default_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)  # the native backend sets 1: it owns the threads
    if kernels == "torch" or device.type != "cpu":
        return _plain(model, threads, "plain PyTorch" if kernels == "torch" else "GPU")
    try:
        native = NativeKernels(threads)
    except KernelUnavailable as exc:
        if kernels == "native":
            raise InvalidRequestError(f"native kernels unavailable: {exc}") from exc
        return _plain(model, threads, f"native kernels unavailable: {exc}")
    if not native.vectorized and kernels == "auto":
        native.close()
        return _plain(model, threads, "CPU lacks AVX2/FMA/F16C: plain PyTorch")
    backend = NativeBackend(native, fast_bf16_gemm=native.bf16_activations)
    started = time.perf_counter()
    stored_grouped = row_group_count(model) if native.row_groups else 0
    regrouped = prepare_for_kernels(model, row_groups=native.row_groups, kernels=native)
    layout_seconds = time.perf_counter() - started
    note = "C kernels"
    if regrouped:
        note += f"; {regrouped} weights regrouped for byte dot products"
    if stored_grouped:
        note += f"; {stored_grouped} weights read in place in 16-row groups"
    attach_backend(model, backend)
    model.compute_dtype = torch.float32
    torch.set_num_threads(1)  # process-wide: PyTorch's own pool would fight the kernels'
    return Acceleration(
        "native",
        threads,
        native.build_seconds,
        layout_seconds,
        regrouped,
        note,
        native,
        backend,
    )


def _plain(model: GemmaForCausalLM, threads: int, note: str) -> Acceleration:
    """Plain PyTorch layers (weights in rows, as that path reads them)."""
    prepare_for_kernels(model, row_groups=False)
    attach_backend(model, None)
    return Acceleration("torch", threads, note=note)
