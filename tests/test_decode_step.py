"""The native decode step (the whole decoder stack in one C call) against the layer-by-layer
PyTorch path around the same kernels."""

import pytest
import torch

import codegemma
from codegemma.kv_cache import KVCache
from codegemma.quant.decode_step import DecodeStep
from codegemma.quant.row_groups import RowGroups

PROMPTS = ["def f(x):\n    return", "import os\n", "class Cache:\n    def get(self, key"]


def decode_logits(lm, prompts, steps: int, fused: bool, feed=None):
    """Logits (steps, B, V) of `steps` one-token forward passes after the left-padded prompts;
    the tokens fed are `feed` (steps, B) or token ids 5, 6, ... for every row."""
    lm.acceleration.backend.fused_decode = fused
    model, config = lm.model, lm.model.config
    ids = [lm.tokenizer.encode(p) for p in prompts]
    longest = max(len(i) for i in ids)
    pad = torch.tensor([longest - len(i) for i in ids])
    tokens = torch.tensor([[0] * (longest - len(i)) + i for i in ids])
    cache = KVCache(
        config.num_hidden_layers,
        len(ids),
        config.num_key_value_heads,
        longest + steps,
        config.head_dim,
        dtype=model.activation_dtype,
    )
    out = []
    with torch.inference_mode():
        model(tokens, cache=cache, pad=pad, logits_positions=slice(0, 0))
        for step in range(steps):
            fed = torch.full((len(ids), 1), 5 + step) if feed is None else feed[step][:, None]
            out.append(model(fed, cache=cache, pad=pad)[:, -1])
    lm.acceleration.backend.fused_decode = True
    return torch.stack(out)


def count_runs(monkeypatch) -> list[int]:
    """Record the batch size of every fused step taken."""
    calls = []
    real = DecodeStep.run

    def spy(self, model, x, *args):
        calls.append(x.shape[0])
        return real(self, model, x, *args)

    monkeypatch.setattr(DecodeStep, "run", spy)
    return calls


def assert_close(got, expected):
    """got, expected (steps, B, V): equal to float32 rounding, except that where rounding
    differs, the activations a projection rounds to bfloat16 / int8 may round the other way
    in one element (a step of 2^-8 / 1/127 of a block), which moves that step's logits by up
    to ~0.5% of their scale. Such flips hit a minority of (step, row) pairs (at most ~30% in
    every build measured); a real difference in the computation moves every pair (a 0.1%
    change of one residual add: ~0.3% in all of them)."""
    scale = expected.abs().max().item()
    worst = (got - expected).abs().amax(-1)  # (steps, B)
    assert worst.max().item() <= 1e-2 * scale
    assert worst.median().item() <= 1e-4 * scale


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_fused_step_matches_the_layer_by_layer_path(trained_checkpoint, mode, monkeypatch):
    lm = codegemma.load(trained_checkpoint, quantize=mode, kernels="native")
    calls = count_runs(monkeypatch)
    expected = decode_logits(lm, PROMPTS, 8, fused=False)
    assert calls == []
    got = decode_logits(lm, PROMPTS, 8, fused=True)
    assert calls == [3] * 8  # every one-token step took the C path, the prompt did not
    assert_close(got, expected)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fused_step_reads_planar_blocks(trained_checkpoint, mode, monkeypatch):
    # CPUs without byte dot products keep quantized weights in the file's block layout
    monkeypatch.setattr("codegemma.acceleration.prepare_for_kernels", lambda *a, **k: 0)
    lm = codegemma.load(trained_checkpoint, quantize=mode, kernels="native")
    weight = lm.model.model.layers[0].mlp.up_proj.weight
    assert not isinstance(weight, RowGroups)
    assert_close(decode_logits(lm, PROMPTS, 4, True), decode_logits(lm, PROMPTS, 4, False))


