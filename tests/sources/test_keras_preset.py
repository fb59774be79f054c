"""keras-hub presets written by keras-hub itself (GemmaCausalLM.save_to_preset, torch backend):
logits against keras-hub's own forward pass, bfloat16 and sharded weight files, conversion."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from seed_libraries import keras_on_torch

import codegemma
from codegemma.cli import main
from codegemma.errors import CheckpointError
from codegemma.sources.detect import detect_source
from codegemma.sources.keras_preset import load_keras_preset

PROMPT = "def add(a, b):\n    return a + b  # 123"
SHAPES = dict(num_layers=2, num_query_heads=4, hidden_dim=64, intermediate_dim=256, head_dim=32)
TOLERANCE = 1e-4  # float32 logits of magnitude ~10; measured differences are at most 3e-5
# keras' torch backend converts through np.array(x) without numpy 2's copy keyword.
pytestmark = [
    pytest.mark.parity,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def libs():
    return keras_on_torch()


def build_causal_lm(libs, tokenizer_dir: Path, kv_heads: int, dtype: str = "float32", seed=0):
    """A tiny random GemmaCausalLM with the tiny tokenizer; weights (norms too) drawn at random,
    rounded to bfloat16 so that float32 and bfloat16 models hold the same values."""
    keras, keras_hub = libs
    tokenizer = keras_hub.models.GemmaTokenizer(proto=str(tokenizer_dir / "tokenizer.model"))
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_key_value_heads=kv_heads,
        dtype=dtype,
        **SHAPES,
    )
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        values = torch.from_numpy(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
        variable.assign(values.to(torch.bfloat16).float().numpy())
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=32)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)


def keras_logits(libs, causal_lm, ids: list[int]) -> torch.Tensor:
    keras, _ = libs
    batch = np.array([ids])
    logits = causal_lm({"token_ids": batch, "padding_mask": np.ones_like(batch)})
    return torch.from_numpy(keras.ops.convert_to_numpy(logits)[0]).float()


def our_logits(path: Path, ids: list[int]) -> torch.Tensor:
    return codegemma.load(path, dtype="float32", kernels="torch", threads=1).logits(ids)


@pytest.fixture(scope="module", params=[1, 4], ids=["mqa", "mha"])
def preset(request, libs, tiny_tokenizer, tiny_tokenizer_dir, tmp_path_factory):
    """(preset directory, prompt ids, keras-hub's logits) for MQA (K=1) and MHA (K=N)."""
    causal_lm = build_causal_lm(libs, tiny_tokenizer_dir, kv_heads=request.param)
    directory = tmp_path_factory.mktemp(f"keras_{request.param}")
    causal_lm.save_to_preset(str(directory))
    ids = tiny_tokenizer.encode(PROMPT)
    return directory, ids, keras_logits(libs, causal_lm, ids)


def test_preset_layout_is_what_keras_hub_writes(preset):
    directory, _, _ = preset
    for name in ("config.json", "model.weights.h5", "assets/tokenizer/vocabulary.spm"):
        assert (directory / name).is_file(), name
    assert detect_source(directory) == "keras"


def test_logits_match_keras_hub(preset):
    directory, ids, expected = preset
    got = our_logits(directory, ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_bfloat16_sharded_preset_holds_the_same_model(libs, preset, tiny_tokenizer_dir, tmp_path):
    """bfloat16 weights (2-byte opaque HDF5 values tagged dtype=bfloat16) split over several
    files by Keras' sharding give the float32 model's logits: same values, all tensors found."""
    directory, ids, expected = preset
    kv_heads = json.loads((directory / "config.json").read_text())["config"]["num_key_value_heads"]
    causal_lm = build_causal_lm(libs, tiny_tokenizer_dir, kv_heads, dtype="bfloat16")
    causal_lm.backbone.save_to_preset(str(tmp_path), max_shard_size=0.0002)  # in GB: ~200 kB
    shutil.copytree(directory / "assets", tmp_path / "assets")
    assert not (tmp_path / "model.weights.h5").exists()
    assert len(list(tmp_path.glob("model_*.weights.h5"))) > 1
    checkpoint = load_keras_preset(tmp_path)
    assert {t.dtype for t in checkpoint.state.values()} == {torch.bfloat16}
    torch.testing.assert_close(our_logits(tmp_path, ids), expected, atol=TOLERANCE, rtol=0)


def test_convert_to_hf_gives_transformers_the_same_logits(preset, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    directory, ids, expected = preset
    out = tmp_path / "hf"
    assert main(["convert", str(directory), str(out), "--to", "hf"]) == 0
    assert "float32" in capsys.readouterr().out
    assert (out / "tokenizer.model").read_bytes() == (
        directory / "assets/tokenizer/vocabulary.spm"
    ).read_bytes()
    model = transformers.GemmaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_gemma2_presets_are_refused(preset, tmp_path):
    directory, _, _ = preset
    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["use_post_ffw_norm"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="use_post_ffw_norm=True is not a Gemma v1"):
        codegemma.load(tmp_path, dtype="float32")


def test_missing_h5py_names_the_extra(preset, monkeypatch):
    directory, _, _ = preset
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(CheckpointError, match=r"pip install 'codegemma\[keras\]'"):
        load_keras_preset(directory)
