"""Is a variant's throughput output right? Checked once per unit, before any time is credited.

The reference is float64 on the same (dtype-rounded) inputs, judged with the stability study's rules
(bench.studies.stability.judge: finite where the reference is finite, within the variant's contract tolerance in
units of the dtype's roundoff, probabilities scaled by (1 + |ln p|)). The inputs are ordinary normal
logits, so a correct variant of any contract passes here; NaN, garbage, a wrong shape or dtype does not.

Cost: shape, dtype and finiteness are checked on the whole output; the element-wise comparison on at most
:data:`MAX_CHECKED` elements (every row up to that size; beyond, evenly spaced rows including the first
and the last), so validating a 512 MB unit takes about as long as a few calls of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.studies.stability.families import limits
from bench.studies.stability.judge import judge  # the stability study's judging rules
from bench.studies.stability.reference import Reference
from bench.studies.throughput.ops import output_shape

MAX_CHECKED = 2**22  # elements compared against the reference per unit
CHUNK = 2**20  # elements per float64 reference chunk (bounds the validator's own memory)


def check_output(op: str, out: object, x: torch.Tensor, target: torch.Tensor | None, dy: torch.Tensor | None,
                 tolerance_u: float) -> str | None:
    """None when `out` (what the timed closure of throughput op `op` returned) is right; else why not."""
    m, n = x.shape
    want_shape = output_shape(op, m, n)
    want_dtype = None if op == "ce_fwd" else x.dtype  # a loss may come in another float dtype
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if tuple(out.shape) != want_shape:
        return f"output shape {list(out.shape)}, expected {list(want_shape)}"
    if want_dtype is not None and out.dtype != want_dtype:
        return f"output dtype {out.dtype}, expected {want_dtype} (the input's)"
    if not out.is_floating_point():
        return f"output dtype {out.dtype} is not a floating type"
    if out.device != x.device:
        return f"output on {out.device}, input on {x.device}"
    bad = int((~torch.isfinite(out.detach())).sum())
    if bad:
        return f"{bad} of {out.numel()} outputs are nan or inf where the float64 reference is finite"
    for rows in _row_chunks(m, n):
        problem = _check_rows(op, out.detach()[rows], x.detach()[rows],
                              None if target is None else target[rows], None if dy is None else dy[rows],
                              tolerance_u)
        if problem:
            return problem
    return None


def _row_chunks(m: int, n: int) -> list[torch.Tensor | slice]:
    """Row selections covering at most MAX_CHECKED elements, each at most CHUNK elements."""
    per_chunk = max(1, CHUNK // n)
    if m * n <= MAX_CHECKED:
        return [slice(i, min(i + per_chunk, m)) for i in range(0, m, per_chunk)]
    picked = torch.linspace(0, m - 1, max(2, MAX_CHECKED // n)).round().long().unique()
    return [picked[i:i + per_chunk] for i in range(0, picked.numel(), per_chunk)]


def _reference(x: np.ndarray, target: np.ndarray) -> Reference:
    """A float64 reference in the stability study's form (the `lo` parts are zero: float64's own rounding,
    1/2 ulp of float64, is far below any tolerance of the dtypes measured here)."""
    xt = torch.from_numpy(x)
    logp = torch.log_softmax(xt, dim=-1)
    p = logp.exp()
    rows = torch.arange(x.shape[0])
    t = torch.from_numpy(target)
    loss = -logp[rows, t]
    grad = p.clone()
    grad[rows, t] -= 1.0
    zeros, zero_rows = np.zeros_like(x), np.zeros(x.shape[0])
    return Reference(logp.numpy(), zeros, p.numpy(), zeros, loss.numpy(), zero_rows, grad.numpy(), zeros,
                     np.zeros(x.shape[0], dtype=bool))


def _check_rows(op: str, out: torch.Tensor, x: torch.Tensor, target: torch.Tensor | None,
                dy: torch.Tensor | None, tolerance_u: float) -> str | None:
    lim = limits(x.dtype)
    xd = x.to("cpu", torch.float64).numpy()
    got = out.to("cpu", torch.float64).numpy()
    t = (target.to("cpu").numpy() if target is not None
         else np.zeros(xd.shape[0], dtype=np.int64))
    ref = _reference(xd, t)
    if op == "softmax_fwd_bwd":
        return _check_softmax_grad(got, ref, dy.to("cpu", torch.float64).numpy(), lim.u, lim.tiny, tolerance_u)
    stability_op = {"softmax_fwd": "softmax", "ce_fwd": "cross_entropy", "ce_fwd_bwd": "ce_grad"}[op]
    result = judge(stability_op, got, ref, t, lim, tolerance_u)
    return None if result.passed else f"disagrees with the float64 reference: {result.message}"


def _check_softmax_grad(got: np.ndarray, ref: Reference, dy: np.ndarray, u: float, tiny: float,
                        tolerance_u: float) -> str | None:
    """dx = p (dy - sum_j p_j dy_j). Each term carries the relative errors of p (scaled by 1 + |ln p| as the
    forward is) and of the row's dot product, so the error is judged against p (|dy| + sum_j p_j |dy_j|)."""
    p, logp = ref.p_hi, ref.logp_hi
    want = p * (dy - (p * dy).sum(axis=1, keepdims=True))
    cap = -math.log(tiny) - math.log(u)
    scale = p * (np.abs(dy) + (p * np.abs(dy)).sum(axis=1, keepdims=True)) * (1 + np.minimum(np.abs(logp), cap))
    err = np.abs(got - want) / np.maximum(scale, tiny) / u
    worst = float(err.max()) if err.size else 0.0
    if worst > tolerance_u:
        where = tuple(int(i) for i in np.unravel_index(int(err.argmax()), err.shape))
        return (f"disagrees with the float64 reference: gradient error {worst:.3g} u exceeds the tolerance "
                f"{tolerance_u:g} u (first at {where}: got {got[where]!r}, reference {want[where]!r})")
    return None
