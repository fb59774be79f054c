"""Speculation from the text itself: drafting, the sampling rule, and that the engine's output
never changes (greedy: the same tokens; sampling: the same distribution)."""

import collections
import math
import subprocess
import sys

import pytest
import torch
from tiny_models import REPETITIVE, tiny_config

import codegemma
from codegemma.engine import CodeGemma
from codegemma.errors import InvalidRequestError
from codegemma.model import GemmaForCausalLM
from codegemma.prompts import Prompt
from codegemma.sampling import SamplingParams
from codegemma.speculation import NgramDrafter, accept_or_replace


def test_drafts_follow_the_latest_earlier_occurrence():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3])
    assert drafter.draft(3) == [7, 8, 1]  # the latest earlier [1, 2, 3] was followed by 7, 8
    drafter.append(7)
    assert drafter.draft(2) == [8, 1]  # [2, 3, 7] then 8, 1
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []  # nothing occurred twice
    assert drafter.draft(0) == []


def test_the_longest_ngram_wins_and_shorter_ones_back_it_up():
    drafter = NgramDrafter([5, 1, 2, 8, 3, 1, 2, 9, 4, 1, 2], longest=3, shortest=2)
    assert drafter.draft(1) == [9]  # [1, 2]'s latest earlier copy; no 3-gram matches
    drafter = NgramDrafter([4, 1, 2, 6, 5, 1, 2, 9, 4, 1, 2], longest=3, shortest=2)
    assert drafter.draft(1) == [6]  # [4, 1, 2] occurred: its follower wins over [1, 2]'s 9
    with pytest.raises(ValueError):
        NgramDrafter([], longest=1, shortest=2)


def test_accepting_or_replacing_a_draft_samples_the_target_distribution():
    probs = torch.tensor([0.05, 0.4, 0.25, 0.2, 0.1])
    generator = torch.Generator().manual_seed(0)
    draws = 40_000
    counts = collections.Counter()
    kept = 0
    for _ in range(draws):
        token, was_kept = accept_or_replace(probs, 2, generator)
        counts[token] += 1
        kept += was_kept
    observed = torch.tensor([counts[i] / draws for i in range(5)])
    assert (observed - probs).abs().max() < 0.01  # ~4 standard deviations of the worst cell
    assert abs(kept / draws - 0.25) < 0.01  # the draft survives with its own probability
    assert accept_or_replace(torch.tensor([0.0, 1.0]), 1, generator) == (1, True)


# "-layers": every pass through the model's layers on the native kernels (the path of an
# unmerged LoRA adapter too), where drafted tokens are checked as a short multi-token pass
LAYERS = codegemma.KernelOptions(fused_decode=False, byte_gemm=False)


@pytest.fixture(
    scope="module",
    params=["native-int8", "native-bf16", "native-int8-layers", "native-bf16-layers", "torch"],
)
def lm(request, trained_checkpoint):
    if request.param == "torch":
        return codegemma.load(trained_checkpoint, dtype="float32", kernels="torch")
    quantize = "int8" if request.param.startswith("native-int8") else None
    options = LAYERS if request.param.endswith("-layers") else codegemma.KernelOptions()
    return codegemma.load(
        trained_checkpoint, quantize=quantize, kernels="native", kernel_options=options
    )


def run(lm, prompts, speculate, max_new_tokens=40, sampling=None):
    engine = lm.batch()
    sequences = [
        lm.sequence(
            lm.prompts.text(p),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            speculate=speculate,
            ignore_eos=True,
        )
        for p in prompts
    ]
    for sequence in sequences:
        engine.add(sequence)
    with torch.inference_mode():
        for _ in engine.run():
            pass
    return sequences, engine.forward_passes