def test_fused_step_serves_grouped_and_multi_head_attention(mha_checkpoint, tiny_lm):
    # mha: as many key/value heads as query heads (7B), head_dim 40; tiny_lm: one kv head
    for lm in (codegemma.load(mha_checkpoint, dtype="bfloat16", kernels="native"), tiny_lm):
        if lm.acceleration.kernels != "native":
            lm = codegemma.load(lm.path, dtype="bfloat16", kernels="native")
        assert_close(decode_logits(lm, PROMPTS, 5, True), decode_logits(lm, PROMPTS, 5, False))


@pytest.mark.parametrize("mode", [None, "int4"])
def test_fused_batches_equal_single_runs_beyond_eight_rows(trained_checkpoint, mode):
    # 10 rows: steps in chunks of 8 + 2. One prompt length: a padded prompt's attention
    # (PyTorch's, masked) rounds differently from the same prompt alone, and float32 q/k
    # from quantized weights show it; each row is fed different tokens after the prompt.
    lm = codegemma.load(trained_checkpoint, quantize=mode, kernels="native")
    prompts = [PROMPTS[0]] * 10
    feed = torch.randint(3, 200, (5, 10), generator=torch.Generator().manual_seed(0))
    together = decode_logits(lm, prompts, 5, True, feed)
    for row, prompt in enumerate(prompts):
        alone = decode_logits(lm, [prompt], 5, True, feed[:, row : row + 1])
        assert torch.equal(together[:, row], alone[:, 0]), row


@pytest.mark.parametrize("checkpoint", ["trained_checkpoint", "mha_checkpoint"])
def test_attention_split_between_threads_keeps_every_number(checkpoint, request):
    # the heads of a step are shared between threads (5: shares that cut through the heads
    # of one key/value head); each head's arithmetic stays the same as on one thread
    path = request.getfixturevalue(checkpoint)
    logits = [
        decode_logits(codegemma.load(path, threads=n, kernels="native"), PROMPTS, 4, True)
        for n in (1, 5)
    ]
    assert torch.equal(logits[0], logits[1])


def test_generation_is_unchanged_by_the_switch(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, quantize="int8", kernels="native")
    fused = lm.generate(PROMPTS, max_new_tokens=10)
    lm.acceleration.backend.fused_decode = False
    plain = lm.generate(PROMPTS, max_new_tokens=10)
    assert [c.token_ids for c in fused] == [c.token_ids for c in plain]


def test_replaced_weights_are_read_again(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, kernels="native")
    before = decode_logits(lm, PROMPTS[:1], 2, True)
    mlp = lm.model.model.layers[1].mlp
    mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.detach() * 0, False)
    after = decode_logits(lm, PROMPTS[:1], 2, True)
    assert not torch.equal(before, after)
    assert_close(after, decode_logits(lm, PROMPTS[:1], 2, False))


def test_unsupported_models_take_the_layer_path(trained_checkpoint, monkeypatch):
    calls = count_runs(monkeypatch)
    lm = codegemma.load(trained_checkpoint, dtype="float32", kernels="native")
    lm.generate(PROMPTS[0], max_new_tokens=3)  # float32 weights: PyTorch's own GEMV
    lm = codegemma.load(trained_checkpoint, kernels="native")
    with torch.enable_grad():  # gradients flow through PyTorch modules only
        lm.model(torch.tensor([[5]]), cache=None)
    assert calls == []


def test_a_full_cache_is_refused_as_on_the_layer_path(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, kernels="native")
    config = lm.model.config

    def cache(rows: int, slots: int) -> KVCache:
        return KVCache(
            config.num_hidden_layers, rows, 1, slots, config.head_dim, dtype=torch.float32
        )

    with torch.inference_mode():
        for fused in (True, False):
            lm.acceleration.backend.fused_decode = fused
            full = cache(2, 4)
            lm.model(torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]]), cache=full)
            with pytest.raises(ValueError, match="KV cache overflow"):
                lm.model(torch.tensor([[9], [9]]), cache=full)
        # the C step writes every row's slot itself: a cache of other rows is refused
        lm.acceleration.backend.fused_decode = True
        with pytest.raises(ValueError, match="1 new tokens for a cache of 2 rows"):
            lm.model(torch.tensor([[9]]), cache=cache(2, 8))
