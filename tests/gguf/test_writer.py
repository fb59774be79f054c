"""`codegemma convert`: GGUF files read back by gguf-py (metadata as llama.cpp's converter
writes it, tensor bytes equal to gguf-py's quantizers) and round trips in both directions."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize as reference_quantize
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tiny_models import make_checkpoint

from codegemma.checkpoint.hf_dir import load_hf_weights
from codegemma.cli import main
from codegemma.errors import CheckpointError
from codegemma.gguf import names
from codegemma.gguf.writer import write_gguf, write_hf
from codegemma.tokenizer import Tokenizer

GGUF_DIMS = dict(hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4)
TEXTS = (
    "def f(x):\n    return x * 2  # 42",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "🎉 ü",
)


@pytest.fixture(scope="module")
def hf_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hf")
    make_checkpoint(directory, tiny_tokenizer_dir, 520, **GGUF_DIMS)  # 8 rows past the vocab
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    return directory


@pytest.fixture(scope="module")
def files(hf_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {kind: write_gguf(hf_dir, out / f"m-{kind}.gguf", kind) for kind in ("f16", "q8_0")}


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, reader


@pytest.mark.parity
def test_metadata_is_what_llama_cpp_writes_for_gemma(files, hf_dir):
    fields, reader = _fields(files["q8_0"])
    tokenizer = Tokenizer.from_dir(hf_dir)
    expected = {
        "general.architecture": "gemma",
        "general.file_type": 7,  # LlamaFileType.MOSTLY_Q8_0
        "general.quantization_version": 2,
        "gemma.context_length": 512,
        "gemma.embedding_length": 256,
        "gemma.block_count": 2,
        "gemma.feed_forward_length": 512,
        "gemma.attention.head_count": 4,
        "gemma.attention.head_count_kv": 1,
        "gemma.attention.key_length": 64,
        "gemma.attention.value_length": 64,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_id,
        "tokenizer.ggml.unknown_token_id": tokenizer.token_id("<unk>"),
        "tokenizer.ggml.eot_token_id": tokenizer.token_id("<end_of_turn>"),
        "tokenizer.ggml.fim_pre_token_id": tokenizer.token_id("<|fim_prefix|>"),
        "tokenizer.ggml.fim_suf_token_id": tokenizer.token_id("<|fim_suffix|>"),
        "tokenizer.ggml.fim_mid_token_id": tokenizer.token_id("<|fim_middle|>"),
        "tokenizer.ggml.fim_sep_token_id": tokenizer.token_id("<|file_separator|>"),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.chat_template": "{{ x }}",
    }
    assert {key: fields.get(key) for key in expected} == expected
    assert fields["gemma.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 520  # padded to the embedding's rows, as llama.cpp requires
    assert tokens[: tokenizer.vocab_size] == [
        tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)
    ]
    assert tokens[-1] == "[PAD519]" and fields["tokenizer.ggml.token_type"][-1] == 5
    names_written = {t.name for t in reader.tensors}
    assert "output.weight" not in names_written
    assert names_written == {names.gguf_name(n) for n in load_hf_weights(hf_dir)}


def _weights_by_gguf_name(hf_dir):
    return {names.gguf_name(n): t.float().numpy() for n, t in load_hf_weights(hf_dir).items()}


@pytest.mark.parity
def test_tensor_bytes_match_gguf_reference(hf_dir, files, tmp_path):
    weights = _weights_by_gguf_name(hf_dir)
    paths = {"f16": files["f16"], "bf16": write_gguf(hf_dir, tmp_path / "bf16.gguf", "bf16")}
    paths["q4_0"] = write_gguf(hf_dir, tmp_path / "q4.gguf", "q4_0")
    for kind, path in paths.items():
        qtype = gguf.GGMLQuantizationType[kind.upper()]
        for tensor in gguf.GGUFReader(path).tensors:
            weight = weights[tensor.name]
            if names.is_norm(tensor.name):
                assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
                np.testing.assert_array_equal(tensor.data, weight + np.float32(1))
                continue
            if kind == "q4_0" and tensor.name == "token_embd.weight":
                # The tied embedding/output head keeps 8 bits in Q4_0 files (as our int4 mode).
                assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
                expected = reference_quantize(weight, gguf.GGMLQuantizationType.Q8_0)
                assert _bytes(tensor.data) == _bytes(expected), (kind, tensor.name)
                continue
            assert tensor.tensor_type == qtype, (kind, tensor.name)
            expected = reference_quantize(weight, qtype)
            if kind != "q4_0":
                assert _bytes(tensor.data) == _bytes(expected), (kind, tensor.name)
                continue
            # Our int4 quantizer searches the scale of each block for the least squared error,
            # so its Q4_0 blocks differ from ggml's round-to-nearest: as valid, and closer.
            ours = reference_dequantize(np.ascontiguousarray(tensor.data), qtype)
            theirs = reference_dequantize(expected, qtype)
            assert np.linalg.norm(ours - weight) < np.linalg.norm(theirs - weight), tensor.name


@pytest.mark.parity
def test_q8_0_bytes_equal_ggml_quantizer(hf_dir, files):
    # ggml rounds x / d half away from zero (roundf); blocks must match it to the bit.
    weights = _weights_by_gguf_name(hf_dir)
    for tensor in gguf.GGUFReader(files["q8_0"]).tensors:
        if not names.is_norm(tensor.name):
            expected = reference_quantize(weights[tensor.name], gguf.GGMLQuantizationType.Q8_0)
            # (torch.round rounds halves to even; ggml's roundf rounds them away from zero.)
            assert _bytes(tensor.data) == _bytes(expected), f"{tensor.name}: rounding of ties?"


def _bytes(array: np.ndarray) -> bytes:
    return bytes(np.ascontiguousarray(array))


def test_hf_to_gguf_to_hf_round_trip(hf_dir, tmp_path):
    path = write_gguf(hf_dir, tmp_path / "m.gguf", "f32")
    out = tmp_path / "back"
    notes = write_hf(path, out)
    assert "weights written as float32" in notes
    original, back = load_hf_weights(hf_dir), load_file(out / "model.safetensors")
    assert set(back) == set(original)
    for name, tensor in original.items():
        if "norm" in name:  # w -> 1 + w -> w in float32
            assert torch.allclose(back[name], tensor, rtol=0, atol=1e-7), name
        else:
            assert torch.equal(back[name], tensor), name
    config = json.loads((hf_dir / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == config
    source, rebuilt = Tokenizer.from_dir(hf_dir), Tokenizer.from_dir(out)
    for text in TEXTS:
        assert rebuilt.encode(text) == source.encode(text)
    pieces = [(p.piece, p.score, p.type) for p in _proto(out / "tokenizer.model").pieces]
    assert pieces == [(p.piece, p.score, p.type) for p in _proto(hf_dir / "tokenizer.model").pieces]


def _proto(path: Path) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantized_gguf_to_hf_keeps_the_exact_values(kind, hf_dir, tmp_path):
    path = write_gguf(hf_dir, tmp_path / "m.gguf", kind)
    write_hf(path, tmp_path / "hf", "float32")
    back = load_file(tmp_path / "hf" / "model.safetensors")
    for tensor in gguf.GGUFReader(path).tensors:
        hf = names.hf_name(tensor.name)
        if names.is_norm(tensor.name):
            expected = torch.from_numpy(tensor.data.copy()) - 1
        else:
            stored = reference_dequantize(tensor.data, tensor.tensor_type)
            expected = torch.from_numpy(stored.copy())
        assert torch.equal(back[hf], expected), tensor.name


def test_q8_0_survives_gguf_to_hf_to_gguf_unchanged(hf_dir, tmp_path):
    # Quantizing the exact dequantized values again reproduces every Q8_0 block.
    first = write_gguf(hf_dir, tmp_path / "first.gguf", "q8_0")
    write_hf(first, tmp_path / "hf", "float32")
    second = write_gguf(tmp_path / "hf", tmp_path / "second.gguf", "q8_0")
    a, b = gguf.GGUFReader(first).tensors, gguf.GGUFReader(second).tensors
    assert [t.name for t in a] == [t.name for t in b]
    for x, y in zip(a, b, strict=True):
        assert _bytes(x.data) == _bytes(y.data), x.name


def test_cli_round_trip_and_model_use(hf_dir, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    assert main(["convert", str(hf_dir), str(out), "--to", "gguf", "--type", "q4_0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 2
    back = tmp_path / "back"
    assert main(["convert", str(out), str(back), "--to", "hf"]) == 0
    printed = capsys.readouterr().out
    assert "weights written as bfloat16" in printed
    assert load_file(back / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    assert (back / "tokenizer.model").is_file() and (back / "config.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "gguf", "--dtype", "float32"], "--dtype applies to --to hf"),
        (["--to", "hf"], "is not a GGUF file"),
    ],
)
def test_cli_errors_are_one_line(hf_dir, tmp_path, capsys, args, message):
    assert main(["convert", str(hf_dir), str(tmp_path / "x"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_refuses_to_overwrite_without_force(hf_dir, files, tmp_path, capsys):
    target = tmp_path / "taken.gguf"
    target.write_bytes(b"keep me")
    assert main(["convert", str(hf_dir), str(target), "--to", "gguf"]) == 1
    assert "pass --force" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert main(["convert", str(hf_dir), str(target), "--to", "gguf", "--force"]) == 0
    assert target.read_bytes()[:4] == b"GGUF"
    assert main(["convert", str(files["f16"]), str(tmp_path / "y"), "--to", "gguf"]) == 1
    assert "already GGUF" in capsys.readouterr().err


def test_failed_write_leaves_no_file(tiny_tokenizer_dir, tmp_path):
    # An embedding with fewer rows than the tokenizer has pieces cannot be written.
    small = make_checkpoint(tmp_path / "small", tiny_tokenizer_dir, 300, **GGUF_DIMS)
    with pytest.raises(CheckpointError, match="512 pieces but the embedding has 300 rows"):
        write_gguf(small, tmp_path / "out.gguf", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    (small / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.model"):
        write_gguf(small, tmp_path / "out.gguf", "f16")
