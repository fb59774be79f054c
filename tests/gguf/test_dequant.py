"""ggml block dequantization against gguf-py's numpy reference (the independent oracle)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize as reference_dequantize

from codegemma.gguf.dequant import DEQUANTIZERS, dequantize, q4_0_view, q8_0_view
from codegemma.gguf.ggml_types import GGML_TYPES, TYPES_BY_NAME
from codegemma.gguf.reader import GGUFError
from codegemma.quant.blocks import Int4Blocks, Int8Blocks

pytestmark = pytest.mark.parity  # checked against another library

# Byte offsets of the float16 scale fields in each block type. Random bytes there would often
# be inf/NaN; real files hold finite scales, so those fields get finite random values.
_SCALE_FIELDS = {
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}
_QUANTIZED = tuple(_SCALE_FIELDS)


def random_blocks(name: str, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random rows (rows, blocks_per_row * type_size) of a block type, with finite scales."""
    kind = TYPES_BY_NAME[name]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (rows * blocks_per_row, kind.type_size), dtype=np.uint8)
    for at in _SCALE_FIELDS[name]:
        scales = (rng.standard_normal(len(data)) * 0.01).astype(np.float16)
        data[:, at : at + 2] = scales.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, -1)


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.int32)


@pytest.mark.parametrize("name", _QUANTIZED)
def test_quantized_types_match_gguf_reference_bit_for_bit(name):
    raw = random_blocks(name, rows=8, blocks_per_row=512 // TYPES_BY_NAME[name].block_size)
    expected = reference_dequantize(raw, gguf.GGMLQuantizationType[name])
    got = dequantize(torch.from_numpy(raw), TYPES_BY_NAME[name]).numpy()
    assert got.shape == expected.shape == (8, 512)
    np.testing.assert_array_equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_types_match_gguf_reference(name):
    values = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    stored = gguf.quants.quantize(values, gguf.GGMLQuantizationType[name])
    expected = reference_dequantize(stored, gguf.GGMLQuantizationType[name])
    raw = torch.from_numpy(np.ascontiguousarray(stored).view(np.uint8))
    got = dequantize(raw, TYPES_BY_NAME[name]).numpy()
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def test_hand_made_q4_0_and_q8_0_blocks():
    # Not only agreement with the oracle: the documented layouts give these exact values.
    q8 = np.zeros(34, np.uint8)
    q8[0:2] = np.array([0.5], np.float16).view(np.uint8)
    q8[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    got = dequantize(torch.from_numpy(q8[None]), TYPES_BY_NAME["Q8_0"])
    assert got.tolist() == [[0.5 * q for q in range(-16, 16)]]
    q4 = np.zeros(18, np.uint8)
    q4[0:2] = np.array([2.0], np.float16).view(np.uint8)
    q4[2:] = 0x3A  # every byte: low nibble 10 (elements 0-15), high nibble 3 (elements 16-31)
    got = dequantize(torch.from_numpy(q4[None]), TYPES_BY_NAME["Q4_0"])
    assert got.tolist() == [[4.0] * 16 + [-10.0] * 16]


def test_type_table_matches_gguf_package():
    for qtype, (block_size, type_size) in gguf.GGML_QUANT_SIZES.items():
        if qtype.name == "Q8_1":  # gguf-py still lists the pre-2024 40-byte block
            continue
        ours = GGML_TYPES[int(qtype)]
        assert (ours.name, ours.block_size, ours.type_size) == (qtype.name, block_size, type_size)


def test_every_supported_type_has_a_dequantizer():
    assert set(DEQUANTIZERS) == {"F32", "F16", "BF16", *_QUANTIZED}


def test_unsupported_type_is_named():
    raw = torch.zeros(1, TYPES_BY_NAME["IQ4_NL"].type_size, dtype=torch.uint8)
    with pytest.raises(GGUFError, match="IQ4_NL is not supported"):
        dequantize(raw, TYPES_BY_NAME["IQ4_NL"])


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0"])
def test_block_views_share_the_file_bytes_and_match_the_reference(name):
    raw = torch.from_numpy(random_blocks(name, rows=6, blocks_per_row=4, seed=3))
    blocks = (q8_0_view if name == "Q8_0" else q4_0_view)(raw)
    assert isinstance(blocks, Int8Blocks if name == "Q8_0" else Int4Blocks)
    assert blocks.shape == (6, 128)
    values = blocks.qs if name == "Q8_0" else blocks.packed
    for tensor in (values, blocks.scales):
        # A view, not a copy: same memory as the raw bytes.
        assert tensor.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr()
    expected = reference_dequantize(raw.numpy(), gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(_bits(blocks.dequantize().numpy()), _bits(expected))
