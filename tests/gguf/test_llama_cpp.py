"""Peer check: llama.cpp (through llama-cpp-python, an optional install) loads the GGUF files
`codegemma convert` writes, tokenizes like us and computes the same logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_checkpoint

from codegemma.checkpoint.assign import assign_weights
from codegemma.gguf.loader import load_gguf
from codegemma.gguf.writer import write_gguf
from codegemma.model import GemmaForCausalLM
from codegemma.quant.blocks import Int4Blocks, Int8Blocks

pytestmark = pytest.mark.parity  # checked against another library

llama_cpp = pytest.importorskip("llama_cpp")

GGUF_DIMS = dict(hidden_size=256, intermediate_size=512, head_dim=64, num_attention_heads=4)
TEXTS = (
    "def add(a, b):\n    return a + b  # 1234",
    "<|fim_prefix|>import os\n<|fim_suffix|>\nprint(x)<|fim_middle|>",
    "<start_of_turn>user\nHi 🎉<end_of_turn>\n<start_of_turn>model\n",
)


@pytest.fixture(scope="module")
def hf_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hf"), tiny_tokenizer_dir, 512, **GGUF_DIMS)


def _ours(path: Path, ids: list[int]) -> np.ndarray:
    config, state, _, _ = load_gguf(path)
    state = {
        k: v.dequantize() if isinstance(v, Int8Blocks | Int4Blocks) else v for k, v in state.items()
    }
    with torch.device("meta"):
        model = GemmaForCausalLM(config)
    assign_weights(model, state, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        return model.eval()(torch.tensor([ids]), logits_positions=slice(None))[0].numpy()


def _llama(path: Path, ids: list[int]) -> tuple[np.ndarray, object]:
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=1, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


# llama.cpp multiplies F16 weights by activations it rounds to F16, and Q8_0 / Q4_0 weights by
# activations it quantizes to Q8_0 blocks, so its logits differ a little from an exact float32
# product of the same weights. Measured here (cosine, max diff / largest logit): F16 0.9999999,
# 0.02%; Q8_0 0.99994, 0.45% (Q4_0, checked by hand: 0.99994, 0.46%).
@pytest.mark.parametrize(
    ("kind", "cosine", "max_diff"),
    [("f16", 0.99999, 1e-3), ("q8_0", 0.9998, 0.015)],
)
def test_llama_cpp_agrees_with_our_loader(kind, cosine, max_diff, hf_dir, tmp_path):
    path = write_gguf(hf_dir, tmp_path / f"m-{kind}.gguf", kind)
    tokenizer = load_gguf(path)[2]
    ids = tokenizer.encode(TEXTS[0])
    want = _ours(path, ids)
    got, llm = _llama(path, ids)
    assert got.shape == want.shape
    similarity = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert similarity >= cosine
    assert np.abs(got - want).max() <= max_diff * np.abs(want).max()
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text)
    # llama.cpp reads the special ids the file carries (FIM, end of turn) as we find them.
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert [
        llama_cpp.llama_vocab_fim_pre(vocab),
        llama_cpp.llama_vocab_fim_suf(vocab),
        llama_cpp.llama_vocab_fim_mid(vocab),
        llama_cpp.llama_vocab_fim_sep(vocab),
        llama_cpp.llama_vocab_eot(vocab),
    ] == [
        tokenizer.token_id(text)
        for text in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>")
    ] + [tokenizer.token_id("<end_of_turn>")]
