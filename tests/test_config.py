import json

import pytest

from codegemma.config import PRESETS, GemmaConfig, preset
from codegemma.errors import CheckpointError


def test_presets_have_the_published_shapes():
    two_b = preset("google/codegemma-2b")
    assert (two_b.num_hidden_layers, two_b.hidden_size, two_b.num_attention_heads) == (18, 2048, 8)
    assert (two_b.num_key_value_heads, two_b.head_dim, two_b.intermediate_size) == (1, 256, 16384)
    seven_b = preset("codegemma-7b-it")
    assert (seven_b.num_hidden_layers, seven_b.hidden_size, seven_b.num_attention_heads) == (
        28,
        3072,
        16,
    )
    assert seven_b.q_width == 4096  # not 3072: head_dim is independent of hidden/heads
    assert set(PRESETS) == {
        "codegemma-2b",
        "codegemma-1.1-2b",
        "codegemma-7b",
        "codegemma-7b-it",
        "codegemma-1.1-7b-it",
    }
    with pytest.raises(KeyError, match="unknown preset"):
        preset("codegemma-13b")


def test_hf_config_round_trip(tmp_path):
    config = preset("codegemma-7b")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_hf_dict()))
    assert GemmaConfig.from_json_file(path) == config


def test_transformers_style_config_with_rope_parameters():
    raw = GemmaConfig().to_hf_dict()
    del raw["rope_theta"]
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000.0}
    assert GemmaConfig.from_hf_dict(raw).rope_theta == 5000.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"hidden_size": None}, "lacks required field"),
        ({"num_key_value_heads": 3}, "multiple of"),
        ({"head_dim": -1}, "positive"),
        ({"hidden_activation": "relu"}, "unsupported activation"),
    ],
)
def test_bad_configs_are_named(change, message):
    raw = {**GemmaConfig().to_hf_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        GemmaConfig.from_hf_dict(raw)


def test_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        GemmaConfig.from_json_file(path)
