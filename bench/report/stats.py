"""The statistics of the regression gate: pure functions of sample times, tested against hand-computed
values (tests/test_compare.py). A time is a low quantile of its samples (interference only adds time); a
shift is significant by a one-sided Mann-Whitney U test on the faster half of each side."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

FAST_END = 0.10  # the quantile of the samples that stands for a point's time


def midranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks, tied values sharing the mean of their ranks, and the size of every tie group (> 1)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks, ties, below = [0.0] * len(values), [], 0
    for _, group in itertools.groupby(order, key=lambda i: values[i]):
        members = list(group)
        for i in members:
            ranks[i] = below + (len(members) + 1) / 2
        ties += [len(members)] if len(members) > 1 else []
        below += len(members)
    return ranks, ties


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that `b` tends to lie above `a`: Mann-Whitney U, normal approximation with the tie
    correction and a continuity correction of 1/2. 1.0 when either side is empty or every value ties."""
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return 1.0
    n = na + nb
    ranks, ties = midranks([*a, *b])
    u = sum(ranks[na:]) - nb * (nb + 1) / 2  # pairs (a_i, b_j) with b_j > a_i, ties counting 1/2
    var = na * nb / 12 * ((n + 1) - sum(t ** 3 - t for t in ties) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - na * nb / 2 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def fast_end(samples: Sequence[float]) -> float:
    """The FAST_END quantile (linear interpolation, numpy's default) of the samples."""
    xs = sorted(samples)
    return xs[0] if len(xs) == 1 else statistics.quantiles(xs, n=round(1 / FAST_END), method="inclusive")[0]


def faster_half(samples: Sequence[float]) -> list[float]:
    """The faster ceil(n/2) samples, at least 3 (fewer can never reach p < 0.05): interference only adds time,
    so the slow half holds the neighbours' work, and a rank test on it calls a disturbed BASE 'unchanged'."""
    return sorted(samples)[:max(3, (len(samples) + 1) // 2)]
