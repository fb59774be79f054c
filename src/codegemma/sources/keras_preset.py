"""keras-hub / KerasNLP Gemma presets (`code_gemma_2b_en`, `code_gemma_instruct_7b_en`, ...).

A preset directory holds `config.json` (a serialized `GemmaBackbone`), the weights in
`model.weights.h5` (or, when large, `model_0000N.weights.h5` shards listed in
`model.weights.json`) and the SentencePiece model at `assets/tokenizer/vocabulary.spm`.
Keras 3 files weights by object structure, not by variable name: each layer of the backbone is
the group `layers/<its class in snake case>[_<k>]` (k counts repeats in layer order) and its
variables are the datasets `vars/0, 1, ...`. bfloat16 values are stored as 2-byte opaque
values with the attribute dtype="bfloat16". Reading needs h5py (the `keras` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.optional import require
from codegemma.sources.base import SourceCheckpoint, tensor_from_array
from codegemma.sources.einsum import LAYOUTS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARD_INDEX_FILE = "model.weights.json"
VOCABULARY_FILE = Path("assets", "tokenizer", "vocabulary.spm")
BACKBONE_CLASS = "GemmaBackbone"

# (engine name, Keras group under `layers/`, layout of the stored array)
GLOBAL_TABLE = (
    ("model.embed_tokens.weight", "reversible_embedding", "same"),  # (V, D)
    ("model.norm.weight", "rms_normalization", "same"),  # final_normalization/scale (D,)
)
BLOCK_GROUP = "gemma_decoder_block"  # the k-th decoder block: gemma_decoder_block_k (k > 0)
LAYER_TABLE = (
    ("input_layernorm.weight", "pre_attention_norm", "same"),  # (D,)
    ("self_attn.q_proj.weight", "attention/query_dense", "heads_in"),  # query (N, D, H)
    ("self_attn.k_proj.weight", "attention/key_dense", "heads_in"),  # key (K, D, H)
    ("self_attn.v_proj.weight", "attention/value_dense", "heads_in"),  # value (K, D, H)
    ("self_attn.o_proj.weight", "attention/output_dense", "heads_out"),  # (N, H, D)
    ("post_attention_layernorm.weight", "pre_ffw_norm", "same"),  # (D,)
    ("mlp.gate_proj.weight", "gating_ffw", "dense"),  # ffw_gating (D, F)
    ("mlp.up_proj.weight", "gating_ffw_2", "dense"),  # ffw_gating_2 (D, F)
    ("mlp.down_proj.weight", "ffw_linear", "dense"),  # (F, D)
)
# Backbone settings that make a model something other than Gemma v1, with the v1 value.
_V1_SETTINGS = {
    "use_post_ffw_norm": False,
    "use_post_attention_norm": False,
    "final_logit_soft_cap": None,
    "attention_logit_soft_cap": None,
    "use_sliding_window_attention": False,
    "query_head_dim_normalize": True,
}


def is_keras_preset(directory: Path) -> bool:
    """A config.json naming a keras-hub class next to Keras weight files."""
    has_weights = (directory / WEIGHTS_FILE).is_file() or (directory / SHARD_INDEX_FILE).is_file()
    return has_weights and "class_name" in _read_json(directory / CONFIG_FILE, quiet=True)


def load_keras_preset(directory: str | Path) -> SourceCheckpoint:
    """Config, weights in engine names, and the tokenizer file of a keras-hub Gemma preset."""
    directory = Path(directory)
    config = _config(directory)
    arrays = _read_weights(directory)
    state = {}
    for name, group, layout in _table(config.num_hidden_layers):
        key = f"layers/{group}/vars/0"
        if key not in arrays:
            raise CheckpointError(f"{directory}: the Keras weights lack {key} (for {name})")
        state[name] = LAYOUTS[layout](arrays.pop(key))
    config = config.replace(vocab_size=state["model.embed_tokens.weight"].shape[0])
    tokenizer = directory / VOCABULARY_FILE
    if not tokenizer.is_file():
        raise CheckpointError(f"{directory} is a keras-hub preset without {VOCABULARY_FILE}")
    kinds = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    notes = [f"keras-hub preset: {len(state)} tensors ({', '.join(kinds)}) from Keras kernels"]
    return SourceCheckpoint(config, state, tokenizer, notes)


def _table(layers: int) -> list[tuple[str, str, str]]:
    rows = list(GLOBAL_TABLE)
    for i in range(layers):
        block = BLOCK_GROUP if i == 0 else f"{BLOCK_GROUP}_{i}"
        rows += [(f"model.layers.{i}.{n}", f"{block}/{g}", layout) for n, g, layout in LAYER_TABLE]
    return rows


def _config(directory: Path) -> GemmaConfig:
    raw = _read_json(directory / CONFIG_FILE)
    if raw.get("class_name") != BACKBONE_CLASS:
        raise CheckpointError(
            f"{directory} holds a keras-hub {raw.get('class_name')!r}; codegemma runs "
            f"{BACKBONE_CLASS} presets (Gemma v1 / CodeGemma)"
        )
    fields = raw.get("config") or {}
    for key, v1_value in _V1_SETTINGS.items():
        if fields.get(key, v1_value) != v1_value:
            raise CheckpointError(
                f"{directory}: {key}={fields[key]!r} is not a Gemma v1 setting (Gemma 2 "
                "presets are not supported)"
            )
    try:
        return GemmaConfig(
            vocab_size=fields["vocabulary_size"],
            hidden_size=fields["hidden_dim"],
            # keras-hub's intermediate_dim counts both halves of the GeGLU (gate and up).
            intermediate_size=fields["intermediate_dim"] // 2,
            num_hidden_layers=fields["num_layers"],
            num_attention_heads=fields["num_query_heads"],
            num_key_value_heads=fields["num_key_value_heads"],
            head_dim=fields["head_dim"],
            rms_norm_eps=fields.get("layer_norm_epsilon", 1e-6),
        )
    except KeyError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE} lacks the field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every dataset of the weight file(s) by its path, as tensors."""
    h5py = require("h5py", "keras", "reading keras-hub presets", CheckpointError)
    arrays: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        with h5py.File(path, "r") as file:
            for key, dataset in _datasets(file, h5py):
                if key in arrays:
                    raise CheckpointError(f"{directory}: {key} is stored in more than one shard")
                bfloat16 = _attribute(dataset, "dtype") == "bfloat16"
                arrays[key] = tensor_from_array(dataset[()], bfloat16)
    return arrays


def _datasets(file, h5py):
    found = []
    file.visititems(
        lambda key, item: found.append((key, item)) if isinstance(item, h5py.Dataset) else None
    )
    return found


def _attribute(dataset, name: str) -> str | None:
    value = dataset.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def _weight_files(directory: Path) -> list[Path]:
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    index = _read_json(directory / SHARD_INDEX_FILE)
    names: set[str] = set()
    for value in (index.get("weight_map") or {}).values():
        names.update([value] if isinstance(value, str) else value)
    missing = sorted(n for n in names if not (directory / n).is_file())
    if not names or missing:
        raise CheckpointError(
            f"{directory / SHARD_INDEX_FILE} lists no weight files or missing ones: {missing}"
        )
    return [directory / n for n in sorted(names)]


def _read_json(path: Path, quiet: bool = False) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if quiet:
            return {}
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        if quiet:
            return {}
        raise CheckpointError(f"{path} must hold a JSON object")
    return raw
