"""Jlama model directories, written here byte for byte as Jlama's SafeTensorSupport writes them
(own dtype names, unaligned data, float32 `.qb` scales): Q4 / I8 tensors land on the engine's
int4 / int8 path, their values match a separate reading of the documented layout, the logits
match transformers on those values, and `codegemma convert` writes them out."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_checkpoint

import codegemma
from codegemma.checkpoint.hf_dir import load_hf_weights
from codegemma.cli import main
from codegemma.errors import CheckpointError
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.sources.detect import detect_source
from codegemma.sources.jlama import load_jlama

PROMPT = "def add(a, b):\n    return a + b  # 123"
BLOCK = 32
KINDS = {"Q4": Int4Blocks, "I8": Int8Blocks}


# ------------------------------------------------------------------ Jlama's format, written here


def write_jlama_file(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    """Jlama's layout: 8-byte length, compact JSON header, tensors back to back (no padding:
    the header length is made odd so that the float32 scales sit at unaligned offsets)."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (1 - len(raw) % 2)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, data in tensors.values():
            f.write(data)


def jlama_quantize(weight: np.ndarray, kind: str) -> tuple[bytes, np.ndarray]:
    """Jlama's quantizers (Q4ByteBufferTensor / Q8ByteBufferTensor) as their source describes
    them: payload bytes and float32 scales (rows, cols / 32)."""
    shape = weight.shape
    blocks = weight.astype(np.float32).reshape(-1, BLOCK)
    if kind == "I8":
        scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32)
        inverse = np.where(scale != 0, 1.0 / np.where(scale != 0, scale, 1), 0).astype(np.float32)
        q = np.round(blocks * inverse[:, None]).clip(-128, 127).astype(np.int8)
        return q.tobytes(), scale.reshape(*shape[:-1], -1)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    scale = (extreme / -8.0).astype(np.float32)
    inverse = np.where(scale != 0, 1.0 / np.where(scale != 0, scale, 1), 0).astype(np.float32)
    q = np.minimum(15, np.trunc(blocks * inverse[:, None] + 8.5)).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)  # byte j: element j low, element j + 16 high
    return packed.tobytes(), scale.reshape(*shape[:-1], -1)


def reference_dequantize(kind: str, data: bytes, scales: np.ndarray, shape: tuple) -> np.ndarray:
    """The documented layout read element by element (column by column), apart from the loader."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    scales = scales.reshape(rows, cols // BLOCK)
    out = np.empty((rows, cols), dtype=np.float32)
    if kind == "I8":
        values = np.frombuffer(data, dtype=np.int8).reshape(rows, cols)
        for c in range(cols):
            out[:, c] = values[:, c].astype(np.float32) * scales[:, c // BLOCK]
        return out.reshape(shape)
    packed = np.frombuffer(data, dtype=np.uint8).reshape(rows, cols // 2)
    for c in range(cols):
        block, j = divmod(c, BLOCK)
        byte = packed[:, block * 16 + j % 16]
        nibble = byte & 0x0F if j < 16 else byte >> 4
        out[:, c] = (nibble.astype(np.float32) - 8.0) * scales[:, block]
    return out.reshape(shape)


def write_jlama_dir(directory: Path, hf_dir: Path, json_dir: Path, kind: str, norms: str) -> dict:
    """A Jlama directory for the HF checkpoint: 2-D weights as `kind`, norms as `norms`
    (F32, or `kind` too); returns each tensor's values as the layout defines them."""
    directory.mkdir()
    tensors, values = {}, {}
    for name, tensor in load_hf_weights(hf_dir).items():
        weight = tensor.float().numpy()
        if weight.ndim == 1 and norms == "F32":
            tensors[name] = ("F32", weight.shape, weight.tobytes())
            values[name] = weight
            continue
        data, scales = jlama_quantize(weight, kind)
        tensors[name] = (kind, weight.shape, data)
        tensors[name + ".qb"] = ("F32", scales.shape, scales.tobytes())
        values[name] = reference_dequantize(kind, data, scales, weight.shape)
    write_jlama_file(directory / "model.safetensors", dict(reversed(tensors.items())))
    shutil.copyfile(hf_dir / "config.json", directory / "config.json")
    shutil.copyfile(json_dir / "tokenizer.json", directory / "tokenizer.json")
    return values


@pytest.fixture(scope="module")
def hf_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hf"), tiny_tokenizer_dir, 512)


@pytest.fixture(scope="module", params=["Q4", "I8"])
def jlama(request, hf_dir, tiny_tokenizer_json_dir, tmp_path_factory):
    """(Jlama directory, kind, reference values); the I8 file quantizes the norms as well."""
    directory = tmp_path_factory.mktemp("jlama") / f"codegemma-JQ{request.param}"
    norms = "F32" if request.param == "Q4" else request.param
    values = write_jlama_dir(directory, hf_dir, tiny_tokenizer_json_dir, request.param, norms)
    return directory, request.param, values


def transformers_logits(values: dict, hf_dir: Path, ids: list[int]) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    config = transformers.GemmaConfig.from_pretrained(hf_dir)
    model = transformers.GemmaForCausalLM(config).float().eval()
    state = {name: torch.from_numpy(v) for name, v in values.items()}
    model.load_state_dict(state, strict=False)  # lm_head is tied to the embedding
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# -------------------------------------------------------------------------------------- tests


