"""The decoder against transformers' GemmaForCausalLM on the same random weights."""

import pytest
import torch
import transformers

from codegemma.config import GemmaConfig
from codegemma.kv_cache import KVCache
from codegemma.model import GemmaForCausalLM, token_positions
from codegemma.random_model import random_model

MQA = GemmaConfig(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=256,
)
# Multi-head, with head_dim unrelated to hidden/heads (like 7B: 3072 / 16 != 256).
MHA = MQA.replace(hidden_size=48, num_attention_heads=4, num_key_value_heads=4, head_dim=40)


def reference_model(config: GemmaConfig, ours: GemmaForCausalLM) -> transformers.GemmaForCausalLM:
    fields = {
        k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "torch_dtype")
    }
    hf = transformers.GemmaForCausalLM(transformers.GemmaConfig(**fields)).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    return hf


@pytest.mark.parity
@pytest.mark.parametrize("config", [MQA, MHA], ids=["mqa", "mha"])
def test_float32_logits_match_transformers(config):
    ours = random_model(config, seed=1)
    hf = reference_model(config, ours)
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids, logits_positions=slice(None))
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("config", [MQA, MHA], ids=["mqa", "mha"])
def test_bfloat16_error_is_no_worse_than_transformers_own(config):
    # Stated tolerance: against the float32 reference, our bfloat16 logits err no more than
    # 1.5x (mean) and 2x (max) as much as transformers' bfloat16 logits do; both round
    # differently inside matmuls, so bit equality is not expected.
    ours = random_model(config, seed=2)
    hf = reference_model(config, ours)
    ids = torch.randint(0, config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = hf(ids).logits
        hf_error = (hf.to(torch.bfloat16)(ids).logits.float() - exact).abs()
        ours_bf16 = ours.to(torch.bfloat16)(ids, logits_positions=slice(None)).float()
    our_error = (ours_bf16 - exact).abs()
    assert our_error.mean() <= 1.5 * hf_error.mean()
    assert our_error.max() <= 2.0 * hf_error.max()
    cosine = torch.nn.functional.cosine_similarity(ours_bf16.flatten(), exact.flatten(), dim=0)
    assert cosine.item() >= 0.99


def test_embedding_scale_is_rounded_to_bfloat16():
    # sqrt(3072) = 55.4256 rounds to 55.5 in bf16; the reference multiplies by the rounded value.
    config = MHA.replace(hidden_size=3072, num_hidden_layers=1, intermediate_size=8)
    model = GemmaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
    captured = {}
    model.model.layers[0].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    with torch.no_grad():
        model(torch.tensor([[5]]))
    assert captured["x"].flatten()[0].item() == 55.5


def cache_for(config: GemmaConfig, capacity: int) -> KVCache:
    return KVCache(
        config.num_hidden_layers,
        config.num_key_value_heads,
        capacity,
        config.head_dim,
        dtype=torch.float32,
    )


def test_cached_decoding_equals_full_recomputation():
    model = random_model(MQA, seed=3)
    ids = torch.randint(0, MQA.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, logits_positions=slice(None))
        caches = [cache_for(MQA, 32), cache_for(MQA, 20)]
        parts = [model(ids[:, :9], caches=caches, logits_positions=slice(None))]
        parts.append(model(ids[:, 9:13], caches=caches, logits_positions=slice(None)))  # chunk
        for t in range(13, 20):
            parts.append(model(ids[:, t : t + 1], caches=caches))  # one token at a time
    assert [c.length for c in caches] == [20, 20]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4, rtol=0)


def test_rows_of_different_lengths_step_together_as_alone():
    # each row after its own cache: positions and attention follow that row's length
    model = random_model(MHA, seed=4)
    prompts = [[7, 8, 9, 10], [11, 12], [13, 14, 15, 16, 17, 18, 19]]
    with torch.no_grad():
        caches = [cache_for(MHA, 16) for _ in prompts]
        for ids, cache in zip(prompts, caches, strict=True):
            model(torch.tensor([ids]), caches=[cache])
        together = model(torch.tensor([[3], [4], [5]]), caches=caches)
        for row, ids in enumerate(prompts):
            alone = model(torch.tensor([ids + [3 + row]]))  # the whole sequence, no cache
            assert torch.allclose(together[row], alone[0], atol=1e-5, rtol=0), row
    assert [c.length for c in caches] == [5, 3, 8]


def test_token_positions_follow_each_cache():
    caches = [cache_for(MQA, 8), cache_for(MQA, 8)]
    caches[1].length = 5
    assert token_positions(caches, torch.Size((2, 3)), "cpu").tolist() == [[0, 1, 2], [5, 6, 7]]
    assert token_positions(None, torch.Size((1, 2)), "cpu").tolist() == [[0, 1]]


def test_a_cache_per_row_is_required():
    model = random_model(MQA, seed=6)
    with pytest.raises(ValueError, match="2 rows of tokens for 1 caches"):
        model(torch.tensor([[1], [2]]), caches=[cache_for(MQA, 4)])
    full = cache_for(MQA, 2)
    model(torch.tensor([[1, 2]]), caches=[full])
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.tensor([[3]]), caches=[full])


def test_lm_head_only_for_requested_positions():
    model = random_model(MQA, seed=5)
    ids = torch.randint(0, MQA.vocab_size, (1, 10))
    with torch.no_grad():
        last = model(ids)
        every = model(ids, logits_positions=slice(None))
    assert last.shape == (1, 1, MQA.vocab_size)
    assert torch.allclose(last[0, 0], every[0, -1], atol=1e-5)
