"""Judging one op's output against the high-precision reference: its metrics and its verdict (the rules
are in the package docstring). "compare" is the regression gate between runs (bench.report.compare); this
is the judge."""


from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.measure.sandbox import InputGuard, UnitTimeout, contained, deadline
from bench.studies.common import (
    STABILITY_TIMEOUT_S,
    classify_failure,
)
from bench.studies.stability.families import Batch, Limits, limits
from bench.studies.stability.reference import Reference
from softmax_impls import Variant

OPS = ("softmax", "log_softmax", "cross_entropy", "ce_grad")
STABILITY_KEY = ("variant", "device", "dtype", "family", "param", "n", "op", "metric")


# -- measuring one op on one batch ------------------------------------------------------------------------

@dataclass
class OpResult:
    op: str
    metrics: dict[str, float]  # metric -> value (see the module docstring)
    passed: bool
    status: str = "ok"  # ok, error, oom
    message: str = ""  # why it failed, in words


_UNITS = {"nonfinite": "count", "max_rel_err_u": "u", "max_abs_err": "abs", "sum_err": "abs", "kl": "nats",
          "passed": "bool"}


def ops_of(variant: Variant) -> tuple[str, ...]:
    return tuple(op for op in OPS if op != "log_softmax" or variant.log_softmax is not None)


