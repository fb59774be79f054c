"""The C matrix-vector kernels: compiled once per machine with the system C compiler, cached.

The shared library has no Python or torch dependency, so it builds in about a second with
`cc -O3 -march=native` and is called through ctypes on tensor data pointers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from codegemma.cpu import cpu_signature
from codegemma.quant.bindings import kernel_header
from codegemma.quant.blocks import BLOCK, Int4Blocks, Int8Blocks
from codegemma.quant.row_groups import GROUP, RowGroups

# the kernels' sources and headers (csrc/cg_kernels.h is the interface both sides read)
CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-fPIC", "-shared", "-pthread", "-std=c11", f"-I{CSRC}"]
OPENMP_FLAG = "-fopenmp"  # tried first; compilers without OpenMP build the library without it
_KIND_CODES = {
    torch.bfloat16: "CG_KIND_BF16",
    Int8Blocks: "CG_KIND_INT8",
    Int4Blocks: "CG_KIND_INT4",
}


def sources() -> list[Path]:
    """The C files compiled into the library."""
    return sorted(CSRC.glob("*.c"))


class KernelUnavailable(RuntimeError):
    """No C compiler, or the kernels failed to build on this machine."""


def cache_dir() -> Path:
    """Where compiled kernels are kept (CODEGEMMA_CACHE or ~/.cache/codegemma)."""
    root = os.environ.get("CODEGEMMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "codegemma"
    )
    return Path(root) / "kernels"


def build_library(verbose: bool = False, arch: str | None = None) -> tuple[Path, float]:
    """Path of the compiled library (building it if needed) and the seconds spent building;
    `arch`: the `-march` to build for (default `target_arch()`)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise KernelUnavailable("no C compiler (cc/gcc) found")
    flags = [*FLAGS, f"-march={_checked_arch(arch or target_arch())}"]
    files = [*sources(), *sorted(CSRC.glob("*.h"))]
    key = hashlib.sha256(
        b"".join(path.read_bytes() for path in files)
        + " ".join([*flags, OPENMP_FLAG]).encode()
        + compiler.encode()
        + platform.machine().encode()
        + cpu_signature().encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"codegemma_kernels_{key}.so"
    if target.exists():
        return target, 0.0
    target.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        print("codegemma: compiling native kernels (once per machine)...", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        for attempt in ([*flags, OPENMP_FLAG], flags):
            try:
                result = subprocess.run(
                    [compiler, *attempt, *map(str, sources()), "-lm", "-o", str(partial)],
                    capture_output=True,
                    text=True,
                )
            except OSError as exc:
                raise KernelUnavailable(f"cannot run the C compiler {compiler}: {exc}") from exc
            if result.returncode == 0:
                break
        if result.returncode != 0:
            names = " + ".join(path.name for path in sources())
            raise KernelUnavailable(f"compiling {names} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, target)  # atomic: concurrent builders never see a partial file
    return target, time.perf_counter() - started


def target_arch() -> str:
    """The CPU the kernels are compiled for: this one (`native`), or the `-march` name in
    CODEGEMMA_KERNEL_ARCH (e.g. `haswell` to run the AVX2 code on an AVX-512 machine)."""
    return os.environ.get("CODEGEMMA_KERNEL_ARCH") or "native"


def _checked_arch(arch: str) -> str:
    if not arch.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise KernelUnavailable(f"{arch!r} is not a -march name (CODEGEMMA_KERNEL_ARCH)")
    return arch


@dataclasses.dataclass
class QuantizedRows:
    """Rows of activations in int8 blocks of 32, made by `quantize_rows` for `bits`-bit
    weights (the block sums carry that weight's offset)."""

    bits: int
    values: torch.Tensor  # int8 (M, K)
    scales: torch.Tensor  # float32 (M, K / 32)
    sums: torch.Tensor  # int32 (M, K / 32): block sums times 128 (int8) or 8 (int4)


class NativeKernels:
    """The loaded library plus one thread pool; owned by an engine, closed with it."""

    def __init__(
        self,
        threads: int,
        verbose: bool = False,
        arch: str | None = None,
        share_openmp: bool | None = None,
    ) -> None:
        path, self.build_seconds = build_library(verbose, arch)
        runtimes_before = openmp_runtimes()
        lib = ctypes.CDLL(str(path))
        # prompt-time widening may run on PyTorch's OpenMP threads only when loading the
        # library brought no second OpenMP runtime into the process (see prompt_run)
        shared = shares_openmp_runtime(runtimes_before, openmp_runtimes())
        kernel_header().bind(lib)  # every signature as csrc/cg_kernels.h declares it
        self.isa = lib.cg_isa().decode()  # what the build uses, for reports
        self.arch = arch or target_arch()
        self.vectorized = bool(lib.cg_has_avx2())
        # bfloat16 dot-product units (AVX512-BF16 CPUs): bfloat16 GEMMs for prompts pay off
        self.bf16_dot = bool(lib.cg_bf16_dot())
        # bfloat16 weights' matrix-vector products round x to bfloat16 (AVX512-BF16 and AVX2
        # builds; float32 x on AVX-512 without BF16 and in portable C)
        self.bf16_activations = bool(lib.cg_bf16_activations())
        # quantized weights regrouped 16 rows at a time pay off (byte dot products, VNNI)
        self.row_groups = bool(lib.cg_row_groups())
        self._lib = lib
        self.threads = threads
        self._pool = lib.cg_pool_create(threads)
        # prompt-time widening on PyTorch's OpenMP threads (else on the pool): as asked, or
        # None: where loading the library shared PyTorch's runtime; the same numbers either way
        if share_openmp and not lib.cg_has_openmp():
            raise ValueError("the kernels were built without OpenMP")
        if share_openmp is None:
            share_openmp = shared and bool(lib.cg_has_openmp())
        lib.cg_pool_share_openmp(self._pool, int(share_openmp))
        self._shares_openmp = bool(share_openmp)
        # activations in int8 / bfloat16 for one call, reused (calls come from one thread,
        # as the pool takes one task at a time)
        self._scratch = torch.empty(0, dtype=torch.uint8)

    @property
    def shares_openmp(self) -> bool:
        """Whether prompt-time widening runs on PyTorch's OpenMP threads (else on the pool),
        fixed at construction (`share_openmp`)."""
        return self._shares_openmp

    def close(self) -> None:
        if getattr(self, "_pool", None):
            self._lib.cg_pool_destroy(self._pool)
            self._pool = None

    def __del__(self) -> None:
        self.close()

    def matvec(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | Int8Blocks | Int4Blocks | RowGroups,
        portable: bool = False,
    ) -> torch.Tensor:
        """x (M, K) float32, weight (N, K) -> (M, N) float32, any M: past 8 rows, the rows of
        x go 8 at a time past each piece of the weight while it is in the cache (each row the
        numbers it gets alone). `portable` runs row groups through the plain C loops (what
        CPUs without VNNI would run; M <= 8)."""
        if x.dim() != 2 or x.shape[1] != weight.shape[1]:
            shapes = f"x {list(x.shape)}, weight {list(weight.shape)}"
            raise ValueError(f"matvec rejected shapes {shapes}")
        M, K = x.shape
        N = weight.shape[0]
        x = x.contiguous()
        y = torch.empty((M, N), dtype=torch.float32)
        if isinstance(weight, RowGroups):
            return self._matvec_groups(x, weight, y, portable)
        layout = weight_layout(weight)
        scratch = self._scratch_bytes(_rows_scratch(M, K))
        status = self._lib.cg_matvec(
            self._pool,
            layout[0],
            *layout[1:],
            x.data_ptr(),
            y.data_ptr(),
            M,
            N,
            K,
            scratch.data_ptr(),
        )
        if status != 0:
            raise ValueError(f"matvec rejected shapes x {list(x.shape)}, weight {[N, K]}")
        return y

    def decode_work_floats(self, dims, rows: int, max_slot: int) -> int:
        """Floats of work memory `decode_layers` needs (dims: a cg_dims structure)."""
        return self._lib.cg_decode_work_floats(ctypes.byref(dims), rows, max_slot)

    def decode_layers(
        self,
        layers,
        count: int,
        dims,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rows,
        work: torch.Tensor,
        widest_input: int,
    ) -> None:
        """Run every row of x (M, D) through `count` layers in place; rows: M cg_row structures
        (each row's cache and slot) (decode_step.c)."""
        M = x.shape[0]
        # what a projection of the widest input needs, in either layout
        need = max(_rows_scratch(M, widest_input), _groups_scratch(M, widest_input))
        scratch = self._scratch_bytes(need)
        status = self._lib.cg_decode_layers(
            self._pool,
            layers,
            count,
            ctypes.byref(dims),
            x.data_ptr(),
            M,
            cos.data_ptr(),
            sin.data_ptr(),
            rows,
            work.data_ptr(),
            scratch.data_ptr(),
        )
        if status != 0:
            raise ValueError("the decode step rejected its arguments")

    def _scratch_bytes(self, size: int) -> torch.Tensor:
        if self._scratch.numel() < size:
            self._scratch = torch.empty(size, dtype=torch.uint8)
        return self._scratch

    def _matvec_groups(
        self, x: torch.Tensor, weight: RowGroups, y: torch.Tensor, portable: bool
    ) -> torch.Tensor:
        (M, K), N = x.shape, weight.shape[0]
        scratch = self._scratch_bytes(_groups_scratch(M, K))
        status = self._lib.cg_matvec_groups(
            self._pool,
            weight.bits,
            weight.values.data_ptr(),
            weight.scales.data_ptr(),
            int(weight.scales.dtype == torch.float32),
            x.data_ptr(),
            y.data_ptr(),
            M,
            N,
            K,
            scratch.data_ptr(),
            int(portable),
        )
        if status != 0:
            raise ValueError(f"matvec rejected shapes x {list(x.shape)}, weight {[N, K]}")
        return y

    def quantize_rows(self, x: torch.Tensor, bits: int) -> QuantizedRows:
        """x (M, K) float32 in int8 blocks of 32, for `gemm_groups` with `bits`-bit weights
        (the same rounding as the matrix-vector kernels), on every thread."""
        if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] % BLOCK or bits not in (8, 4):
            raise ValueError(f"quantize_rows takes float32 (M, K) with K % 32 == 0, not {x}")
        x = x.contiguous()
        M, K = x.shape
        rows = self.empty_rows(M, K, bits)
        status = self._lib.cg_quantize_rows(
            self._pool,
            x.data_ptr(),
            M,
            K,
            128 if bits == 8 else 8,
            rows.values.data_ptr(),
            rows.scales.data_ptr(),
            rows.sums.data_ptr(),
        )
        if status != 0:
            raise ValueError(f"quantize_rows rejected x {list(x.shape)}")
        return rows

    @staticmethod
    def empty_rows(count: int, width: int, bits: int) -> QuantizedRows:
        """Uninitialised quantized rows (count, width), to be filled slice by slice."""
        blocks = width // BLOCK
        return QuantizedRows(
            bits,
            torch.empty(count, width, dtype=torch.int8),
            torch.empty(count, blocks, dtype=torch.float32),
            torch.empty(count, blocks, dtype=torch.int32),
        )

    def gemm_groups(self, x: QuantizedRows, weight: RowGroups, out: torch.Tensor) -> torch.Tensor:
        """out (M, N) float32 = x @ weight^T, for any M, reading each group of weight rows
        from memory once; `out` may be a column slice of a wider matrix (rows contiguous).
        Row m equals `matvec` of row m alone, bit for bit."""
        (M, K), N = x.values.shape, weight.shape[0]
        if (
            weight.shape[1] != K
            or x.bits != weight.bits
            or out.dtype != torch.float32
            or tuple(out.shape) != (M, N)
            or out.stride(1) != 1
        ):
            shapes = f"x {[M, K]} ({x.bits} bits), weight {list(weight.shape)} ({weight.bits})"
            raise ValueError(f"gemm_groups rejected {shapes}, out {list(out.shape)}")
        status = self._lib.cg_gemm_groups(
            self._pool,
            weight.bits,
            weight.values.data_ptr(),
            weight.scales.data_ptr(),
            int(weight.scales.dtype == torch.float32),
            x.values.data_ptr(),
            x.scales.data_ptr(),
            x.sums.data_ptr(),
            out.data_ptr(),
            out.stride(0),
            M,
            N,
            K,
        )
        if status != 0:
            raise ValueError(f"gemm_groups rejected x {[M, K]}, weight {list(weight.shape)}")
        return out

    def group_rows(self, rows: torch.Tensor, out: torch.Tensor, word: int, flip: int = 0) -> None:
        """Regroup `rows` (16 G, blocks, block bytes) into `out`, contiguous (G, words, 16) of
        `word`-byte words (2 or 4) with words = blocks * block bytes / word: word w of row
        16g + r lands at out[g, w, r], xor `flip`. The rows' last dimension must be
        contiguous; rows and blocks may lie any number of bytes apart."""
        if rows.dim() != 3:
            raise ValueError(
                f"group_rows takes (rows, blocks, block bytes), not {list(rows.shape)}"
            )
        size = rows.element_size()
        count, blocks, block_bytes = rows.shape[0], rows.shape[1], rows.shape[2] * size
        words = blocks * block_bytes // word
        if (
            rows.stride(2) != 1
            or block_bytes % word
            or count % GROUP
            or not out.is_contiguous()
            or out.numel() * out.element_size() != count * words * word
        ):
            raise ValueError(f"cannot regroup rows {list(rows.shape)} into {list(out.shape)}")
        status = self._lib.cg_group_rows(
            self._pool,
            rows.data_ptr(),
            rows.stride(0) * size,
            rows.stride(1) * size,
            block_bytes // word,
            blocks,
            word,
            flip,
            out.data_ptr(),
            count,
        )
        if status != 0:
            raise ValueError("group_rows rejected its arguments")

    def dequantize(
        self, weight: torch.Tensor | Int8Blocks | Int4Blocks | RowGroups, out: torch.Tensor
    ) -> torch.Tensor:
        """Fill `out` (N, K) with the weight's values, using every thread. `out` is float32,
        or bfloat16 for quantized weights (rounded to nearest even)."""
        if not out.is_contiguous() or tuple(out.shape) != tuple(weight.shape):
            raise ValueError(f"dequantize needs a contiguous {list(weight.shape)} output")
        if isinstance(weight, RowGroups):
            if out.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"dequantize writes float32 or bfloat16, not {out.dtype}")
            status = self._lib.cg_dequantize_groups(
                self._pool,
                weight.bits,
                weight.values.data_ptr(),
                weight.scales.data_ptr(),
                int(weight.scales.dtype == torch.float32),
                out.data_ptr(),
                int(out.dtype == torch.bfloat16),
                *weight.shape,
            )
            if status != 0:
                raise ValueError("dequantize rejected its arguments")
            return out
        if isinstance(weight, torch.Tensor):
            if out.dtype != torch.float32:
                raise ValueError("a bfloat16 weight widens to float32 only")
            _, values, v_row, *_ = weight_layout(weight)
            self._lib.cg_widen_bf16(self._pool, values, v_row, out.data_ptr(), *weight.shape)
            return out
        kind, values, v_row, v_block, scales, s_row, s_block, s_f32 = weight_layout(weight)
        N, K = weight.shape
        if out.dtype == torch.bfloat16:
            dequantize = self._lib.cg_dequantize_bf16
        elif out.dtype == torch.float32:
            dequantize = self._lib.cg_dequantize
        else:
            raise ValueError(f"dequantize writes float32 or bfloat16, not {out.dtype}")
        status = dequantize(
            self._pool,
            kind,
            values,
            v_row,
            v_block,
            scales,
            s_row,
            s_block,
            s_f32,
            out.data_ptr(),
            N,
            K,
        )
        if status != 0:
            raise ValueError("dequantize rejected its arguments")
        return out


def openmp_runtimes(maps_path: Path = Path("/proc/self/maps")) -> set[str]:
    """Files of OpenMP runtimes (GNU, Intel, LLVM) mapped into this process (Linux; elsewhere
    empty)."""
    try:
        lines = maps_path.read_text().splitlines()
    except OSError:
        return set()
    fields = (line.split(maxsplit=5) for line in lines)
    paths = {parts[5].strip() for parts in fields if len(parts) == 6}
    return {path for path in paths if Path(path).name.startswith(("libgomp", "libiomp", "libomp"))}


def shares_openmp_runtime(before: set[str], after: set[str]) -> bool:
    """True when loading the kernels mapped no new OpenMP runtime (their `libgomp.so.1` is one
    already loaded, by PyTorch) and PyTorch cannot be on another runtime (no Intel or LLVM
    one is mapped): the kernels' OpenMP work then runs on PyTorch's own threads. Other
    libraries may carry private, renamed copies of libgomp; those never serve the kernels."""
    gnu = any(Path(path).name.startswith("libgomp") for path in before)
    others = any(not Path(path).name.startswith("libgomp") for path in after)
    return gnu and not others and after == before


def _rows_scratch(M: int, K: int) -> int:
    """Scratch bytes of `cg_matvec` for x (M, K): an int8 copy of x plus one float scale per
    block (for integer dot products), or a bfloat16 copy of x (bfloat16 weights)."""
    return M * K * 4 + M * (K // BLOCK) * 4 + 64


def _groups_scratch(M: int, K: int) -> int:
    """Scratch bytes of `cg_matvec_groups` for x (M, K): an int8 copy of x, a float scale and
    an int32 block sum per block of 32."""
    return M * K + M * (K // BLOCK) * 8 + 64


def weight_layout(weight) -> tuple:
    """(kind, values ptr, row stride, block stride, scales ptr, row stride, block stride, f32)."""
    if isinstance(weight, torch.Tensor):
        if weight.dtype != torch.bfloat16 or weight.stride(1) != 1:
            raise ValueError("native matvec takes bfloat16 weights with contiguous rows")
        bf16 = kernel_header().codes["CG_KIND_BF16"]
        return (bf16, weight.data_ptr(), weight.stride(0) * 2, 0, None, 0, 0, 0)
    values = weight.qs if isinstance(weight, Int8Blocks) else weight.packed
    block_bytes = BLOCK if isinstance(weight, Int8Blocks) else BLOCK // 2
    if values.stride(-1) != 1:
        raise ValueError("block values must be contiguous within a block")
    v_block = values.stride(1) if values.dim() == 3 else block_bytes
    scales = weight.scales
    size = scales.element_size()
    return (
        kernel_header().codes[_KIND_CODES[type(weight)]],
        values.data_ptr(),
        values.stride(0),
        v_block,
        scales.data_ptr(),
        scales.stride(0) * size,
        scales.stride(1) * size,
        int(scales.dtype == torch.float32),
    )
