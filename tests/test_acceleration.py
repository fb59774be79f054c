"""The engine's acceleration: native layers swapped into a plain model from outside, switches
fixed when the engine is built, and PyTorch's thread count set around the engine's own work
and restored (load() leaves it as it found it)."""

import dataclasses

import pytest
import torch

import codegemma
from codegemma.model import MLP, Embedding, Linear
from codegemma.quant.backends import DECODE_ROWS
from codegemma.quant.layers import NativeEmbedding, NativeLinear, NativeMLP

NATIVE = {NativeLinear, NativeEmbedding, NativeMLP}


def test_native_layers_are_swapped_in_from_outside(trained_checkpoint):
    plain = codegemma.load(trained_checkpoint, kernels="torch")
    assert not {type(m) for m in plain.model.modules()} & NATIVE
    assert not hasattr(plain.model.model.layers[0].mlp.up_proj, "backend")
    native = codegemma.load(trained_checkpoint, kernels="native")
    kinds = {type(m) for m in native.model.modules()}
    assert NATIVE <= kinds and not {Linear, MLP, Embedding} & kinds
    names = [name for name, _ in native.model.named_parameters()]
    assert names == [name for name, _ in plain.model.named_parameters()]  # HF names kept


def test_switches_are_fixed_options(trained_checkpoint):
    options = codegemma.KernelOptions(fused_decode=False, byte_gemm=False, share_openmp=False)
    lm = codegemma.load(trained_checkpoint, kernels="native", kernel_options=options)
    assert lm.acceleration.decode_step is None and not lm.acceleration.backend.byte_gemm
    assert not lm.acceleration.native.shares_openmp
    with pytest.raises(dataclasses.FrozenInstanceError):
        lm.acceleration.options.fused_decode = True
    with pytest.raises(AttributeError):
        lm.acceleration.native.shares_openmp = True
    default = codegemma.load(trained_checkpoint, kernels="native")
    assert default.acceleration.decode_step is not None and default.acceleration.backend.byte_gemm


@pytest.mark.parametrize("kernels", ["torch", "native"])
def test_load_and_the_engines_work_leave_the_thread_count(trained_checkpoint, kernels):
    # layer by layer, so that a hook sees the thread count of decode passes too
    options = codegemma.KernelOptions(fused_decode=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        lm = codegemma.load(trained_checkpoint, kernels=kernels, threads=2, kernel_options=options)
        assert torch.get_num_threads() == 3
        seen = []
        layer = lm.model.model.layers[0]
        hook = layer.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        lm.logits(lm.tokenizer.encode("def f(x):\n    return x"))
        assert seen == [2] and torch.get_num_threads() == 3  # a prompt: the engine's threads
        seen.clear()
        prompt = "import os\n" * 12  # prefilled as a prompt (not in the decode pass)
        assert len(lm.tokenizer.encode(prompt)) > DECODE_ROWS
        lm.generate(prompt, max_new_tokens=3)
        lm.embed(["x = 1"])
        hook.remove()
        assert torch.get_num_threads() == 3
        # decode passes beside the native kernels' own pool: PyTorch on one thread
        decode = 1 if lm.acceleration.kernels == "native" else 2
        assert seen == [2, decode, decode, 2]
    finally:
        torch.set_num_threads(before)
