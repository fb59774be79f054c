import math

import pytest
import torch

from codegemma.errors import InvalidRequestError
from codegemma.sampling import (
    SamplingParams,
    keep_top_k,
    keep_top_p,
    make_generators,
    next_token_probs,
    pick_tokens,
)

LOGITS = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 1.0, 4.9]])
    assert pick_tokens(logits, SamplingParams(), [None, None]).tolist() == [1, 0]


def test_top_k_keeps_k_tokens():
    kept = keep_top_k(LOGITS, 2)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.2 = 0.7 < 0.75, so the third token (0.15) is needed; the fourth is not.
    kept = keep_top_p(LOGITS, 0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(keep_top_p(LOGITS, 0.01)).sum() == 1  # the top token always stays


def test_temperature_reshapes_the_distribution():
    probs = next_token_probs(LOGITS, SamplingParams(temperature=2.0))
    expected = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]) ** 0.5
    assert torch.allclose(probs[0], expected / expected.sum(), atol=1e-6)


def test_sampling_frequencies_follow_the_filtered_distribution():
    params = SamplingParams(temperature=1.0, top_k=3, seed=0)
    generators = make_generators(params, 1)
    counts = torch.zeros(5)
    for _ in range(4000):
        counts[pick_tokens(LOGITS, params, generators)] += 1
    freq = counts / counts.sum()
    assert freq[3:].sum() == 0
    assert math.isclose(freq[0].item(), 0.5 / 0.85, abs_tol=0.03)


def test_same_seed_same_draws_and_rows_independent():
    params = SamplingParams(temperature=1.0, seed=7)
    logits = LOGITS.repeat(3, 1)
    a = [pick_tokens(logits, params, g).tolist() for g in [make_generators(params, 3)] * 20]
    b = [pick_tokens(logits, params, g).tolist() for g in [make_generators(params, 3)] * 20]
    assert a == b
    assert all(row[0] == row[1] == row[2] for row in a)  # each row is seeded like a lone run


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1}, {"top_k": -2}, {"top_p": 0}, {"top_p": 1.5}, {"seed": "x"}]
)
def test_invalid_parameters(kwargs):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)
