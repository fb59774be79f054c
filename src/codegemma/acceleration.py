"""What makes an engine fast, owned by that engine: kernels, their switches, threads, the fused
decode step and the compute dtype."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from codegemma.cpu import default_threads, torch_threads
from codegemma.errors import InvalidRequestError
from codegemma.model import GemmaForCausalLM
from codegemma.quant.apply import prepare_for_kernels, row_group_count
from codegemma.quant.backends import NativeBackend
from codegemma.quant.decode_step import DecodeStep
from codegemma.quant.layers import use_native_layers
from codegemma.quant.native import KernelUnavailable, NativeKernels

KERNEL_CHOICES = ("auto", "native", "torch")


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Switches of the native kernels, fixed when an engine is built. Each pair of settings
    gives the same tokens (the tests hold them to the same logits up to float32 rounding)."""

    # One new token per sequence: the whole decoder stack in one C call (decode_step.c);
    # False runs every layer through PyTorch around the same matrix-vector kernels.
    fused_decode: bool = True
    # Prompts through int8 / int4 weights in row groups: a GEMM on the weight bytes, with the
    # activations in int8 blocks as for one token; False widens the weights instead.
    byte_gemm: bool = True
    # Prompt-time widening on PyTorch's own OpenMP threads (True) or the kernels' pool
    # (False); None: where loading the kernels brought no second OpenMP runtime (checked).
    share_openmp: bool | None = None


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
    decode_step: DecodeStep | None = None  # the fused decode step (native, fused_decode)
    options: KernelOptions = KernelOptions()

    def close(self) -> None:
        if self.native is not None:
            self.native.close()

    def prompt_threads(self) -> contextlib.AbstractContextManager:
        """PyTorch on the engine's threads while a prompt is computed (its GEMMs, attention and
        element-wise work are large enough to share), restored afterwards."""
        return torch_threads(self.threads)

    def decode_threads(self) -> contextlib.AbstractContextManager:
        """PyTorch's threads for a decode pass: one where the native kernels' own pool owns
        the cores (PyTorch's would fight it), else the engine's; restored afterwards."""
        return torch_threads(1 if self.native is not None else self.threads)


def accelerate(
    model: GemmaForCausalLM,
    device: torch.device,
    kernels: str = "auto",
    threads: int | None = None,
    options: KernelOptions | None = None,
) -> Acceleration:
    """Choose the kernels and swap their layers into `model`; PyTorch's thread count is left
    as it is (the engine sets it around its own work)."""
    if kernels not in KERNEL_CHOICES:
        raise InvalidRequestError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidRequestError(f"threads must be a positive integer, got {threads!r}")
    threads = threads or default_threads()
    options = options or KernelOptions()
    if kernels == "torch" or device.type != "cpu":
        return _plain(model, threads, "plain PyTorch" if kernels == "torch" else "GPU", options)
    try:
        native = NativeKernels(threads, share_openmp=options.share_openmp)
    except KernelUnavailable as exc:
        if kernels == "native":
            raise InvalidRequestError(f"native kernels unavailable: {exc}") from exc
        return _plain(model, threads, f"native kernels unavailable: {exc}", options)
    except ValueError as exc:  # a switch the kernels cannot honour
        raise InvalidRequestError(f"native kernels: {exc}") from exc
    if not native.vectorized and kernels == "auto":
        native.close()
        return _plain(model, threads, "CPU lacks AVX2/FMA/F16C: plain PyTorch", options)
    return _native(model, native, options)


def _native(model: GemmaForCausalLM, native: NativeKernels, options: KernelOptions):
    backend = NativeBackend(native, fast_bf16_gemm=native.bf16_dot, byte_gemm=options.byte_gemm)
    started = time.perf_counter()
    stored_grouped = row_group_count(model) if native.row_groups else 0
    with torch_threads(native.threads):  # copies PyTorch makes when C cannot regroup
        regrouped = prepare_for_kernels(model, row_groups=native.row_groups, kernels=native)
    layout_seconds = time.perf_counter() - started
    note = "C kernels"
    if regrouped:
        note += f"; {regrouped} weights regrouped for byte dot products"
    if stored_grouped:
        note += f"; {stored_grouped} weights read in place in 16-row groups"
    use_native_layers(model, backend)
    model.compute_dtype = torch.float32
    return Acceleration(
        "native",
        native.threads,
        native.build_seconds,
        layout_seconds,
        regrouped,
        note,
        native,
        backend,
        DecodeStep(native) if options.fused_decode else None,
        options,
    )


def _plain(
    model: GemmaForCausalLM, threads: int, note: str, options: KernelOptions
) -> Acceleration:
    """Plain PyTorch layers (weights in rows, as that path reads them)."""
    with torch_threads(threads):
        prepare_for_kernels(model, row_groups=False)
    return Acceleration("torch", threads, note=note, options=options)
