"""Quantized weights regrouped 16 rows at a time: exact layout, kernels, engine, page release."""

import ctypes
import ctypes.util
import dataclasses
import mmap
import os

import pytest
import torch

import codegemma
from codegemma.quant.apply import prepare_for_kernels, quantizable
from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks, quantize_int4, quantize_int8
from codegemma.quant.mapped_pages import FileMappings, drop_cached, huge_page_empty
from codegemma.quant.native import NativeKernels
from codegemma.quant.row_groups import RowGroups, can_group, regroup

QUANTIZERS = [quantize_int8, quantize_int4]
IDS = ["int8", "int4"]


@pytest.fixture(scope="module")
def kernels():
    k = NativeKernels(threads=2)
    yield k
    k.close()


def weights(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / cols**0.5


def gguf_like(planar):
    """The same blocks as GGUF stores them (scale then values, per block) as strided views."""
    out, inp = planar.shape
    nb = inp // BLOCK
    values = planar.qs.view(torch.uint8) if isinstance(planar, Int8Blocks) else planar.packed
    width = values.shape[-1] // nb
    raw = torch.zeros(out, nb, 2 + width, dtype=torch.uint8)
    raw[..., :2] = planar.scales.view(torch.uint8).view(out, nb, 2)
    raw[..., 2:] = values.reshape(out, nb, width)
    scales = raw[..., :2].view(torch.float16)[..., 0]
    if isinstance(planar, Int8Blocks):
        return Int8Blocks(raw[..., 2:].view(torch.int8), scales)
    return Int4Blocks(raw[..., 2:], scales)


def in_layout(planar, layout):
    """The planar blocks as the named source layout stores them."""
    if layout == "gguf":
        return gguf_like(planar)
    if layout == "float32 scales":
        return dataclasses.replace(planar, scales=planar.scales.float())
    return planar


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("layout", ["planar", "gguf", "float32 scales"])
def test_regrouping_keeps_every_value(quantize, layout):
    planar = quantize(weights(48, 256, seed=1))
    source = in_layout(planar, layout)
    grouped = regroup(source)
    assert grouped.shape == planar.shape and grouped.scales.dtype == source.scales.dtype
    assert torch.equal(grouped.dequantize(), source.dequantize())
    rows = torch.tensor([47, 0, 16, 5, 5])
    assert torch.equal(grouped.take_rows(rows), source.take_rows(rows))
    back = grouped.to_blocks()
    assert type(back) is type(planar) and torch.equal(back.dequantize(), planar.dequantize())


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("layout", ["planar", "gguf", "float32 scales"])
def test_native_regrouping_moves_the_same_bytes(kernels, quantize, layout):
    # 1040 rows: a full 1024-row slice shared by both threads, then a one-group remainder
    planar = quantize(weights(1040, 96, seed=11))
    source = in_layout(planar, layout)
    native = regroup(source, kernels=kernels)
    reference = regroup(source)
    assert torch.equal(native.values, reference.values)
    assert torch.equal(native.scales, reference.scales)
    assert torch.equal(native.dequantize(), source.dequantize())


def test_native_regrouping_refuses_rows_it_cannot_group(kernels):
    out = torch.empty(1, 2, 16, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="cannot regroup"):
        kernels.group_rows(torch.zeros(8, 2, 4, dtype=torch.uint8), out, 4)
    with pytest.raises(ValueError, match="group_rows takes"):
        kernels.group_rows(torch.zeros(16, 8, dtype=torch.uint8), out, 4)


def test_layout_is_sixteen_rows_side_by_side():
    # Row r's int8 bytes of block 0 sit at offset 4r of each 64-byte run, stored as q + 128.
    qs = torch.arange(16 * 32, dtype=torch.int64).remainder(255).sub(127).to(torch.int8)
    planar = Int8Blocks(qs.view(16, 32), torch.ones(16, 1, dtype=torch.float16))
    grouped = regroup(planar)
    for row in (0, 9, 15):
        for run in range(8):
            stored = grouped.values[0, 0, run, row]
            expected = qs.view(16, 32)[row, 4 * run : 4 * run + 4].to(torch.int32) + 128
            assert stored.tolist() == expected.tolist()


def test_only_whole_groups_of_block_weights_regroup():
    assert can_group(quantize_int8(weights(32, 64, seed=2)))
    assert not can_group(quantize_int8(weights(40, 64, seed=2)))
    assert not can_group(weights(32, 64, seed=2).bfloat16())
    with pytest.raises(ValueError, match="cannot regroup"):
        regroup(quantize_int4(weights(24, 64, seed=2)))
    with pytest.raises(ValueError, match="values must be"):
        RowGroups(8, torch.zeros(2, 2, 4, 16, 4, dtype=torch.uint8), torch.zeros(2, 2, 16))


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("rows_in", [1, 3, 8])
def test_group_matvec_equals_the_row_kernel(kernels, quantize, rows_in):
    planar = quantize(weights(160, 512, seed=rows_in))
    grouped = regroup(planar)
    x = torch.randn(rows_in, 512, generator=torch.Generator().manual_seed(5))
    expected = kernels.matvec(x, planar)  # same int8 activations, rows reduced one by one
    got = kernels.matvec(x, grouped)
    portable = kernels.matvec(x, grouped, portable=True)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(portable, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("count", [6, 13])  # 13: more rows than one pass takes (8 + 5)
def test_group_matvec_rows_do_not_depend_on_the_batch(kernels, quantize, count):
    grouped = regroup(quantize(weights(64, 256, seed=3)))
    x = torch.randn(count, 256, generator=torch.Generator().manual_seed(6))
    together = kernels.matvec(x, grouped)
    alone = torch.cat([kernels.matvec(x[i : i + 1], grouped) for i in range(count)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_group_gemm_rows_equal_the_matvec_of_each_row(kernels, quantize, scale_dtype):
    # prompts: x quantized once, each group of rows meets 8 rows of x at a time (tiles of
    # 8 + a remainder); every row must be exactly the decode kernel's row
    grouped = regroup(quantize(weights(96, 320, seed=9)))
    grouped = RowGroups(grouped.bits, grouped.values, grouped.scales.to(scale_dtype))
    bits = grouped.bits
    for count in (2, 8, 9, 19):
        x = torch.randn(count, 320, generator=torch.Generator().manual_seed(count))
        wide = torch.full((count, 100 + 96), 7.0)  # the output as a column slice
        got = kernels.gemm_groups(kernels.quantize_rows(x, bits), grouped, wide[:, 100:])
        alone = torch.cat([kernels.matvec(x[i : i + 1], grouped) for i in range(count)])
        assert torch.equal(got, alone) and torch.equal(wide[:, 100:], alone), count
        assert bool((wide[:, :100] == 7.0).all())  # nothing written outside the slice
        reference = x @ grouped.dequantize().T  # float32 activations: close, not equal
        assert torch.allclose(got, reference, rtol=0.05, atol=0.05 * float(reference.std()))


def test_group_gemm_refuses_mismatched_operands(kernels):
    int4 = regroup(quantize_int4(weights(32, 128, seed=4)))
    with pytest.raises(ValueError, match="gemm_groups rejected"):  # rows made for int8
        kernels.gemm_groups(kernels.quantize_rows(torch.randn(3, 128), 8), int4, torch.empty(3, 32))
    with pytest.raises(ValueError, match="gemm_groups rejected"):  # wrong width
        kernels.gemm_groups(kernels.quantize_rows(torch.randn(3, 96), 4), int4, torch.empty(3, 32))
    with pytest.raises(ValueError, match="quantize_rows"):
        kernels.quantize_rows(torch.randn(3, 100), 8)


def test_group_matvec_refuses_a_wrong_width(kernels):
    grouped = regroup(quantize_int4(weights(32, 128, seed=4)))
    with pytest.raises(ValueError, match="matvec rejected"):
        kernels.matvec(torch.randn(1, 96), grouped)


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_dequantize_is_exact(kernels, quantize, dtype):
    planar = quantize(weights(80, 320, seed=8) * 3)
    grouped = regroup(planar)
    out = torch.empty(80, 320, dtype=dtype)
    kernels.dequantize(grouped, out)
    assert torch.equal(out, planar.dequantize(dtype))


def test_engine_regroups_where_the_cpu_has_byte_dot_products(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, quantize="int4", kernels="native")
    plain = codegemma.load(trained_checkpoint, quantize="int4", kernels="torch")
    layers = [m.weight for _, m in quantizable(lm.model)]
    grouped = [w for w in layers if isinstance(w, RowGroups)]
    assert bool(grouped) == lm.acceleration.native.row_groups
    assert lm.weights == "int4"
    embed = lm.model.model.embed_tokens.weight
    ids = lm.tokenizer.encode("def add(a, b):\n    return a + b\n")
    assert torch.equal(
        lm.model.model.embed_tokens(torch.tensor([ids])),
        plain.model.model.embed_tokens(torch.tensor([ids])),
    )
    assert embed is lm.model.model.embed_tokens.weight  # the tied head stays one object
    got, expected = lm.logits(ids), plain.logits(ids)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    assert cosine > 0.9995


def test_regrouping_shares_one_copy_between_tied_modules(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, quantize="int8", kernels="torch")
    before = lm.logits([2, 100, 200, 300])
    assert prepare_for_kernels(lm.model, row_groups=False) == 0
    assert prepare_for_kernels(lm.model, row_groups=True) > 0
    assert torch.allclose(lm.logits([2, 100, 200, 300]), before, atol=1e-5)
    assert isinstance(lm.model.model.embed_tokens.weight, RowGroups)


def test_release_drops_file_pages_and_keeps_values(tmp_path):
    path = tmp_path / "data.bin"
    values = torch.arange(4 * mmap.PAGESIZE, dtype=torch.uint8)
    path.write_bytes(values.numpy().tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensor = torch.frombuffer(mapped, dtype=torch.uint8)
    assert int(tensor.sum()) == int(values.sum())  # pages read in
    released = FileMappings().release(tensor)
    assert released == hasattr(mmap, "MADV_DONTNEED")
    assert torch.equal(tensor, values)  # read again from the file


def _cached_pages(path) -> int:
    """Pages of `path` in the page cache (mincore on a fresh map of it; nothing is read)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    vector = ctypes.create_string_buffer(-(-size // mmap.PAGESIZE))
    base = torch.frombuffer(mapped, dtype=torch.uint8).data_ptr()
    assert libc.mincore(base, size, vector) == 0, ctypes.get_errno()
    return sum(byte & 1 for byte in vector.raw)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise and mincore")
def test_drop_cached_writes_a_file_out_and_drops_its_pages(tmp_path):
    path = tmp_path / "written.bin"
    values = torch.randint(0, 255, (64 * mmap.PAGESIZE,), dtype=torch.uint8)
    path.write_bytes(values.numpy().tobytes())
    assert _cached_pages(path) == 64  # just written: every page is cached
    assert drop_cached(path)
    assert _cached_pages(path) < 8  # gone (the kernel may keep a few under writeback)
    assert path.read_bytes() == values.numpy().tobytes()


def test_release_leaves_anonymous_memory_alone():
    tensor = torch.arange(1 << 20, dtype=torch.int32)
    assert not FileMappings().release(tensor)
    assert torch.equal(tensor, torch.arange(1 << 20, dtype=torch.int32))


def test_huge_page_memory_is_an_ordinary_tensor():
    big = huge_page_empty((3, 1 << 20), torch.int32)  # 12 MB: advised huge pages
    small = huge_page_empty((4, 4), torch.float32)  # below one huge page: plain torch.empty
    big.fill_(7)
    assert big.shape == (3, 1 << 20) and int(big.sum()) == 7 * 3 * (1 << 20)
    assert small.shape == (4, 4) and small.dtype == torch.float32


@pytest.fixture(scope="module")
def avx2_kernels(kernels):
    if not kernels.vectorized:  # haswell code would not even run here
        pytest.skip("kernels built without AVX2: only the portable code runs on this CPU")
    k = NativeKernels(threads=2, arch="haswell")  # AVX2/FMA/F16C, no AVX-512: vpmaddubsw
    yield k
    k.close()


@pytest.mark.parametrize("quantize", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rows_in", [1, 4, 7, 13])
def test_avx2_groups_give_the_same_bits_as_this_cpu(
    kernels, avx2_kernels, quantize, scale_dtype, rows_in
):
    # one file layout for both CPU classes: the AVX2 code (two halves of 8 rows, 16-bit
    # pair products) must reach the same integer block sums and the same float steps as
    # the VNNI code (on an AVX2-only machine both fixtures run the AVX2 code)
    assert avx2_kernels.row_groups
    planar = quantize(weights(96, 1024, seed=rows_in), scale_dtype=scale_dtype)
    grouped = regroup(planar)
    x = torch.randn(rows_in, 1024, generator=torch.Generator().manual_seed(9)) * 3
    expected = kernels.matvec(x, grouped)
    assert torch.equal(avx2_kernels.matvec(x, grouped), expected)
    prompt = torch.empty(rows_in, 96)
    rows = avx2_kernels.quantize_rows(x, grouped.bits)
    assert torch.equal(avx2_kernels.gemm_groups(rows, grouped, prompt), expected)
    assert torch.allclose(expected, kernels.matvec(x, planar), atol=1e-4, rtol=1e-5)
