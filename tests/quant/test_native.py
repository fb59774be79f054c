"""The C kernels against independent float computations."""

import numpy as np
import pytest
import torch

from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks, quantize_int4, quantize_int8
from codegemma.quant.native import NativeKernels
from codegemma.quant.row_groups import regroup


@pytest.fixture(scope="module")
def kernels():
    k = NativeKernels(threads=2)
    yield k
    k.close()


def quantized_x(x: torch.Tensor) -> torch.Tensor:
    """x rounded to int8 blocks of 32 (scale max|x|/127, round half away from zero), as float.

    Step by step in IEEE float32 as the kernel's C does (numpy float32 operations round each
    result once): inv = 127 / amax, v = x * inv, q = trunc(v -/+ 0.5). Ties (v exactly k + 0.5)
    do occur, so the rounding must be the kernel's, not merely close to it."""
    blocks = x.numpy().astype(np.float32).reshape(x.shape[0], -1, BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    v = (blocks * inv).astype(np.float32)
    half = np.float32(0.5)
    q = np.trunc(np.where(v < 0, v - half, v + half)).astype(np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    return torch.from_numpy((q * scale).astype(np.float32)).view_as(x)


def weights(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / cols**0.5


@pytest.mark.parametrize("rows_in", [1, 2, 5, 8])
@pytest.mark.parametrize("shape", [(97, 96), (300, 2048)])
def test_bf16_matvec(kernels, rows_in, shape):
    w = weights(*shape, seed=rows_in).bfloat16()
    x = torch.randn(rows_in, shape[1])
    # AVX512-BF16 and AVX2 builds round the activations to bfloat16 first
    rounded = x.bfloat16() if kernels.bf16_activations else x
    expected = rounded.double() @ w.double().T
    assert torch.allclose(kernels.matvec(x, w).double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
@pytest.mark.parametrize("rows_in", [1, 3, 8])
def test_block_matvec_equals_integer_reference(kernels, quantize, rows_in):
    w = quantize(weights(131, 512, seed=rows_in))
    x = torch.randn(rows_in, 512)
    expected = quantized_x(x).double() @ w.dequantize().double().T
    got = kernels.matvec(x, w).double()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    exact = x.double() @ w.dequantize().double().T  # activation rounding costs little
    assert torch.nn.functional.cosine_similarity(got.flatten(), exact.flatten(), dim=0) > 0.9999


def test_interleaved_layout_gives_the_same_numbers(kernels):
    planar = quantize_int8(weights(64, 256, seed=7))
    raw = torch.zeros(64, 8, 34, dtype=torch.uint8)  # GGUF Q8_0: fp16 scale then 32 values
    raw[..., :2] = planar.scales.view(torch.uint8).view(64, 8, 2)
    raw[..., 2:] = planar.qs.view(torch.uint8).view(64, 8, 32)
    interleaved = Int8Blocks(
        raw[..., 2:].view(torch.int8), raw[..., :2].contiguous().view(torch.float16)[..., 0]
    )
    # the scales above are a copy; point them at the raw bytes to exercise strided scales too
    interleaved.scales = raw.view(-1).view(torch.float16).view(64, 8, 17)[..., 0]
    x = torch.randn(2, 256)
    assert torch.equal(kernels.matvec(x, interleaved), kernels.matvec(x, planar))
    packed4 = quantize_int4(weights(64, 256, seed=8))
    raw4 = torch.zeros(64, 8, 18, dtype=torch.uint8)
    raw4[..., :2] = packed4.scales.view(torch.uint8).view(64, 8, 2)
    raw4[..., 2:] = packed4.packed.view(64, 8, 16)
    view4 = Int4Blocks(raw4[..., 2:], raw4.view(-1).view(torch.float16).view(64, 8, 9)[..., 0])
    assert torch.equal(kernels.matvec(x, view4), kernels.matvec(x, packed4))


def test_float32_scales(kernels):
    q = quantize_int8(weights(40, 64, seed=9))
    wide = Int8Blocks(q.qs, q.scales.float())
    x = torch.randn(1, 64)
    assert torch.equal(kernels.matvec(x, wide), kernels.matvec(x, q))


@pytest.mark.parametrize("cols", [320, 8224])
@pytest.mark.parametrize("kind", ["bfloat16", "int8", "int4"])
def test_a_row_does_not_depend_on_its_batch(kernels, kind, cols):
    # Batched decoding must give each sequence the numbers it gets alone (bit for bit),
    # however many rows the kernel handles together (103 rows: odd remainders too; past 8
    # rows of x, tiles of 8 rows against pieces of the weight; past 8192 inputs one row of x
    # meets several weight rows at once).
    w = weights(103, cols, seed=13)
    w = {"bfloat16": w.bfloat16(), "int8": quantize_int8(w), "int4": quantize_int4(w)}[kind]
    x = torch.randn(21, cols, generator=torch.Generator().manual_seed(14))
    alone = torch.cat([kernels.matvec(x[i : i + 1], w) for i in range(21)])
    for size in (2, 3, 5, 8, 9, 16, 21):
        assert torch.equal(kernels.matvec(x[:size], w), alone[:size]), size


def test_thread_count_does_not_change_results(kernels):
    # rows are handed out in chunks to whichever thread is free: the split must not matter
    x = torch.randn(4, 256)
    single = NativeKernels(threads=1)
    try:
        for w in (
            quantize_int4(weights(1000, 256, seed=10)),
            weights(1000, 256, seed=10).bfloat16(),
        ):
            assert torch.equal(single.matvec(x, w), kernels.matvec(x, w))
    finally:
        single.close()


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_dequantize_is_exact(kernels, quantize):
    w = quantize(weights(77, 128, seed=11))
    out = torch.empty(77, 128)
    assert torch.equal(kernels.dequantize(w, out), w.dequantize())


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_dequantize_to_bfloat16_rounds_the_exact_values(kernels, quantize):
    # 2112 columns: rows longer than the kernel's 2048-value staging buffer, with a tail
    w = quantize(weights(45, 2112, seed=12))
    out = torch.empty(45, 2112, dtype=torch.bfloat16)
    assert torch.equal(kernels.dequantize(w, out), w.dequantize().bfloat16())


def test_dequantize_refuses_a_wrong_output(kernels):
    w = quantize_int8(weights(8, 64, seed=0))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.dequantize(w, torch.empty(8, 32))
    with pytest.raises(ValueError, match="float16"):
        kernels.dequantize(w, torch.empty(8, 64, dtype=torch.float16))


def test_many_small_calls_keep_their_results(kernels):
    # the pool's spinning hand-off, called back to back: every call must see its own task
    w = quantize_int8(weights(256, 64, seed=3))
    xs = torch.randn(200, 1, 64)
    got = torch.cat([kernels.matvec(x, w) for x in xs])
    expected = torch.cat([quantized_x(x) @ w.dequantize().T for x in xs])
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_portable_group_code_rejects_more_than_eight_rows(kernels):
    # any number of rows runs (test above); the portable check path stays at 8
    grouped = regroup(quantize_int8(weights(16, 64, seed=0)))
    assert kernels.matvec(torch.randn(9, 64), grouped).shape == (9, 16)
    with pytest.raises(ValueError, match="rejected"):
        kernels.matvec(torch.randn(9, 64), grouped, portable=True)
