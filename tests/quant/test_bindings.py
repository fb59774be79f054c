"""The C interface is written once, in csrc/cg_kernels.h: the ctypes declarations are read from
it, and checked here against the compiled library."""

import ctypes
import re

import pytest

from codegemma.quant.bindings import HEADER_FILE, read_header
from codegemma.quant.native import NativeKernels

STRUCTS = ("cg_weight", "cg_layer", "cg_dims", "cg_row")  # cg_struct_size's order


@pytest.fixture(scope="module")
def kernels():
    k = NativeKernels(threads=1)
    yield k
    k.close()


def test_every_declared_function_is_exported_and_bound(kernels):
    header = read_header()
    exported = set(header.functions)
    assert {"cg_matvec", "cg_gemm_groups", "cg_decode_layers", "cg_pool_create"} <= exported
    for name, (restype, argtypes) in header.functions.items():
        function = getattr(kernels._lib, name)  # AttributeError: declared, not exported
        assert function.argtypes == argtypes and function.restype == restype, name


def test_structures_have_the_sizes_the_compiler_gives_them(kernels):
    header = read_header()
    for which, name in enumerate(STRUCTS):
        assert ctypes.sizeof(header.structs[name]) == kernels._lib.cg_struct_size(which), name
    assert [f[0] for f in header.structs["cg_row"]._fields_] == [
        "keys",
        "values",
        "capacity",
        "slot",
    ]


def test_only_the_header_is_exported(kernels, tmp_path):
    # internal helpers (pool_run, quantize_x, ...) stay hidden: Python can call only what the
    # header declares
    for hidden in ("cg_pool_run", "cg_prompt_run", "cg_quantize_x", "cg_round_to_bf16"):
        with pytest.raises(AttributeError):
            getattr(kernels._lib, hidden)


def test_kind_codes_come_from_the_header():
    text = HEADER_FILE.read_text()
    for name in ("CG_KIND_BF16", "CG_KIND_INT8", "CG_KIND_INT4", "CG_KIND_GROUPS"):
        value = int(re.search(rf"#define {name} (\d+)", text).group(1))
        assert read_header().codes[name] == value


def test_a_signature_changed_in_the_header_changes_the_binding():
    text = HEADER_FILE.read_text().replace(
        "int cg_pool_threads(cg_pool *pool);", "int64_t cg_pool_threads(cg_pool *pool, int x);"
    )
    restype, argtypes = read_header().__class__(text).functions["cg_pool_threads"]
    assert restype is ctypes.c_int64 and argtypes == [ctypes.c_void_p, ctypes.c_int]
