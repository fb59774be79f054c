"""pass@k against the closed form 1 - C(n-c, k) / C(n, k), and hand-worked values."""

from __future__ import annotations

from math import comb

import pytest

from codegemma.evaluation.pass_at_k import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_equals_the_combinatorial_formula(n):
    for c in range(n + 1):
        for k in {1, 2, 5, 10, 100, n}:
            if k > n:
                continue
            expected = 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_hand_worked_values():
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the pass rate
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 3) == pytest.approx(0.75)  # 1 - C(3,3)/C(4,3) = 1 - 1/4


def test_large_n_does_not_overflow():
    assert pass_at_k(100_000, 1, 1) == pytest.approx(1e-5)
    assert 0.0 < pass_at_k(100_000, 50, 100) < 1.0


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_over_tasks_only_for_k_up_to_n():
    scores = mean_pass_at_k([(2, 1), (2, 2), (2, 0)], ks=(1, 2, 10))
    assert set(scores) == {1, 2}
    assert scores[1] == pytest.approx((0.5 + 1 + 0) / 3)
    assert scores[2] == pytest.approx((1 + 1 + 0) / 3)
    assert mean_pass_at_k([], ks=(1,)) == {}
