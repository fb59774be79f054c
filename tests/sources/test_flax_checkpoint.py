"""Flax checkpoints written by Google's `gemma` library itself (params.format_and_save_params,
the orbax layout of the Kaggle downloads): logits against the library's own Transformer for
split q/kv (MQA) and fused qkv (MHA) attention, padded embeddings, bfloat16, conversion."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from seed_libraries import jax_on_one_cpu_thread

import codegemma
from codegemma.cli import main
from codegemma.errors import CheckpointError
from codegemma.sources.detect import detect_source
from codegemma.sources.flax_checkpoint import load_flax_checkpoint

pytestmark = pytest.mark.parity  # checked against another library

PROMPT = "def add(a, b):\n    return a + b  # 123"
PADDING_ROWS = 64  # like the released 256128-row embeddings for a 256000-token vocabulary
TOLERANCE = 1e-4  # float32 logits of magnitude ~10; measured differences are at most 3.4e-5


@pytest.fixture(scope="module")
def jax():
    return jax_on_one_cpu_thread()


def flax_model(jax, vocab: int, kv_heads: int, seed: int, dtype=np.float32):
    """The gemma library's Transformer (Gemma v1 settings) and random parameters for it."""
    from gemma import modules
    from gemma import transformer as transformer_lib

    config = transformer_lib.TransformerConfig(
        num_layers=2,
        num_embed=vocab,
        embed_dim=64,
        hidden_dim=128,
        num_heads=4,
        head_dim=32,
        num_kv_heads=kv_heads,
        final_logit_softcap=None,
        use_post_attn_norm=False,
        use_post_ffw_norm=False,
        attention_types=(modules.AttentionType.GLOBAL,) * 2,
        max_cache_length=None,
    )
    model = transformer_lib.Transformer(config)
    ids = jax.numpy.zeros((1, 4), dtype=jax.numpy.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *_inputs(jax, ids)))
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda s: jax.numpy.asarray(rng.normal(0.0, 0.3, s.shape).astype(dtype)), shapes
    )
    return model, params


def _inputs(jax, ids):
    from gemma import transformer as transformer_lib

    positions = jax.numpy.arange(ids.shape[1])[None]
    mask = transformer_lib.make_causal_attn_mask(jax.numpy.ones(ids.shape, dtype=bool))
    return ids, positions, None, mask


def flax_logits(jax, model, params, ids: list[int]) -> torch.Tensor:
    batch = jax.numpy.asarray([ids], dtype=jax.numpy.int32)
    logits, _ = model.apply(params, *_inputs(jax, batch))
    return torch.from_numpy(np.array(logits, dtype=np.float32)[0])


def save_kaggle_layout(params, root: Path, tokenizer_dir: Path) -> Path:
    """Write as Kaggle's cache holds `google/codegemma/flax/2b-pt` version 1:
    `root/flax/2b-pt/1/{2b-pt/<orbax files>, spm.model}`; returns `root/flax/2b-pt`."""
    from gemma import params as params_lib

    version = root / "flax" / "2b-pt" / "1"
    version.mkdir(parents=True)
    params_lib.format_and_save_params({"transformer": params["params"]}, str(version / "2b-pt"))
    shutil.copyfile(tokenizer_dir / "tokenizer.model", version / "spm.model")
    return version.parent


def our_logits(path: Path, ids: list[int]) -> torch.Tensor:
    return codegemma.load(path, dtype="float32", kernels="torch", threads=1).logits(ids)


@pytest.fixture(scope="module", params=[1, 4], ids=["mqa-kv_einsum", "mha-qkv_einsum"])
def checkpoint(request, jax, tiny_tokenizer, tiny_tokenizer_dir, tmp_path_factory):
    """The Kaggle model folder (`root`), prompt `ids` and the library's `logits`; the prompt
    also uses ids of the padding rows past the tokenizer's vocabulary."""
    vocab = tiny_tokenizer.vocab_size + PADDING_ROWS
    model, params = flax_model(jax, vocab, kv_heads=request.param, seed=request.param)
    root = save_kaggle_layout(params, tmp_path_factory.mktemp("flax"), tiny_tokenizer_dir)
    ids = tiny_tokenizer.encode(PROMPT) + [vocab - 1, tiny_tokenizer.vocab_size]
    logits = flax_logits(jax, model, params, ids)
    return SimpleNamespace(root=root, ids=ids, logits=logits, kv_heads=request.param)


