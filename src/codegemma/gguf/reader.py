"""A strict, memory-mapped reader of GGUF files (llama.cpp's model format, versions 2 and 3).

Layout (little-endian): magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata
count; then the metadata key/value pairs; then one record per tensor (name, dims innermost
first, type id, offset); then, padded to `general.alignment` (default 32), the tensor data.
Every read is bounds-checked, so a corrupt or truncated file raises a `GGUFError` naming what
was being read, never an IndexError or a crash in a kernel later. Tensor data is never copied
here: `GGUFFile` hands out views of a private (copy-on-write, never written) memory map.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codegemma.errors import CheckpointError
from codegemma.gguf.ggml_types import GGML_TYPES, GGMLType
from codegemma.quant.mapped_pages import huge_page_hint

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # version 1 used 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# Magic numbers of the pre-GGUF formats, as they appear on disk (written little-endian).
_LEGACY_MAGICS = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}


class GGUFError(CheckpointError):
    """A GGUF file that cannot be read: not GGUF, corrupt, truncated or unsupported."""


# Metadata value types: id -> (struct format, numpy dtype) for the fixed-size ones.
_STRING, _ARRAY = 8, 9
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "<u1"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_FLOAT32, _BOOL = 6, 7
_TORCH_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file."""

    name: str
    shape: tuple[int, ...]  # outermost first, as in torch: a weight is (out, in)
    ggml_type: GGMLType
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def rows(self) -> int:
        """Number of rows: every dimension but the innermost, multiplied."""
        return math.prod(self.shape[:-1])

    @property
    def row_bytes(self) -> int:
        return self.shape[-1] // self.ggml_type.block_size * self.ggml_type.type_size


