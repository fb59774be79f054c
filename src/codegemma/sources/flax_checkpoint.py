"""Flax checkpoints of Google's `gemma` library (Kaggle `google/codegemma/flax/2b-pt`, `7b-it`).

A Kaggle download is a folder holding the tokenizer (`spm.model`; Gemma's own use
`tokenizer.model`) and a subfolder with the orbax checkpoint, e.g. `.../flax/2b-pt/3/2b-pt`. Orbax
stores each array as a zarr array (`.zarray`, or `zarr.json` for zarr3) inside an OCDBT database
(`manifest.ocdbt`) or, in older checkpoints, a folder of its own; the array's name is its tree
path joined by "." (`transformer/layer_0/attn/q_einsum.w`). Reading needs tensorstore (the `flax`
extra), which reads one array at a time: jax and orbax are not needed.

The tree (`params['transformer']`) per layer: `attn/q_einsum/w` (N, D, H) with
`attn/kv_einsum/w` (2, K, D, H) when K != N, or `attn/qkv_einsum/w` (3, N, D, H) when K == N;
`attn/attn_vec_einsum/w` (N, H, D); `mlp/gating_einsum` (2, D, F) (0 = gate, 1 = up; Gemma 3
era files use (2, F, D)); `mlp/linear` (F, D); norms `pre_attention_norm/scale`,
`pre_ffw_norm/scale`. The embedding `embedder/input_embedding` has 256128 rows for the
released models: more than the tokenizer's 256000, and all of them are kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from codegemma.config import GemmaConfig
from codegemma.errors import CheckpointError
from codegemma.optional import require
from codegemma.sources.base import SourceCheckpoint, tensor_from_array
from codegemma.sources.einsum import LAYOUTS

TOKENIZER_FILES = ("spm.model", "tokenizer.model")
# Files orbax writes at the top of a checkpoint folder (new and old versions).
MARKERS = ("manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA", "checkpoint")
ZARR_MARKERS = {".zarray": "zarr", "zarr.json": "zarr3"}

# (engine name, Flax name, index into the stacked array or None, layout of the stored array)
GLOBAL_TABLE = (
    ("model.embed_tokens.weight", "embedder/input_embedding", None, "same"),  # (V, D)
    ("model.norm.weight", "final_norm/scale", None, "same"),  # (D,)
)
LAYER_TABLE = (
    ("input_layernorm.weight", "pre_attention_norm/scale", None, "same"),  # (D,)
    ("self_attn.o_proj.weight", "attn/attn_vec_einsum/w", None, "heads_out"),  # (N, H, D)
    ("post_attention_layernorm.weight", "pre_ffw_norm/scale", None, "same"),  # (D,)
    ("mlp.gate_proj.weight", "mlp/gating_einsum", 0, "dense"),  # (2, D, F)[0]
    ("mlp.up_proj.weight", "mlp/gating_einsum", 1, "dense"),  # (2, D, F)[1]
    ("mlp.down_proj.weight", "mlp/linear", None, "dense"),  # (F, D)
)
SPLIT_QKV_TABLE = (  # K != N
    ("self_attn.q_proj.weight", "attn/q_einsum/w", None, "heads_in"),  # (N, D, H)
    ("self_attn.k_proj.weight", "attn/kv_einsum/w", 0, "heads_in"),  # (2, K, D, H)[0]
    ("self_attn.v_proj.weight", "attn/kv_einsum/w", 1, "heads_in"),  # (2, K, D, H)[1]
)
FUSED_QKV_TABLE = (  # K == N
    ("self_attn.q_proj.weight", "attn/qkv_einsum/w", 0, "heads_in"),  # (3, N, D, H)[0]
    ("self_attn.k_proj.weight", "attn/qkv_einsum/w", 1, "heads_in"),  # (3, N, D, H)[1]
    ("self_attn.v_proj.weight", "attn/qkv_einsum/w", 2, "heads_in"),  # (3, N, D, H)[2]
)
_LAYER = re.compile(r"^layer_(\d+)/")


def find_flax_checkpoint(path: Path) -> Path | None:
    """The orbax checkpoint folder that `path` is or holds (Kaggle layouts), or None."""
    if _is_checkpoint_dir(path):
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    checkpoints = [p for p in subdirs if _is_checkpoint_dir(p)]
    if len(checkpoints) == 1:  # `.../2b-pt/N` holding `2b-pt/` and spm.model
        return checkpoints[0]
    versions = [p for p in subdirs if p.name.isdigit()]
    if versions and len(versions) == len(subdirs):  # `.../flax/2b-pt` holding versions 1..N
        latest = max(versions, key=lambda p: int(p.name))
        found = [p for p in latest.iterdir() if _is_checkpoint_dir(p)]
        return found[0] if len(found) == 1 else None
    return None


def _is_checkpoint_dir(path: Path) -> bool:
    if not path.is_dir() or (path / "config.json").exists():
        return False
    return any((path / marker).is_file() for marker in MARKERS)


def load_flax_checkpoint(path: str | Path) -> SourceCheckpoint:
    """Config, weights in engine names, and the tokenizer file of a `gemma` Flax checkpoint."""
    path = Path(path)
    directory = find_flax_checkpoint(path)
    if directory is None:
        raise CheckpointError(f"{path} holds no orbax checkpoint folder")
    tokenizer = _tokenizer_file(directory, path)
    store = _ArrayStore(directory)
    config, fused = _config(store)
    state = {}
    for name, flax_name, index, layout in _table(store, config, fused):
        state[name] = LAYOUTS[layout](store.read(flax_name, index))
    unused = sorted(set(store.names) - store.used)
    if unused:
        raise CheckpointError(
            f"{directory} has arrays that Gemma v1 does not: {', '.join(unused[:8])}"
        )
    kinds = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    notes = [f"Flax checkpoint {directory}: {len(store.names)} arrays ({', '.join(kinds)})"]
    return SourceCheckpoint(config, state, tokenizer, notes)


def _tokenizer_file(directory: Path, given: Path) -> Path:
    folders = dict.fromkeys([directory, directory.parent, given])  # ordered, unique
    for folder in folders:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(
        f"no tokenizer for the Flax checkpoint {directory}: looked for "
        f"{' or '.join(TOKENIZER_FILES)} in it and in {directory.parent}"
    )


def _config(store: _ArrayStore) -> tuple[GemmaConfig, bool]:
    vocab, hidden = store.shape("embedder/input_embedding")
    layers = len({int(m.group(1)) for n in store.names if (m := _LAYER.match(n))})
    fused = "layer_0/attn/qkv_einsum/w" in store.names
    if fused:
        _, heads, _, head_dim = store.shape("layer_0/attn/qkv_einsum/w")  # (3, N, D, H)
        kv_heads = heads
    else:
        heads, _, head_dim = store.shape("layer_0/attn/q_einsum/w")  # (N, D, H)
        kv_heads = store.shape("layer_0/attn/kv_einsum/w")[1]  # (2, K, D, H)
    try:
        config = GemmaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=store.shape("layer_0/mlp/linear")[0],  # (F, D)
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
        )
    except ValueError as exc:
        raise CheckpointError(f"{store.directory}: not a Gemma v1 checkpoint: {exc}") from exc
    return config, fused


def _table(store: _ArrayStore, config: GemmaConfig, fused: bool) -> list[tuple]:
    gating = store.shape("layer_0/mlp/gating_einsum")
    # Gemma 3 era files store the gating kernel as (2, F, D): already [out, in].
    transposed = gating[1] == config.intermediate_size != config.hidden_size
    attention = FUSED_QKV_TABLE if fused else SPLIT_QKV_TABLE
    rows = list(GLOBAL_TABLE)
    for i in range(config.num_hidden_layers):
        for name, flax_name, index, layout in attention + LAYER_TABLE:
            if transposed and flax_name == "mlp/gating_einsum":
                layout = "same"
            rows.append((f"model.layers.{i}.{name}", f"layer_{i}/{flax_name}", index, layout))
    return rows


class _ArrayStore:
    """The zarr arrays of one orbax checkpoint folder, by normalised tree path."""

    def __init__(self, directory: Path) -> None:
        self.ts = require(
            "tensorstore", "flax", "reading Flax (orbax) checkpoints", CheckpointError
        )
        self.directory = directory
        if (directory / "manifest.ocdbt").is_file():
            self.kvstore = {"driver": "ocdbt", "base": f"file://{directory.resolve()}/"}
        else:
            self.kvstore = {"driver": "file", "path": f"{directory.resolve()}/"}
        self.specs = self._specs()
        self.names = sorted(self.specs)
        self.used: set[str] = set()
        self._last: tuple[str, torch.Tensor] | None = None  # stacked arrays are used 2-3 times

    def _specs(self) -> dict[str, dict]:
        try:
            keys = self.ts.KvStore.open(self.kvstore).result().list().result()
        except Exception as exc:  # tensorstore raises ValueError / its own errors
            raise CheckpointError(
                f"cannot read the orbax checkpoint {self.directory}: {exc}"
            ) from exc
        specs = {}
        for key in (k.decode() for k in keys):
            for marker, driver in ZARR_MARKERS.items():
                if key.endswith("/" + marker):
                    param = key[: -len(marker) - 1]
                    kvstore = {**self.kvstore, "path": self.kvstore.get("path", "") + param + "/"}
                    specs[_normalise(param)] = {"driver": driver, "kvstore": kvstore}
        if not specs:
            raise CheckpointError(
                f"{self.directory} holds no zarr arrays (not an orbax checkpoint)"
            )
        return specs

    def _open(self, name: str):
        if name not in self.specs:
            hint = ""
            if (self.directory / "checkpoint").is_file():
                hint = " (arrays kept inside an old orbax msgpack `checkpoint` file are not read)"
            raise CheckpointError(f"{self.directory}: the checkpoint has no array {name!r}{hint}")
        return self.ts.open(self.specs[name], open=True).result()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(name).shape)

    def read(self, name: str, index: int | None) -> torch.Tensor:
        if self._last is None or self._last[0] != name:
            self._last = (name, tensor_from_array(self._open(name).read().result()))
            self.used.add(name)
        tensor = self._last[1]
        return tensor if index is None else tensor[index]


def _normalise(param: str) -> str:
    """`transformer/layer_0/attn/q_einsum.w` -> `layer_0/attn/q_einsum/w`; the MLP kernels
    lose the `/w` that the library's loader drops too (`mlp/linear/w` -> `mlp/linear`)."""
    name = param.replace(".", "/")
    for prefix in ("params/", "transformer/"):
        name = name.removeprefix(prefix)
    if name.endswith(("mlp/gating_einsum/w", "mlp/linear/w")):
        name = name[: -len("/w")]
    return name
