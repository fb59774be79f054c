"""Loading GGUF files written independently (gguf-py's GGUFWriter and quantizers): config,
weights of every tensor type, the Q8_0 / Q4_0 views, logits against the HF checkpoint, errors."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize as reference_quantize
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tiny_models import make_checkpoint

from codegemma.checkpoint.assign import assign_weights
from codegemma.checkpoint.hf_dir import load_hf_weights, save_hf_checkpoint
from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.gguf import names
from codegemma.gguf.loader import load_gguf
from codegemma.gguf.reader import GGUFError
from codegemma.gguf.tokenizer import vocabulary_from_proto
from codegemma.loading import load_model_and_tokenizer
from codegemma.model import GemmaForCausalLM
from codegemma.quant.blocks import Int4Blocks, Int8Blocks
from codegemma.random_model import random_model

# Widths that are multiples of 256, so every block type (K types: 256 values) fits.
GGUF_DIMS = dict(hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4)
T = gguf.GGMLQuantizationType
FLOAT = ("F32", "F16", "BF16")
GGUF_QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf-py can quantize these
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")  # ... but not these: random blocks stand in for weights
_K_SCALE_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
PROMPT = "def add(a, b):\n    return a + b  # 123"


@pytest.fixture(scope="module")
def hf_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hf"), tiny_tokenizer_dir, 512, **GGUF_DIMS)


@pytest.fixture(scope="module")
def proto(tiny_tokenizer_dir) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString((tiny_tokenizer_dir / "tokenizer.model").read_bytes())
    return proto


def write_file(path, config: GemmaConfig, tensors: dict, proto, *, arch="gemma", edit=None):
    """A GGUF file through gguf-py alone: `tensors` maps GGUF names to (array, type)."""
    writer = gguf.GGUFWriter(path, arch)
    metadata = {
        "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size,
        "block_count": config.num_hidden_layers,
        "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads,
        "attention.head_count_kv": config.num_key_value_heads,
        "attention.key_length": config.head_dim,
        "attention.value_length": config.head_dim,
    }
    if edit:
        edit(metadata)
    for key, value in metadata.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocabulary = vocabulary_from_proto(proto, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_scores(vocabulary.scores.tolist())
    writer.add_token_types(vocabulary.types.tolist())
    for name, (array, kind) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=None if kind in ("F32", "F16") else T[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _k_blocks(kind: str, shape, rng, target_std: float) -> np.ndarray:
    """Random blocks of a K type whose values have roughly `target_std` (real files hold
    finite scales of sensible size; raw random bytes would not)."""
    rows, width = shape
    size = gguf.GGML_QUANT_SIZES[T[kind]][1]
    data = rng.integers(0, 256, (rows * width // 256, size), dtype=np.uint8)
    for at in _K_SCALE_FIELDS[kind]:
        data[:, at : at + 2] = np.ones(len(data), np.float16).view(np.uint8).reshape(-1, 2)
    spread = reference_dequantize(data.reshape(rows, -1), T[kind]).std()
    for at in _K_SCALE_FIELDS[kind]:
        scale = rng.uniform(0.5, 1.5, len(data)) * target_std / spread
        data[:, at : at + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, -1)


def gguf_tensors(state: dict[str, torch.Tensor], kind: str, seed=0):
    """GGUF tensors of `kind` for an HF state, and the float weights the file really holds."""
    rng = np.random.default_rng(seed)
    tensors, held = {}, {}
    for hf, tensor in state.items():
        name = names.gguf_name(hf)
        weight = tensor.float().numpy()
        if names.is_norm(name):
            tensors[name] = (weight + np.float32(1), "F32")
            held[hf] = torch.from_numpy(weight + np.float32(1)) - 1
            continue
        if kind in K_TYPES:
            stored = _k_blocks(kind, weight.shape, rng, float(weight.std()))
        else:
            stored = reference_quantize(weight, T[kind])
        tensors[name] = (stored, kind)
        held[hf] = torch.from_numpy(reference_dequantize(stored, T[kind]).copy())
    return tensors, held


def as_model(config: GemmaConfig, state: dict) -> GemmaForCausalLM:
    """A float32 model of a loaded state (block-quantized weights expanded to float)."""
    state = {
        k: v.dequantize() if isinstance(v, Int8Blocks | Int4Blocks) else v for k, v in state.items()
    }
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, torch.float32, torch.device("cpu"))
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer.encode(PROMPT)]), logits_positions=slice(None))[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# ------------------------------------------------------------------------- every tensor type

# Relative RMS error of the loaded weights against the file's own values, which re-quantization
# adds (types used as stored have none). Measured: Q4_1 0.074, Q4_K 0.058 (about the file's own
# error: int4 cannot hold their offset grids); Q5_0 0.0052, Q5_1 0.0054, Q5_K 0.0038, Q6_K 0.0045.
_REQUANT_ERROR = {"Q4_1": 0.09, "Q4_K": 0.09, "Q5_0": 0.008, "Q5_1": 0.008, "Q5_K": 0.008}
_REQUANT_ERROR["Q6_K"] = 0.008
# Cosine of logits against a model holding the file's exact values (measured: Q4_1 0.986,
# Q4_K 0.99999, 5- and 6-bit types >= 0.99991); types used as stored give the same logits.
_REQUANT_COSINE = {"Q4_1": 0.98, "Q4_K": 0.98, "Q5_0": 0.9998, "Q5_1": 0.9998}
_REQUANT_COSINE.update({"Q5_K": 0.9998, "Q6_K": 0.9998})


@pytest.mark.parity
@pytest.mark.parametrize("kind", FLOAT + GGUF_QUANTIZABLE + K_TYPES)
def test_every_type_loads(kind, hf_dir, proto, tmp_path):
    config = GemmaConfig.from_json_file(hf_dir / "config.json")
    tensors, held = gguf_tensors(load_hf_weights(hf_dir), kind)
    path = write_file(tmp_path / "model.gguf", config, tensors, proto)
    loaded_config, state, tokenizer, notes = load_gguf(path)
    assert loaded_config == config
    assert set(state) == set(held)
    for hf, value in state.items():
        expected = held[hf]
        if "norm" in hf:
            assert value.dtype == torch.float32 and torch.equal(value, expected), hf
            continue
        if kind in FLOAT:
            assert isinstance(value, torch.Tensor) and torch.equal(value.float(), expected), hf
            continue
        target = Int4Blocks if kind in ("Q4_0", "Q4_1", "Q4_K") else Int8Blocks
        assert isinstance(value, target), hf
        error = (value.dequantize() - expected).norm() / expected.norm()
        assert error <= _REQUANT_ERROR.get(kind, 0.0), (hf, error.item())
    count = 2 * 7 + 1  # seven linear weights per layer, plus the embedding
    assert any(note.startswith(f"{kind}: {count} tensors") for note in notes), notes
    if kind in _REQUANT_ERROR:
        assert any(f"re-quantized to {'int4' if '4' in kind else 'int8'}" in n for n in notes)
    if kind in _REQUANT_COSINE:  # (the other types hold the file's values exactly, see above)
        # The whole model: logits through the loaded weights against the file's exact values.
        want = logits(as_model(config, held), tokenizer)
        got = logits(as_model(loaded_config, state), tokenizer)
        assert cosine(got, want) >= _REQUANT_COSINE[kind]


def test_q8_0_and_q4_0_are_views_of_the_file(hf_dir, proto, tmp_path):
    config = GemmaConfig.from_json_file(hf_dir / "config.json")
    weights = load_hf_weights(hf_dir)
    for kind in ("Q8_0", "Q4_0"):
        tensors, _ = gguf_tensors(weights, kind)
        path = write_file(tmp_path / f"{kind}.gguf", config, tensors, proto)
        _, state, _, _ = load_gguf(path)
        blocks = [v for v in state.values() if not isinstance(v, torch.Tensor)]
        assert len(blocks) == 15
        size = path.stat().st_size
        for block in blocks:
            values = block.qs if kind == "Q8_0" else block.packed
            storage = values.untyped_storage()
            # Values and scales share one storage, the mapped file: nothing was copied.
            assert storage.data_ptr() == block.scales.untyped_storage().data_ptr()
            assert not values.is_contiguous()
        total = sum(b.nbytes for b in blocks)
        assert total < size


# --------------------------------------------------------------------- against the HF model


def _rounded_checkpoint(directory: Path, tokenizer_dir: Path, dtype: torch.dtype) -> Path:
    """An HF checkpoint whose float32 weights are exactly representable in `dtype`."""
    config = GemmaConfig.from_json_file(directory / "config.json")
    model = random_model(config, seed=5)
    for param in model.parameters():
        param.data = param.data.to(dtype).float()
    out = directory.parent / f"{directory.name}-{str(dtype).split('.')[-1]}"
    save_hf_checkpoint(model, out)
    (out / "tokenizer.model").write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    return out


@pytest.mark.parametrize(("kind", "dtype"), [("F16", torch.float16), ("BF16", torch.bfloat16)])
def test_float_files_give_the_hf_logits(kind, dtype, hf_dir, proto, tiny_tokenizer_dir, tmp_path):
    checkpoint = _rounded_checkpoint(hf_dir, tiny_tokenizer_dir, dtype)
    reference, tokenizer = load_model_and_tokenizer(checkpoint, torch.float32, torch.device("cpu"))[
        :2
    ]
    config = reference.config
    tensors, _ = gguf_tensors(load_hf_weights(checkpoint), kind)
    config_, state, gguf_tokenizer, _ = load_gguf(
        write_file(tmp_path / "m.gguf", config, tensors, proto)
    )
    want = logits(reference, tokenizer)
    got = logits(as_model(config_, state), gguf_tokenizer)
    # Identical weights; only the norms pass through 1 + w and back in float32.
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize(("kind", "bound"), [("Q8_0", 0.9995), ("Q4_0", 0.97)])
def test_quantized_files_stay_close_to_the_hf_logits(kind, bound, hf_dir, proto, tmp_path):
    reference, tokenizer = load_model_and_tokenizer(hf_dir, torch.float32, torch.device("cpu"))[:2]
    tensors, _ = gguf_tensors(load_hf_weights(hf_dir), kind)
    path = write_file(tmp_path / "m.gguf", reference.config, tensors, proto)
    config, state, _, _ = load_gguf(path)
    assert cosine(logits(as_model(config, state), tokenizer), logits(reference, tokenizer)) >= bound


def test_ollama_blob_loads_through_codegemma_load(hf_dir, proto, tmp_path):
    import codegemma

    config = GemmaConfig.from_json_file(hf_dir / "config.json")
    tensors, held = gguf_tensors(load_hf_weights(hf_dir), "F16")
    blob = write_file(tmp_path / "sha256-4f3a9c", config, tensors, proto)
    lm = codegemma.load(blob, dtype="float32")
    want = logits(as_model(config, held), lm.tokenizer)
    assert torch.allclose(lm.logits(lm.tokenizer.encode(PROMPT)), want, atol=1e-4)


# ------------------------------------------------------------------------------------ errors


def _file(hf_dir, proto, tmp_path, *, kind="F16", arch="gemma", edit=None, extra=None, drop=()):
    config = GemmaConfig.from_json_file(hf_dir / "config.json")
    tensors, _ = gguf_tensors(load_hf_weights(hf_dir), kind)
    for name in drop:
        del tensors[name]
    tensors.update(extra or {})
    return write_file(tmp_path / "m.gguf", config, tensors, proto, arch=arch, edit=edit)


def test_other_architectures_are_named(hf_dir, proto, tmp_path):
    path = _file(hf_dir, proto, tmp_path, arch="llama")
    with pytest.raises(GGUFError, match="architecture 'llama'; codegemma runs 'gemma'"):
        load_gguf(path)


def test_unsupported_tensor_type_is_named(hf_dir, proto, tmp_path):
    q2 = np.zeros((256, 84), np.uint8)  # a Q2_K tensor (256 x 256)
    path = _file(hf_dir, proto, tmp_path, extra={"blk.0.attn_q.weight": (q2, "Q2_K")})
    with pytest.raises(GGUFError, match=r"Q2_K \(e.g. blk.0.attn_q.weight\).*does not run"):
        load_gguf(path)


def test_foreign_tensors_and_missing_metadata(hf_dir, proto, tmp_path):
    extra = {"rope_freqs.weight": (np.ones(32, np.float32), "F32")}
    with pytest.raises(GGUFError, match="not Gemma's: rope_freqs.weight"):
        load_gguf(_file(hf_dir, proto, tmp_path, extra=extra))
    path = _file(hf_dir, proto, tmp_path, edit=lambda m: m.pop("feed_forward_length"))
    with pytest.raises(GGUFError, match="lacks the metadata 'gemma.feed_forward_length'"):
        load_gguf(path)
    # Tensors and metadata that disagree: the engine's strict assignment names the tensors.
    path = _file(hf_dir, proto, tmp_path, drop=["blk.1.ffn_up.weight"])
    with pytest.raises(CheckpointError, match="missing tensor.*layers.1.mlp.up_proj"):
        as_model(*load_gguf(path)[:2])
    path = _file(hf_dir, proto, tmp_path, edit=lambda m: m.update(block_count=3))
    with pytest.raises(CheckpointError, match="missing tensor.*layers.2"):
        as_model(*load_gguf(path)[:2])


def test_output_weight_is_ignored_with_a_note(hf_dir, proto, tmp_path):
    extra = {"output.weight": (np.zeros((512, 256), np.float16), "F16")}
    _, state, _, notes = load_gguf(_file(hf_dir, proto, tmp_path, extra=extra))
    assert "lm_head.weight" not in state
    assert any(note.startswith("output.weight ignored") for note in notes)


def test_head_dim_without_key_length_comes_from_the_query_tensor(hf_dir, proto, tmp_path):
    def edit(metadata):
        del metadata["attention.key_length"], metadata["attention.value_length"]

    config, *_ = load_gguf(_file(hf_dir, proto, tmp_path, edit=edit))
    assert config.head_dim == 64


def test_truncated_file_is_a_clear_error(hf_dir, proto, tmp_path):
    path = _file(hf_dir, proto, tmp_path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(GGUFError, match="is truncated: tensor"):
        load_gguf(path)
