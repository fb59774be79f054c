"""Block formats against the gguf package's reference quantizers (the test oracle)."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")  # installed with the test extra

from codegemma.quant.blocks import Int4Blocks, Int8Blocks, quantize_int4, quantize_int8  # noqa: E402

Q8_0, Q4_0 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0


def weights(rows=48, cols=256, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def as_gguf_q8(blocks: Int8Blocks) -> np.ndarray:
    rows, cols = blocks.shape
    out = np.zeros((rows, cols // 32, 34), dtype=np.uint8)
    out[..., :2] = blocks.scales.numpy().astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    out[..., 2:] = blocks.qs.numpy().view(np.uint8).reshape(rows, -1, 32)
    return out.reshape(rows, -1)


def as_gguf_q4(blocks: Int4Blocks) -> np.ndarray:
    rows, cols = blocks.shape
    out = np.zeros((rows, cols // 32, 18), dtype=np.uint8)
    out[..., :2] = blocks.scales.numpy().astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    out[..., 2:] = blocks.packed.numpy().reshape(rows, -1, 16)
    return out.reshape(rows, -1)


@pytest.mark.parity
def test_int8_is_bit_exact_with_gguf_q8_0():
    w = weights()
    ours = as_gguf_q8(quantize_int8(w))
    assert np.array_equal(ours, gguf.quants.quantize(w.numpy(), Q8_0))


@pytest.mark.parity
def test_dequantize_equals_gguf_for_both_formats():
    w = weights(seed=1)
    q8, q4 = quantize_int8(w), quantize_int4(w)
    assert np.array_equal(q8.dequantize().numpy(), gguf.quants.dequantize(as_gguf_q8(q8), Q8_0))
    assert np.array_equal(q4.dequantize().numpy(), gguf.quants.dequantize(as_gguf_q4(q4), Q4_0))


@pytest.mark.parity
def test_int4_error_never_exceeds_plain_q4_0():
    w = weights(rows=64, cols=512, seed=2)
    ours = ((quantize_int4(w).dequantize() - w) ** 2).sum()
    reference = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), Q4_0), Q4_0)
    plain = ((torch.from_numpy(reference) - w) ** 2).sum()
    assert ours <= plain
    assert ours < 0.95 * plain  # the scale search measurably helps on Gaussian weights


@pytest.mark.parity
def test_interleaved_gguf_bytes_read_in_place():
    w = weights(seed=3)
    raw8 = torch.from_numpy(gguf.quants.quantize(w.numpy(), Q8_0)).view(48, -1, 34)
    view8 = Int8Blocks(
        raw8[..., 2:].view(torch.int8), raw8[..., :2].contiguous().view(torch.float16)[..., 0]
    )
    assert view8.qs.data_ptr() == raw8.data_ptr() + 2  # a view of the file bytes, no copy
    assert np.array_equal(
        view8.dequantize().numpy(), gguf.quants.dequantize(raw8.numpy().reshape(48, -1), Q8_0)
    )
    raw4 = torch.from_numpy(gguf.quants.quantize(w.numpy(), Q4_0)).view(48, -1, 18)
    view4 = Int4Blocks(raw4[..., 2:], raw4[..., :2].contiguous().view(torch.float16)[..., 0])
    assert np.array_equal(
        view4.dequantize().numpy(), gguf.quants.dequantize(raw4.numpy().reshape(48, -1), Q4_0)
    )
    assert view4.shape == (48, 256)


def test_take_rows_matches_dequantize():
    q = quantize_int4(weights(seed=4))
    rows = torch.tensor([5, 0, 47])
    assert torch.equal(q.take_rows(rows), q.dequantize()[rows])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Int8Blocks(torch.zeros(4, 40, dtype=torch.int8), torch.zeros(4, 1)),
        lambda: Int8Blocks(torch.zeros(4, 64, dtype=torch.uint8), torch.zeros(4, 2)),
        lambda: Int4Blocks(torch.zeros(4, 32, dtype=torch.uint8), torch.zeros(4, 3)),
        lambda: quantize_int8(torch.zeros(3, 33)),
    ],
)
def test_bad_shapes_are_refused(make):
    with pytest.raises(ValueError):
        make()