def test_greedy_tokens_are_the_same_with_and_without_speculation(lm):
    prompts = [REPETITIVE, "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2", "import os\n"]
    plain, _ = run(lm, prompts, speculate=0)
    drafted, _ = run(lm, prompts, speculate=8)
    for a, b in zip(plain, drafted, strict=True):
        assert b.completion.token_ids == a.completion.token_ids
        assert b.completion.text == a.completion.text
    assert sum(s.accepted for s in drafted) > 5  # drafts were checked and kept
    assert plain[0].drafted == 0
    _, alone = run(lm, [REPETITIVE], speculate=0)
    (sequence,), fewer = run(lm, [REPETITIVE], speculate=8)
    assert fewer <= alone - sequence.accepted  # each kept draft saved a forward pass


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_a_short_pass_on_the_native_layers_gives_each_token_its_own_step(
    trained_checkpoint, quantize
):
    # Drafted tokens are checked in one pass of a few tokens per sequence. Through the model's
    # layers its projections must do what a one-token step does (the matrix-vector kernels,
    # activations in int8 blocks), not a prompt's GEMM on widened weights, whose logits differ
    # by the quantization of the activations (0.04-0.1 here) and flip greedy near-ties.
    # Attention stays PyTorch's, whose rounding depends on the query count (~1e-6).
    lm = codegemma.load(
        trained_checkpoint, quantize=quantize, kernels="native", kernel_options=LAYERS
    )
    ids = lm.tokenizer.encode("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")
    prompt, checked = ids[:6], ids[6:15]
    together, alone = lm.new_cache(32), lm.new_cache(32)
    with torch.inference_mode():
        for cache in (together, alone):
            lm.model(torch.tensor([prompt]), caches=[cache])
        one_pass = lm.model(
            torch.tensor([checked]), caches=[together], logits_positions=slice(None)
        )
        steps = [
            lm.model(torch.tensor([[token]]), caches=[alone], logits_positions=slice(None))[0, 0]
            for token in checked
        ]
    torch.testing.assert_close(one_pass[0].float(), torch.stack(steps).float(), atol=1e-4, rtol=0)


class FixedDistribution(GemmaForCausalLM):
    """A model whose next token is drawn from the same distribution at every position."""

    def __init__(self, config, probs: dict[int, float]) -> None:
        super().__init__(config)
        self.logits = torch.full((config.vocab_size,), float("-inf"))
        for token, p in probs.items():
            self.logits[token] = math.log(p)

    def forward(self, input_ids, *, caches=None, logits_positions=None):
        for cache in caches or ():
            cache.length += input_ids.shape[1]
        positions = range(input_ids.shape[1])[logits_positions or slice(-1, None)]
        return self.logits.expand(input_ids.shape[0], len(positions), -1).clone()


def test_sampling_with_speculation_draws_from_the_same_distribution(tiny_tokenizer):
    # the text repeats the three likely tokens, so drafts are offered at nearly every step;
    # each generated position must still follow the model's law, with drafts kept or not
    probs = {200: 0.5, 201: 0.3, 202: 0.2}
    lm = CodeGemma(FixedDistribution(tiny_config(tiny_tokenizer.vocab_size), probs), tiny_tokenizer)
    prompt = Prompt([tiny_tokenizer.bos_id] + [200, 201, 202, 201] * 6, ())
    runs, steps = 1500, 4
    for speculate in (0, 8):
        counts = [collections.Counter() for _ in range(steps)]
        kept = 0
        for seed in range(runs):
            engine = lm.batch()
            sequence = lm.sequence(
                prompt,
                max_new_tokens=steps,
                sampling=SamplingParams(temperature=1.0, seed=seed),
                speculate=speculate,
                ignore_eos=True,
            )
            engine.add(sequence)
            for _ in engine.run():
                pass
            for position, token in enumerate(sequence.completion.token_ids):
                counts[position][token] += 1
            kept += sequence.accepted
        for position in range(steps):
            for token, p in probs.items():
                share = counts[position][token] / runs
                assert abs(share - p) < 0.045, (speculate, position, token, share)  # ~3.5 sd
        assert (kept > runs // 4) == (speculate > 0)  # drafts were offered and often kept


def test_the_switch_reaches_every_sequence_and_bad_values_are_refused(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, dtype="float32", kernels="torch", speculate=0)
    (off,), _ = run(lm, [REPETITIVE], speculate=None)
    assert off.speculate == 0 and off.drafted == 0
    assert codegemma.load(trained_checkpoint, kernels="torch").default_speculation == 8
    for bad in (-1, 17, 2.5, True):
        with pytest.raises(InvalidRequestError, match="speculate"):
            codegemma.load(trained_checkpoint, kernels="torch", speculate=bad)


def test_the_command_line_flag(trained_checkpoint):
    run_cli = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
    bad = subprocess.run(
        [*run_cli, "complete", "--prefix", "x", "--speculate", "99"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--speculate: must be 0 to 16" in bad.stderr
    ok = subprocess.run(
        [
            *run_cli,
            "complete",
            "--model",
            str(trained_checkpoint),
            "--prefix",
            "def f(",
            "--speculate",
            "0",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
