"""Prompt-time widening on PyTorch's OpenMP threads: same numbers as the pool, and used only
where the kernels share PyTorch's runtime."""

import ctypes

import pytest
import torch

from codegemma.quant.blocks import quantize_int4, quantize_int8
from codegemma.quant.native import NativeKernels, openmp_runtimes, shares_openmp_runtime
from codegemma.quant.row_groups import regroup

TORCH_GOMP = "/venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1"
PRIVATE_GOMP = "/venv/lib/python3.11/site-packages/sentencepiece.libs/libgomp-6a29c32d.so.1.0.0"


@pytest.fixture(scope="module")
def kernels():
    """Kernels widening on their own pool (False) and on PyTorch's OpenMP threads (True)."""
    pool = NativeKernels(threads=2, share_openmp=False)
    if not pool._lib.cg_has_openmp():
        pool.close()
        pytest.skip("the C compiler here builds without OpenMP")
    both = {False: pool, True: NativeKernels(threads=2, share_openmp=True)}
    yield both
    for k in both.values():
        k.close()


def weights(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / cols**0.5


def widen_both_ways(kernels, weight, dtype):
    outs = []
    for shared in (False, True):
        assert kernels[shared].shares_openmp == shared
        outs.append(kernels[shared].dequantize(weight, torch.empty(weight.shape, dtype=dtype)))
    return outs


@pytest.mark.parametrize("layout", ["blocks", "row groups"])
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_openmp_widening_equals_the_pool(kernels, layout, quantize, dtype):
    # 1040 rows: 65 row groups, enough for both paths to split the work between threads
    weight = quantize(weights(1040, 96, seed=3))
    exact = weight.dequantize()
    if layout == "row groups":
        weight = regroup(weight)
    pool, shared = widen_both_ways(kernels, weight, dtype)
    assert torch.equal(pool, shared)
    assert torch.equal(shared, exact.to(dtype))


def test_openmp_widening_of_bfloat16_weights(kernels):
    weight = weights(300, 128, seed=4).bfloat16()
    pool, shared = widen_both_ways(kernels, weight, torch.float32)
    assert torch.equal(pool, shared) and torch.equal(shared, weight.float())


def test_shared_runtime_needs_pytorchs_gnu_runtime_and_nothing_new():
    assert shares_openmp_runtime({TORCH_GOMP}, {TORCH_GOMP})
    # a library's private, renamed copy does not stop the kernels using PyTorch's
    assert shares_openmp_runtime({TORCH_GOMP, PRIVATE_GOMP}, {TORCH_GOMP, PRIVATE_GOMP})
    # loading the kernels mapped a second runtime: PyTorch's threads are not theirs
    assert not shares_openmp_runtime({PRIVATE_GOMP}, {PRIVATE_GOMP, "/usr/lib/libgomp.so.1"})
    assert not shares_openmp_runtime(set(), {"/usr/lib/libgomp.so.1"})
    # PyTorch on Intel's or LLVM's runtime
    intel = "/opt/intel/lib/libiomp5.so"
    assert not shares_openmp_runtime({TORCH_GOMP, intel}, {TORCH_GOMP, intel})
    assert not shares_openmp_runtime(set(), set())


def test_runtimes_are_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f10 r-xp 00000000 08:01 123  " + TORCH_GOMP + "\n"
        "7f10-7f20 rw-p 00000000 00:00 0 \n"
        "7f20-7f30 r-xp 00000000 08:01 456  /usr/lib/libiomp5.so\n"
        "7f30-7f40 r-xp 00000000 08:01 789  /usr/lib/libc.so.6\n"
        "7f40-7f50 rw-p 00000000 00:00 0    [heap]\n"
    )
    assert openmp_runtimes(maps) == {TORCH_GOMP, "/usr/lib/libiomp5.so"}
    assert openmp_runtimes(tmp_path / "missing") == set()


def test_the_switch_refuses_kernels_built_without_openmp(kernels, monkeypatch):
    real = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", lambda path: _NoOpenMP(real(path)))
    with pytest.raises(ValueError, match="without OpenMP"):
        NativeKernels(threads=2, share_openmp=True)
    NativeKernels(threads=2).close()  # by default: off, without asking


class _NoOpenMP:
    """The library as a build without OpenMP shows itself."""

    def __init__(self, lib):
        self._lib = lib
        self.cg_has_openmp = _Returns(0)

    def __getattr__(self, name):
        return getattr(self._lib, name)


class _Returns:
    """A stand-in C function (its restype and argtypes may be set) that returns `value`."""

    def __init__(self, value):
        self.value = value

    def __call__(self, *args):
        return self.value