def _evaluate(variant: Variant, op: str, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    if op == "ce_grad":
        leaf = x.detach().clone().requires_grad_(True)
        variant.cross_entropy(leaf, target).sum().backward()
        if leaf.grad is None:
            raise RuntimeError("cross_entropy is not differentiable: no gradient reached the logits")
        out = leaf.grad
    else:
        with torch.no_grad():
            if op == "softmax":
                out = variant.softmax(x, dim=-1)
            elif op == "log_softmax":
                out = variant.log_softmax(x, dim=-1)
            else:
                out = variant.cross_entropy(x, target)
    return out.detach().to("cpu", torch.float64).numpy()


def _special_values(op: str, out: np.ndarray, hi: np.ndarray, ref: Reference) -> tuple[np.ndarray, np.ndarray]:
    """(where the output's nan/inf/masked zeros disagree with the reference, where both are comparable)."""
    ref_nan, out_nan = np.isnan(hi), np.isnan(out)
    ref_inf = np.isinf(hi)
    with np.errstate(invalid="ignore"):
        bad = (ref_nan & ~out_nan) | (ref_inf & (out != hi)) | (~ref_nan & ~ref_inf & ~np.isfinite(out))
        masked = None
        if op in ("softmax", "ce_grad"):
            # a masked entry (log p = -inf) must be exactly 0 (its gradient too), not merely tiny
            masked = np.isneginf(ref.logp_hi)
            bad |= masked & (out != hi) & ~out_nan
    comparable = np.isfinite(hi) & np.isfinite(out)
    if masked is not None:
        comparable &= ~masked
    return bad, comparable


def _scaled_error(op: str, err: np.ndarray, hi: np.ndarray, ref: Reference, target: np.ndarray,
                  comparable: np.ndarray, lim: Limits, rel_u: float) -> float:
    """The error the tolerance applies to, in units of u: relative for log-probabilities and losses, scaled
    by p (1 + |ln p|) for probabilities and gradients (plus the one-hot at the target for gradients)."""
    if op not in ("softmax", "ce_grad"):
        return rel_u
    cap = lim.normal - math.log(lim.u)  # |ln p| of the smallest subnormal: beyond it p is 0 anyway
    p = ref.p_hi[comparable]
    scale = np.maximum(p, lim.tiny) * (1.0 + np.minimum(np.abs(ref.logp_hi[comparable]), cap))
    if op == "ce_grad":
        onehot = np.zeros_like(hi, dtype=bool)
        onehot[np.arange(hi.shape[0]), target] = True
        scale = scale + onehot[comparable]
    return float((err / scale / lim.u).max()) if err.size else 0.0


def _normalisation(out: np.ndarray, ref: Reference, lim: Limits) -> dict[str, float]:
    """softmax only: sum_err (max |sum p - 1|) and kl (the generalized KL against the reference)."""
    rows = ~ref.undefined
    o = out[rows]
    sums = np.array([math.fsum(r) for r in o]) if lim.u < 1e-10 else o.sum(axis=1)
    pr, lr = ref.p_hi[rows], ref.logp_hi[rows]
    # the generalized KL, sum p log(p/q) - p + q: >= 0 term by term even for an unnormalized output q,
    # so rounding never makes it negative; it equals KL(p || q) when q sums to 1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = np.where(pr > 0, pr * (lr - np.log(o)) - pr + o, o)
    return {"sum_err": float(np.abs(sums - 1.0).max()) if o.size else 0.0,
            "kl": float(terms.sum(axis=1).max()) if o.size else 0.0}


def judge(op: str, out: np.ndarray, ref: Reference, target: np.ndarray, lim: Limits,
          tolerance_u: float) -> OpResult:
    """Metrics and verdict of one op's output against the reference (the rules are in the package docstring)."""
    hi, lo = {"softmax": (ref.p_hi, ref.p_lo), "log_softmax": (ref.logp_hi, ref.logp_lo),
              "cross_entropy": (ref.loss_hi, ref.loss_lo)}.get(op, (ref.grad_hi, ref.grad_lo))
    if out.shape != hi.shape:
        return OpResult(op, {}, False, "error", f"output shape {list(out.shape)}, expected {list(hi.shape)}")
    bad, comparable = _special_values(op, out, hi, ref)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs((out - hi) - lo)[comparable]
    href = np.abs(hi[comparable])
    metrics = {"nonfinite": float(np.count_nonzero(~np.isfinite(out))),
               "max_rel_err_u": float((err / np.maximum(href, lim.tiny) / lim.u).max()) if err.size else 0.0,
               "max_abs_err": float(err.max()) if err.size else 0.0}
    scaled = _scaled_error(op, err, hi, ref, target, comparable, lim, metrics["max_rel_err_u"])
    if op == "softmax":
        metrics.update(_normalisation(out, ref, lim))
    n_bad = int(np.count_nonzero(bad))
    passed = n_bad == 0 and scaled <= tolerance_u
    message = ""
    if n_bad:
        where = np.argwhere(bad)[0]
        message = (f"{n_bad} output(s) disagree with the reference on nan/inf/masked zeros "
                   f"(first at {tuple(int(i) for i in where)}: got {out[tuple(where)]!r}, "
                   f"reference {hi[tuple(where)]!r})")
    elif not passed:
        message = f"error {scaled:.3g} u exceeds the tolerance {tolerance_u:g} u"
    return OpResult(op, metrics, passed, "ok", message)


def measure(variant: Variant, op: str, batch: Batch, ref: Reference, dtype: torch.dtype,
            device: torch.device, timeout: float | None = STABILITY_TIMEOUT_S) -> OpResult:
    """Run one op of `variant` on the batch and judge it; an exception becomes an error/oom result, a call
    past `timeout` seconds a timeout result."""
    lim = limits(dtype)
    try:
        with deadline(timeout, f"{variant.name} {op} call"):
            return _measure(variant, op, batch, ref, dtype, device, lim)
    except UnitTimeout as exc:
        return OpResult(op, {}, False, "timeout", str(exc))


def _measure(variant: Variant, op: str, batch: Batch, ref: Reference, dtype: torch.dtype, device: torch.device,
             lim: Limits) -> OpResult:
    try:
        # Copies the variant owns: on CPU in float64, from_numpy(...).to() would hand over the batch's own
        # memory, and a variant writing into it would change every later variant's input.
        x = torch.from_numpy(batch.x).to(device=device, dtype=dtype, copy=True)
        t = torch.from_numpy(batch.target).to(device, copy=True)
        guard = InputGuard({"x": x, "target": t})
        out = _evaluate(variant, op, x, t)
        mutated = guard.changed()
    except BaseException as exc:  # a crashing (even sys.exit-ing) variant is a row, never the end of the sweep
        if not contained(exc) or isinstance(exc, UnitTimeout):
            raise
        status, message = classify_failure(exc)
        return OpResult(op, {}, False, status, message)
    if mutated:
        return OpResult(op, {}, False, "error", mutated)
    return judge(op, out, ref, batch.target, lim, variant.contract.ordinary_tolerance_ulps)

