"""Speculation from the text itself: drafting, the sampling rule, and that the engine's output
never changes (greedy: the same tokens; sampling: the same distribution)."""

import collections

import pytest
import torch

import codegemma
from codegemma.sampling import SamplingParams
from codegemma.speculation import NgramDrafter, accept_or_replace

REPETITIVE = (
    "def area(width, height):\n    return width * height\n\n\n"
    "def volume(width, height, depth):\n    return width * height * depth\n\n\n"
    "def area(width, height):\n    return"
)


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


@pytest.fixture(scope="module", params=["native-int8", "native-bf16", "torch"])
def lm(request, trained_checkpoint):
    if request.param == "torch":
        return codegemma.load(trained_checkpoint, dtype="float32", kernels="torch")
    quantize = "int8" if request.param == "native-int8" else None
    return codegemma.load(trained_checkpoint, quantize=quantize, kernels="native")


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
    assert sum(s.accepted for s in drafted) > 10  # drafts were checked and kept
    assert plain[0].drafted == 0
    _, alone = run(lm, [REPETITIVE], speculate=0)
    (sequence,), fewer = run(lm, [REPETITIVE], speculate=8)
    assert fewer <= alone - sequence.accepted  # each kept draft saved a forward pass


def test_sampling_with_speculation_draws_from_the_same_distribution(trained_checkpoint):
    lm = codegemma.load(trained_checkpoint, dtype="float32", kernels="torch")
    sampling = [SamplingParams(temperature=1.5, seed=seed) for seed in range(300)]

    def second_tokens(speculate):
        counts, kept = collections.Counter(), 0
        for params in sampling:
            (sequence,), _ = run(lm, [REPETITIVE], speculate, max_new_tokens=3, sampling=params)
            counts[sequence.completion.token_ids[1]] += 1
            kept += sequence.accepted
        return counts, kept

    plain, _ = second_tokens(0)
    drafted, kept = second_tokens(8)
    assert kept > 20  # drafts were accepted often enough to matter
    tokens = set(plain) | set(drafted)
    distance = sum(abs(plain[t] - drafted[t]) for t in tokens) / (2 * len(sampling))
    assert distance < 0.12  # total variation between two samples of 300 from one law
