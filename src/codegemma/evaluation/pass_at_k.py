"""pass@k: the chance that at least one of k samples passes, estimated without bias from n."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one task with `c` of `n` samples passing.

    Equals 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), computed as a product so that large
    n does not overflow: C(n-c, k) / C(n, k) = prod_{i=n-c+1..n} (1 - k / i).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a passing sample
    fail_all = 1.0
    for i in range(n - c + 1, n + 1):
        fail_all *= 1.0 - k / i
    return 1.0 - fail_all


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over tasks given (n, c) per task, for each k no larger than every n."""
    counts = list(counts)
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    return {
        k: sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks if k <= smallest
    }
