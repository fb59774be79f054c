"""The native decode step (the whole decoder stack in one C call) against the layer-by-layer
PyTorch path around the same kernels."""

import contextlib

import pytest
import torch

import codegemma
from codegemma.generation import BatchEngine
from codegemma.quant.decode_step import DecodeStep
from codegemma.quant.row_groups import RowGroups

PROMPTS = ["def f(x):\n    return", "import os\n", "class Cache:\n    def get(self, key"]


def engine_for(lm, fused: bool) -> BatchEngine:
    """`lm`'s step engine with its native whole-stack decode step (`fused`), or without it:
    every pass through the model's layers around the same kernels."""
    acceleration = lm.acceleration
    return BatchEngine(
        lm.model,
        decode_step=acceleration.decode_step if fused else None,
        decode_threads=acceleration.decode_threads,
        prompt_threads=acceleration.prompt_threads,
    )


def decode_logits(lm, prompts, steps: int, fused: bool, feed=None):
    """Logits (steps, B, V) of `steps` one-token forward passes of the batch after the prompts
    (each in its own cache); the tokens fed are `feed` (steps, B) or ids 5, 6, ... for every
    row. `fused`: the engine's native whole-stack step, else the model's layers."""
    engine = engine_for(lm, fused)
    ids = [lm.tokenizer.encode(p) for p in prompts]
    caches = [lm.new_cache(len(i) + steps) for i in ids]
    out = []
    with torch.inference_mode():
        for prompt, cache in zip(ids, caches, strict=True):
            with lm.acceleration.prompt_threads():
                lm.model(torch.tensor([prompt]), caches=[cache], logits_positions=slice(0, 0))
        for step in range(steps):
            fed = [5 + step] * len(ids) if feed is None else feed[step].tolist()
            out.append(engine.decode(caches, fed))
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
    # 10 rows: steps in chunks of 8 + 2, prompts of different lengths (each row in its own
    # cache), each row fed different tokens after its prompt
    lm = codegemma.load(trained_checkpoint, quantize=mode, kernels="native")
    prompts = [PROMPTS[i % 3] + " x" * i for i in range(10)]
    feed = torch.randint(3, 200, (5, 10), generator=torch.Generator().manual_seed(0))
    together = decode_logits(lm, prompts, 5, True, feed)
    for row, prompt in enumerate(prompts):
        alone = decode_logits(lm, [prompt], 5, True, feed[:, row : row + 1])
        assert torch.equal(together[:, row], alone[:, 0]), row


@pytest.mark.parametrize("checkpoint", ["trained_checkpoint", "mha_checkpoint"])
def test_attention_split_between_threads_keeps_every_number(checkpoint, request, monkeypatch):
    # the heads of a step are shared between threads (5: shares that cut through the heads
    # of one key/value head); each head's arithmetic stays the same as on one thread
    path = request.getfixturevalue(checkpoint)
    logits = []
    for n in (1, 5):
        lm = codegemma.load(path, threads=n, kernels="native")
        # the prompts on one PyTorch thread for both: PyTorch's own GEMMs may split their
        # sums by thread count (MKL does for small float32 shapes on AVX2)
        monkeypatch.setattr(lm.acceleration, "prompt_threads", contextlib.nullcontext)
        logits.append(decode_logits(lm, PROMPTS, 4, True))
    assert torch.equal(logits[0], logits[1])


def test_generation_is_unchanged_by_the_switch(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, quantize="int8", kernels="native")
    fused = lm.generate(PROMPTS, max_new_tokens=10)
    layered = codegemma.KernelOptions(fused_decode=False)
    lm = codegemma.load(
        trained_checkpoint, quantize="int8", kernels="native", kernel_options=layered
    )
    assert lm.acceleration.decode_step is None
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
    assert calls == []
    lm = codegemma.load(trained_checkpoint, kernels="native")
    lm.generate(PROMPTS[0], max_new_tokens=3)
    prompt = len(lm.tokenizer.encode(PROMPTS[0]))  # a short prompt: rows of the same step
    assert calls == [prompt, 1, 1]
    with torch.enable_grad():  # gradients flow through PyTorch modules only
        lm.batch().decode([lm.new_cache(4)], [5])
    assert calls == [prompt, 1, 1]


def test_a_full_cache_is_refused_as_on_the_layer_path(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, kernels="native")
    with torch.inference_mode():
        for fused in (True, False):
            engine = engine_for(lm, fused)
            full = [lm.new_cache(4), lm.new_cache(4)]
            for cache in full:
                lm.model(torch.tensor([[5, 6, 7, 8]]), caches=[cache])
            with pytest.raises(ValueError, match="KV cache overflow"):
                engine.decode(full, [9, 9])
        with pytest.raises(ValueError, match="1 new tokens for 2 caches"):
            engine.decode([lm.new_cache(8), lm.new_cache(8)], [9])