class GGUFFile:
    """A parsed GGUF file: its metadata, its tensor table and views of its data."""

    def __init__(
        self,
        path: Path,
        version: int,
        metadata: dict[str, Any],
        tensors: dict[str, TensorInfo],
        mapped: mmap.mmap,
    ) -> None:
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors = tensors
        self._mapped = mapped

    def raw(self, info: TensorInfo) -> torch.Tensor:
        """The tensor's bytes as a uint8 view (rows, row_bytes) of the memory map."""
        flat = torch.frombuffer(
            self._mapped, dtype=torch.uint8, count=info.nbytes, offset=info.offset
        )
        return flat.view(info.rows, info.row_bytes)

    def float_tensor(self, info: TensorInfo) -> torch.Tensor:
        """An F32, F16 or BF16 tensor as a view of the memory map, in its stored dtype."""
        dtype = _TORCH_FLOATS.get(info.ggml_type.name)
        if dtype is None:
            raise GGUFError(f"tensor {info.name!r} is {info.ggml_type.name}, not a float type")
        count = info.nbytes // dtype.itemsize
        flat = torch.frombuffer(self._mapped, dtype=dtype, count=count, offset=info.offset)
        return flat.view(info.shape)

    def release(self, info: TensorInfo) -> None:
        """Drop this process's copy of the tensor's pages (after it was converted elsewhere).

        Safe at any time: the map is private and never written, so a page touched again is
        simply read back from the file.
        """
        if not hasattr(mmap, "MADV_DONTNEED"):  # not every platform has madvise
            return
        start = -(-info.offset // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (info.offset + info.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            self._mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


def is_gguf_file(path: str | Path) -> bool:
    """True for a regular file that starts with the GGUF magic (whatever its name)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header, metadata and tensor table of a GGUF file and map its data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            if size < 24:
                head = handle.read(4)
                _check_magic(path, head)
                raise GGUFError(f"{path} is truncated: {size} bytes, too short for a GGUF header")
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            huge_page_hint(mapped)
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc
    _check_magic(path, mapped[:4])
    cursor = _Cursor(mapped, path)
    cursor.take(len(MAGIC), "the magic")
    version = _check_version(path, cursor.scalar(4, "the version"))
    n_tensors = cursor.scalar(10, "the tensor count")
    n_metadata = cursor.scalar(10, "the metadata count")
    # Each metadata pair takes at least 12 bytes and each tensor record at least 24.
    if n_metadata * 12 + n_tensors * 24 > size:
        raise GGUFError(
            f"{path} is corrupt: its header claims {n_tensors} tensors and {n_metadata} "
            f"metadata entries, more than a {size}-byte file can hold"
        )
    metadata = _read_metadata(cursor, n_metadata)
    alignment = _alignment(path, metadata)
    records = [_read_tensor_record(cursor, index) for index in range(n_tensors)]
    data_start = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, shape, type_id, offset in records:
        if name in tensors:
            raise GGUFError(f"{path} is corrupt: tensor {name!r} is listed twice")
        tensors[name] = _tensor_info(
            path, name, shape, type_id, offset, alignment, data_start, size
        )
    return GGUFFile(path, version, metadata, tensors, mapped)


def _check_magic(path: Path, head: bytes) -> None:
    if head == MAGIC:
        return
    legacy = _LEGACY_MAGICS.get(head) or _LEGACY_MAGICS.get(head[::-1])
    if legacy:
        raise GGUFError(
            f"{path} is a legacy {legacy} file from before GGUF (2023); convert it to GGUF "
            "with llama.cpp first"
        )
    raise GGUFError(f"{path} is not a GGUF file: it starts with {head!r}, not {MAGIC!r}")


def _check_version(path: Path, version: int) -> int:
    if version in SUPPORTED_VERSIONS:
        return version
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if swapped in SUPPORTED_VERSIONS:
        raise GGUFError(f"{path} is a big-endian GGUF file; only little-endian files are read")
    raise GGUFError(
        f"{path} has GGUF version {version}; versions {SUPPORTED_VERSIONS[0]} and "
        f"{SUPPORTED_VERSIONS[-1]} are supported"
    )


def _alignment(path: Path, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path}: general.alignment must be a power of two, got {alignment!r}")
    return alignment


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; errors name what was being read."""

    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer = buffer
        self.path = path
        self.pos = 0

    def take(self, count: int, what: str) -> int:
        """Advance past `count` bytes; return where they start."""
        start = self.pos
        if count < 0 or start + count > len(self.buffer):
            raise GGUFError(
                f"{self.path} is truncated or corrupt: {what} needs bytes {start}..{start + count}"
                f" but the file has {len(self.buffer)}"
            )
        self.pos = start + count
        return start

    def scalar(self, value_type: int, what: str) -> Any:
        fmt = _SCALARS[value_type][0]
        start = self.take(struct.calcsize(fmt), what)
        (value,) = struct.unpack_from(fmt, self.buffer, start)
        return value

    def string(self, what: str) -> str:
        length = self.scalar(10, what)
        start = self.take(length, what)
        try:
            return self.buffer[start : start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"{self.path} is corrupt: {what} is not valid UTF-8 ({exc})") from None


def _read_metadata(cursor: _Cursor, count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for index in range(count):
        key = cursor.string(f"the key of metadata entry {index}")
        value_type = cursor.scalar(4, f"the type of metadata {key!r}")
        metadata[key] = _read_value(cursor, value_type, f"metadata {key!r}")
    return metadata


def _read_value(cursor: _Cursor, value_type: int, what: str) -> Any:
    if value_type == _STRING:
        return cursor.string(what)
    if value_type == _ARRAY:
        return _read_array(cursor, what)
    if value_type not in _SCALARS:
        raise GGUFError(f"{cursor.path} is corrupt: {what} has unknown value type {value_type}")
    value = cursor.scalar(value_type, what)
    if value_type == _FLOAT32:
        # The shortest decimal that round-trips in float32: 1e-6 stays 1e-6, not 9.99999997e-7.
        return float(str(np.float32(value)))
    return value


def _read_array(cursor: _Cursor, what: str) -> np.ndarray | list:
    item_type = cursor.scalar(4, f"the item type of {what}")
    count = cursor.scalar(10, f"the length of {what}")
    if item_type in _SCALARS:
        dtype = np.dtype(_SCALARS[item_type][1])
        start = cursor.take(count * dtype.itemsize, what)
        array = np.frombuffer(cursor.buffer, dtype=dtype, count=count, offset=start).copy()
        return array.astype(bool) if item_type == _BOOL else array
    if item_type not in (_STRING, _ARRAY):
        raise GGUFError(f"{cursor.path} is corrupt: {what} has unknown item type {item_type}")
    if count * 8 > len(cursor.buffer) - cursor.pos:  # every item starts with an 8-byte length
        cursor.take(count * 8, what)
    if item_type == _STRING:
        return _read_strings(cursor, count, what)
    return [_read_value(cursor, item_type, f"item {i} of {what}") for i in range(count)]


def _read_strings(cursor: _Cursor, count: int, what: str) -> list[str]:
    # The token list of a real model holds 256k strings: this is `cursor.string` unrolled.
    buffer, position, end = cursor.buffer, cursor.pos, len(cursor.buffer)
    length_at = struct.Struct("<Q").unpack_from
    strings = []
    for index in range(count):
        if position + 8 > end:
            cursor.pos = position
            cursor.take(8, f"item {index} of {what}")  # raises: truncated
        (length,) = length_at(buffer, position)
        position += 8
        if position + length > end:
            cursor.pos = position
            cursor.take(length, f"item {index} of {what}")  # raises: truncated
        try:
            strings.append(buffer[position : position + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise GGUFError(
                f"{cursor.path} is corrupt: item {index} of {what} is not valid UTF-8 ({exc})"
            ) from None
        position += length
    cursor.pos = position
    return strings


def _read_tensor_record(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(f"the name of tensor {index}")
    what = f"the record of tensor {name!r}"
    n_dims = cursor.scalar(4, what)
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"{cursor.path} is corrupt: tensor {name!r} has {n_dims} dimensions")
    dims = [cursor.scalar(10, what) for _ in range(n_dims)]
    type_id = cursor.scalar(4, what)
    offset = cursor.scalar(10, what)
    return name, tuple(reversed(dims)), type_id, offset


def _tensor_info(
    path: Path,
    name: str,
    shape: tuple[int, ...],
    type_id: int,
    offset: int,
    alignment: int,
    data_start: int,
    file_size: int,
) -> TensorInfo:
    ggml_type = GGML_TYPES.get(type_id)
    if ggml_type is None:
        raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type id {type_id}")
    if any(d <= 0 for d in shape):
        raise GGUFError(f"{path} is corrupt: tensor {name!r} has shape {list(shape)}")
    if shape[-1] % ggml_type.block_size:
        raise GGUFError(
            f"{path} is corrupt: tensor {name!r} ({ggml_type.name}) has rows of {shape[-1]} "
            f"values, not a multiple of the {ggml_type.block_size}-value block"
        )
    if offset % alignment:
        raise GGUFError(
            f"{path} is corrupt: tensor {name!r} starts at data offset {offset}, "
            f"not a multiple of the alignment {alignment}"
        )
    nbytes = math.prod(shape) // ggml_type.block_size * ggml_type.type_size
    start = data_start + offset
    if start + nbytes > file_size:
        raise GGUFError(
            f"{path} is truncated: tensor {name!r} needs bytes {start}..{start + nbytes} "
            f"but the file ends at byte {file_size}"
        )
    return TensorInfo(name, shape, ggml_type, start, nbytes)
