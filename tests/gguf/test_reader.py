"""The GGUF reader: metadata and tensor table against gguf-py, and clear errors for bad files."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
import torch

from codegemma.errors import CheckpointError
from codegemma.gguf.reader import GGUFError, is_gguf_file, read_gguf


def _write(path, tensors=(), metadata=None, alignment=None):
    writer = gguf.GGUFWriter(path, "gemma")
    if alignment:
        writer.add_custom_alignment(alignment)
    for key, (value, kind) in (metadata or {}).items():
        writer.add_key_value(key, value, kind)
    for name, array, raw_type in tensors:
        writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


V = gguf.GGUFValueType
_METADATA = {
    "test.u8": (200, V.UINT8),
    "test.i8": (-100, V.INT8),
    "test.u16": (60000, V.UINT16),
    "test.i16": (-30000, V.INT16),
    "test.u32": (4_000_000_000, V.UINT32),
    "test.i32": (-2_000_000_000, V.INT32),
    "test.u64": (2**63 + 5, V.UINT64),
    "test.i64": (-(2**62), V.INT64),
    "test.f32": (1e-6, V.FLOAT32),
    "test.f64": (0.1, V.FLOAT64),
    "test.bool": (True, V.BOOL),
    "test.str": ("héllo ▁wörld", V.STRING),
    "test.ints": ([3, -1, 7], V.ARRAY),
    "test.floats": ([0.5, -0.0, 2.25], V.ARRAY),
    "test.strs": (["<pad>", "▁a", "ü"], V.ARRAY),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 64)).astype(np.float32)
    tensors = [
        ("a.weight", weight, None),
        ("b.weight", weight.astype(np.float16), None),
        (
            "c.weight",
            gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
            gguf.GGMLQuantizationType.Q8_0,
        ),
        ("d.weight", rng.standard_normal(5).astype(np.float32), None),
    ]
    path = tmp_path_factory.mktemp("gguf") / "sample.gguf"
    return _write(path, tensors, _METADATA), weight


@pytest.mark.parity
def test_metadata_matches_what_was_written(sample):
    path, _ = sample
    metadata = read_gguf(path).metadata
    assert metadata["general.architecture"] == "gemma"
    for key, (value, kind) in _METADATA.items():
        got = metadata[key]
        if kind == V.ARRAY:
            assert list(got) == value, key
        else:
            assert got == value and type(got) is type(value), key
    assert metadata["test.f32"] == 1e-6  # the float32 value read back as its shortest decimal
    assert np.signbit(metadata["test.floats"][1])  # -0.0 survives


@pytest.mark.parity
def test_tensor_table_matches_gguf_reader(sample):
    path, weight = sample
    ours = read_gguf(path)
    theirs = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert list(ours.tensors) == list(theirs)
    for name, info in ours.tensors.items():
        assert info.shape == tuple(reversed(theirs[name].shape.tolist()))
        assert info.ggml_type.id == int(theirs[name].tensor_type)
        assert info.offset == theirs[name].data_offset
        assert info.nbytes == theirs[name].n_bytes
    a = ours.float_tensor(ours.tensors["a.weight"])
    assert torch.equal(a, torch.from_numpy(weight))
    b = ours.float_tensor(ours.tensors["b.weight"])
    assert b.dtype == torch.float16 and torch.equal(
        b.float(), torch.from_numpy(weight).half().float()
    )
    raw = ours.raw(ours.tensors["c.weight"])
    assert raw.shape == (3, 2 * 34)
    assert bytes(raw.numpy()) == bytes(theirs["c.weight"].data)


def test_custom_alignment_is_respected(tmp_path):
    weight = np.arange(10, dtype=np.float32).reshape(1, 10)
    path = _write(
        tmp_path / "aligned.gguf", [("x", weight, None), ("y", weight, None)], alignment=64
    )
    file = read_gguf(path)
    assert all(info.offset % 64 == 0 for info in file.tensors.values())
    assert file.float_tensor(file.tensors["y"]).tolist() == weight.tolist()


def test_is_gguf_file_checks_content_not_name(sample, tmp_path):
    path, _ = sample
    blob = tmp_path / "sha256-0123abcd"  # an Ollama blob: no extension
    blob.write_bytes(path.read_bytes())
    assert is_gguf_file(blob)
    assert read_gguf(blob).metadata["general.architecture"] == "gemma"
    text = tmp_path / "model.gguf"
    text.write_text("not really")
    assert not is_gguf_file(text)
    assert not is_gguf_file(tmp_path)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"PK\x03\x04" + bytes(40), "not a GGUF file"),
        (b"tjgg" + bytes(40), "legacy GGJT"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(40), "version 1"),
        (b"GGUF" + struct.pack(">I", 3) + bytes(40), "big-endian"),
        (b"GGUF" + struct.pack("<IQQ", 3, 10**9, 0) + bytes(40), "claims 1000000000 tensors"),
        (b"GG", "not a GGUF file"),
        (b"GGUF\x03\x00", "truncated"),
    ],
)
def test_bad_headers_name_the_problem(tmp_path, head, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(head)
    with pytest.raises(GGUFError, match=message):
        read_gguf(path)


def test_truncated_data_names_the_tensor(sample, tmp_path):
    path, _ = sample
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-40])
    with pytest.raises(GGUFError, match=r"truncated: tensor 'd.weight'"):
        read_gguf(cut)


def test_any_truncation_or_corruption_gives_a_gguf_error(sample, tmp_path):
    # Fuzz the header: every outcome is either a parsed file or a GGUFError, never another
    # exception. Cuts land everywhere in the metadata and tensor table; flips hit lengths,
    # type ids, dimension counts and offsets.
    path, _ = sample
    data = path.read_bytes()
    header_end = min(info.offset for info in read_gguf(path).tensors.values())
    rng = np.random.default_rng(0)
    broken = tmp_path / "broken.gguf"
    for cut in sorted(set(rng.integers(0, header_end, 60).tolist())):
        broken.write_bytes(data[:cut])
        with pytest.raises(GGUFError):
            read_gguf(broken)
    for position in rng.integers(4, header_end, 150).tolist():
        mutated = bytearray(data)
        mutated[position] ^= int(rng.integers(1, 256))
        broken.write_bytes(bytes(mutated))
        try:
            read_gguf(broken)
        except GGUFError:
            pass


def _edit_tensor_record(path, name: bytes, field: str, value: int):
    """Overwrite the type id or offset in the record of tensor `name` (2-D records only)."""
    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    at += 4 + 8 * n_dims
    if field == "type":
        struct.pack_into("<I", data, at, value)
    else:
        struct.pack_into("<Q", data, at + 4, value)
    path.write_bytes(bytes(data))


def test_unknown_type_id_and_misaligned_offset(sample, tmp_path):
    path, _ = sample
    bad = tmp_path / "type.gguf"
    bad.write_bytes(path.read_bytes())
    _edit_tensor_record(bad, b"a.weight", "type", 77)
    with pytest.raises(GGUFError, match="'a.weight' has unknown ggml type id 77"):
        read_gguf(bad)
    bad.write_bytes(path.read_bytes())
    _edit_tensor_record(bad, b"a.weight", "offset", 3)
    with pytest.raises(GGUFError, match="not a multiple of the alignment 32"):
        read_gguf(bad)


def test_block_size_mismatch_is_reported(tmp_path):
    # A Q8_0 tensor whose rows are not whole 32-value blocks: claim a width of 48.
    q8 = gguf.quants.quantize(np.ones((2, 64), np.float32), gguf.GGMLQuantizationType.Q8_0)
    path = _write(tmp_path / "q.gguf", [("q.weight", q8, gguf.GGMLQuantizationType.Q8_0)])
    data = bytearray(path.read_bytes())
    at = data.index(b"q.weight") + len(b"q.weight") + 4
    struct.pack_into("<Q", data, at, 48)
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="rows of 48 values"):
        read_gguf(path)


def test_errors_are_checkpoint_errors(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_gguf(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_gguf(tmp_path / "missing.gguf")