def test_quantized_tensors_load_as_engine_blocks(jlama):
    directory, kind, _ = jlama
    assert detect_source(directory) == "jlama"
    lm = codegemma.load(directory, dtype="float32", kernels="torch", threads=1)
    assert lm.weights == {"Q4": "int4", "I8": "int8"}[kind]
    for module in (lm.model.model.layers[0].self_attn.q_proj, lm.model.model.embed_tokens):
        weight = module.weight
        assert isinstance(weight, KINDS[kind]) and weight.scales.dtype == torch.float32
        values = weight.packed if kind == "Q4" else weight.qs
        out, inp = weight.shape
        assert values.numel() == out * inp * (4 if kind == "Q4" else 8) // 8  # not expanded
    assert lm.model.model.norm.weight.dtype == torch.float32


def test_dequantized_values_match_the_documented_layout(jlama):
    directory, kind, values = jlama
    state = load_jlama(directory).state
    assert state.keys() == values.keys()
    for name, expected in values.items():
        weight = state[name]
        got = weight.dequantize() if isinstance(weight, (Int4Blocks, Int8Blocks)) else weight
        assert torch.equal(got.float(), torch.from_numpy(expected)), name


@pytest.mark.parametrize("kind", ["Q4", "I8"])
def test_every_nibble_and_byte_reads_back(kind, hf_dir, tmp_path):
    """Random payloads cover all 16 nibbles / 256 bytes in both halves of each block."""
    rng = np.random.default_rng(0)
    shape = (8, 96)
    count = 8 * 96 // 2 if kind == "Q4" else 8 * 96
    data = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    scales = rng.normal(0.0, 1.0, (8, 3)).astype(np.float32)
    write_jlama_file(
        tmp_path / "model.safetensors",
        {"w": (kind, shape, data), "w.qb": ("F32", scales.shape, scales.tobytes())},
    )
    for name in ("config.json", "tokenizer.model"):
        shutil.copyfile(hf_dir / name, tmp_path / name)
    state = load_jlama(tmp_path).state  # names are checked later, when weights are assigned
    expected = reference_dequantize(kind, data, scales, shape)
    assert torch.equal(state["w"].dequantize(), torch.from_numpy(expected))


@pytest.mark.parity
def test_logits_match_transformers_on_the_dequantized_values(jlama, hf_dir, tiny_tokenizer):
    directory, _, values = jlama
    ids = tiny_tokenizer.encode(PROMPT)
    lm = codegemma.load(directory, dtype="float32", kernels="torch", threads=1)
    with torch.no_grad():
        got = lm.model(torch.tensor([ids]), logits_positions=slice(None))[0]
    torch.testing.assert_close(got, transformers_logits(values, hf_dir, ids), atol=1e-4, rtol=0)


def test_native_kernels_read_float32_scales(jlama, tiny_tokenizer):
    directory, _, _ = jlama
    native = codegemma.load(directory, kernels="native", threads=1)
    plain = codegemma.load(directory, dtype="float32", kernels="torch", threads=1)
    token = torch.tensor([[tiny_tokenizer.encode("def")[1]]])  # one token: the decode path
    with torch.no_grad():
        got, expected = native.model(token)[0, 0], plain.model(token)[0, 0]
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=0).item()
    assert cosine >= 0.9995


@pytest.mark.parity
def test_convert_to_hf_and_gguf(jlama, hf_dir, tiny_tokenizer, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    directory, _, values = jlama
    out = tmp_path / "hf"
    assert main(["convert", str(directory), str(out), "--to", "hf", "--dtype", "float32"]) == 0
    assert (out / "tokenizer.json").is_file()
    ids = tiny_tokenizer.encode(PROMPT)
    model = transformers.GemmaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, transformers_logits(values, hf_dir, ids), atol=1e-4, rtol=0)
    capsys.readouterr()
    # GGUF stores the SentencePiece vocabulary, which a tokenizer.json-only directory lacks.
    assert main(["convert", str(directory), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 1
    assert "tokenizer.model" in capsys.readouterr().err
    shutil.copyfile(hf_dir / "tokenizer.model", directory / "tokenizer.model")
    try:
        assert main(["convert", str(directory), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 0
    finally:
        (directory / "tokenizer.model").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf"]


def test_hugging_face_directories_are_not_jlama(hf_dir):
    assert detect_source(hf_dir) is None


def test_broken_files_are_named(hf_dir, tmp_path):
    data, scales = jlama_quantize(np.ones((4, 64), dtype=np.float32), "Q4")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    write_jlama_file(tmp_path / "model.safetensors", {"w": ("Q4", (4, 64), data)})
    with pytest.raises(CheckpointError, match="lacks float32 w.qb"):
        load_jlama(tmp_path)
    write_jlama_file(
        tmp_path / "model.safetensors",
        {"w": ("Q5", (4, 64), data), "w.qb": ("F32", (4, 2), scales.tobytes())},
    )
    with pytest.raises(CheckpointError, match="dtype 'Q5'"):
        load_jlama(tmp_path)
