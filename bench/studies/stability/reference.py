"""The high-precision reference: softmax, log-softmax, cross-entropy and its gradient at 50 digits.

Computed with mpmath at :data:`DIGITS` significant digits on the already-rounded inputs (float64 arrays
holding the dtype's values exactly), so the rounding of the inputs is never blamed on the algorithm.

Cost. A row of 131072 elements would take seconds at 50 digits, one exp per element. The study's rows are
drawn from a few hundred distinct values (bench/studies/stability/families.py), so the reference is computed once per
*distinct* value and weighted by its multiplicity: sum_i e^(x_i - m) = sum_v count(v) e^(v - m), exactly.

Accuracy. Every quantity is returned as a double-double pair (hi, lo) with hi + lo equal to the 50-digit
value to ~2^-106 relative, so an error |y_hat - y| is measured as |(y_hat - hi) - lo| without the
reference's own rounding (1/2 ulp of float64) polluting float64 outputs. Three places would lose that
accuracy in a naive mpmath transcription and are written out on purpose:
  * v - m is computed exactly (mpmath's fsub(exact=True)): at 166 bits a difference like 1e300 - 2 rounds;
  * log(s) is log1p(s - 1) with s - 1 summed directly (the max's own term is the 1): for a confident row
    s = 1 + 1e-300 and log(s) would round to 0, which is exactly the bug the study looks for;
  * the target's gradient p_t - 1 is expm1(log p_t), not a difference of two near-equal numbers.

Conventions for special inputs (softmax is undefined there, and a silent finite answer would hide a bug):
a row holding nan or +inf, and a row entirely -inf, has reference nan everywhere; a -inf entry in an
otherwise finite row has probability 0 and log-probability -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

DIGITS = 50


@dataclass(frozen=True)
class Reference:
    """Double-double reference values for a batch [rows, n] with targets [rows]."""

    logp_hi: np.ndarray  # [rows, n]; -inf for masked entries, nan for undefined rows
    logp_lo: np.ndarray
    p_hi: np.ndarray  # [rows, n]
    p_lo: np.ndarray
    loss_hi: np.ndarray  # [rows] = -logp[target]
    loss_lo: np.ndarray
    grad_hi: np.ndarray  # [rows, n] = p - onehot(target), the gradient of the summed loss
    grad_lo: np.ndarray
    undefined: np.ndarray  # [rows] bool: nan / +inf / all -inf rows, whose reference is nan


def _split(value: mpmath.mpf) -> tuple[float, float]:
    hi = float(value)
    if not np.isfinite(hi) or hi == 0.0:
        return hi, 0.0
    return hi, float(value - mpmath.mpf(hi))


def _row(x: np.ndarray, target: int) -> tuple[np.ndarray, ...]:
    n = x.shape[0]
    nan_row = np.full(n, np.nan)
    finite = np.isfinite(x)
    if np.isnan(x).any() or np.isposinf(x).any() or not finite.any():
        return nan_row, nan_row, nan_row, nan_row, np.nan, np.nan, nan_row, nan_row, True
    values, inverse, counts = np.unique(x[finite], return_inverse=True, return_counts=True)
    k = values.shape[0]
    with mpmath.workdps(DIGITS):
        m = mpmath.mpf(float(values[-1]))
        diffs = [mpmath.fsub(mpmath.mpf(float(v)), m, exact=True) for v in values]
        terms = [mpmath.exp(d) for d in diffs[:-1]]
        # s - 1, with the max's own e^0 = 1 left out: log(s) = log1p(s - 1) keeps tiny losses exact
        rest = mpmath.fsum(int(c) * t for c, t in zip(counts[:-1], terms, strict=True)) + int(counts[-1] - 1)
        log_s = mpmath.log1p(rest)
        s = 1 + rest
        lp = np.empty((k, 2))
        pp = np.empty((k, 2))
        lp_mp = []
        for j in range(k):
            lpj = diffs[j] - log_s
            lp_mp.append(lpj)
            lp[j] = _split(lpj)
            pp[j] = _split((terms[j] if j < k - 1 else mpmath.mpf(1)) / s)
        t_finite = bool(finite[target])
        if t_finite:
            tj = int(inverse[int(np.count_nonzero(finite[:target]))])
            g_t = _split(mpmath.expm1(lp_mp[tj]))
            loss = _split(-lp_mp[tj])
    logp_hi = np.full(n, -np.inf)
    logp_lo = np.zeros(n)
    p_hi = np.zeros(n)
    p_lo = np.zeros(n)
    logp_hi[finite], logp_lo[finite] = lp[inverse, 0], lp[inverse, 1]
    p_hi[finite], p_lo[finite] = pp[inverse, 0], pp[inverse, 1]
    grad_hi, grad_lo = p_hi.copy(), p_lo.copy()
    if t_finite:
        grad_hi[target], grad_lo[target] = g_t
    else:  # the target is masked: p_t = 0, the loss is +inf and its gradient there is -1
        loss = (np.inf, 0.0)
        grad_hi[target], grad_lo[target] = -1.0, 0.0
    return logp_hi, logp_lo, p_hi, p_lo, loss[0], loss[1], grad_hi, grad_lo, False


def reference(x: np.ndarray, target: np.ndarray) -> Reference:
    """The 50-digit reference for logits `x` [rows, n] (float64 holding dtype-rounded values) and targets."""
    parts = [_row(x[r], int(target[r])) for r in range(x.shape[0])]
    cols = list(zip(*parts, strict=True))
    return Reference(
        logp_hi=np.stack(cols[0]), logp_lo=np.stack(cols[1]), p_hi=np.stack(cols[2]), p_lo=np.stack(cols[3]),
        loss_hi=np.array(cols[4], dtype=np.float64), loss_lo=np.array(cols[5], dtype=np.float64),
        grad_hi=np.stack(cols[6]), grad_lo=np.stack(cols[7]), undefined=np.array(cols[8], dtype=bool),
    )
