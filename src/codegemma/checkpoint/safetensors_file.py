"""A strict, memory-mapped reader of `.safetensors` files.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
its dtype, shape and byte range, then the raw data. Mapping the file lets every tensor be a view
of the page cache: nothing is read until used and the weights are never held twice.

`save_aligned` writes the same format with every tensor whose size allows it starting on a
64-byte boundary of the file (so of the map), the layout the native kernels read in place.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import torch

from codegemma.errors import CheckpointError
from codegemma.quant.mapped_pages import huge_page_hint

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_MAX_HEADER_BYTES = 100 * 1024 * 1024
ALIGNMENT = 64  # bytes: a cache line, and the width of one AVX-512 load
_WRITE_BYTES = 64 << 20  # bytes written per call


def read_header(path: Path) -> tuple[dict, int]:
    """The parsed JSON header (without `__metadata__`) and the offset where data starts."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is truncated: too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path} is not a safetensors file (header size {header_len})"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) < header_len:
        raise CheckpointError(f"{path} is truncated inside its header")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not an object)")
    header.pop("__metadata__", None)
    return header, 8 + header_len


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> tuple:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry")
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
    shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected or begin < 0:
        raise CheckpointError(
            f"{path}: tensor {name!r} declares shape {list(shape)} ({expected} bytes) "
            f"but a {end - begin}-byte range"
        )
    if end > data_size:
        raise CheckpointError(
            f"{path} is truncated: tensor {name!r} ends at byte {end} of the data section, "
            f"which holds only {data_size} bytes"
        )
    return dtype, shape, begin, end


def load_mapped(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file as a view of a private memory map (copy-on-write, never written)."""
    path = Path(path)
    header, data_start = read_header(path)
    file_size = path.stat().st_size
    data_size = file_size - data_start
    entries = {name: _check_entry(path, name, e, data_size) for name, e in header.items()}
    if not entries:
        return {}
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    huge_page_hint(mapped)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = (end - begin) // dtype.itemsize
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + begin)
        tensors[name] = flat.view(shape)
    return tensors


def save_aligned(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` as a safetensors file whose data offsets are multiples of ALIGNMENT.

    The format allows no gaps between tensors, so tensors whose byte size is a multiple of
    ALIGNMENT come first (each then starts aligned) and the rest after them; the header is
    padded with spaces (as the format allows) so that the data starts aligned too.
    """
    names = {dtype: name for name, dtype in DTYPES.items()}
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    order = sorted(tensors, key=lambda name: (sizes[name] % ALIGNMENT != 0, name))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in names:
            raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}, not storable")
        end = offset + sizes[name]
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            data = tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            for start in range(0, data.numel(), _WRITE_BYTES):
                f.write(data[start : start + _WRITE_BYTES].numpy().data)