def test_checkpoint_has_the_fused_or_split_attention_kernels(checkpoint):
    orbax_dir = checkpoint.root / "1" / "2b-pt"
    assert (orbax_dir / "manifest.ocdbt").is_file()
    tree = (orbax_dir / "_METADATA").read_text()  # orbax's record of the saved tree
    fused = "layer_0/attn/qkv_einsum" in tree
    split = "layer_0/attn/q_einsum" in tree and "layer_0/attn/kv_einsum" in tree
    assert (fused, split) == ((True, False) if checkpoint.kv_heads == 4 else (False, True))
    state = load_flax_checkpoint(orbax_dir).state
    assert state["model.embed_tokens.weight"].shape[0] == 512 + PADDING_ROWS


@pytest.mark.parametrize("where", ["model folder", "version folder", "orbax folder"])
def test_logits_match_the_gemma_library(checkpoint, where):
    root, ids, expected = checkpoint.root, checkpoint.ids, checkpoint.logits
    path = {"model folder": root, "version folder": root / "1", "orbax folder": root / "1/2b-pt"}
    assert detect_source(path[where]) == "flax"
    got = our_logits(path[where], ids)
    assert got.shape == expected.shape == (len(ids), 512 + PADDING_ROWS)
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_bfloat16_checkpoint_keeps_its_values(jax, tiny_tokenizer_dir, tmp_path):
    _, params = flax_model(jax, 512, kv_heads=4, seed=7, dtype=np.float32)
    params = jax.tree_util.tree_map(lambda x: x.astype(jax.numpy.bfloat16), params)
    root = save_kaggle_layout(params, tmp_path, tiny_tokenizer_dir)
    state = load_flax_checkpoint(root).state
    layer = params["params"]["layer_1"]
    qkv = torch.from_numpy(np.asarray(layer["attn"]["qkv_einsum"]["w"], dtype=np.float32))
    value = qkv[2]  # (N, D, H): value head n's row h is value_proj row n * H + h
    expected = torch.cat([value[n].t() for n in range(value.shape[0])])
    assert state["model.layers.1.self_attn.v_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(state["model.layers.1.self_attn.v_proj.weight"].float(), expected)
    up = np.asarray(layer["mlp"]["gating_einsum"], dtype=np.float32)[1]  # (D, F)
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"].float(), torch.from_numpy(up).t())


def test_convert_to_hf_and_gguf(checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    root, ids, expected = checkpoint.root, checkpoint.ids, checkpoint.logits
    hf_dir, gguf_file = tmp_path / "hf", tmp_path / "model.gguf"
    assert main(["convert", str(root), str(hf_dir), "--to", "hf"]) == 0
    model = transformers.GemmaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    assert main(["convert", str(root), str(gguf_file), "--to", "gguf", "--type", "f32"]) == 0
    torch.testing.assert_close(our_logits(gguf_file, ids), expected, atol=TOLERANCE, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.gguf"]  # no scratch left


def test_folder_without_tokenizer_is_named(checkpoint, tmp_path):
    shutil.copytree(checkpoint.root / "1" / "2b-pt", tmp_path / "2b-pt")
    with pytest.raises(CheckpointError, match="spm.model or tokenizer.model"):
        codegemma.load(tmp_path / "2b-pt")


def test_missing_tensorstore_names_the_extra(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorstore", None)
    with pytest.raises(CheckpointError, match=r"pip install 'codegemma\[flax\]'"):
        load_flax_checkpoint(checkpoint.root)
