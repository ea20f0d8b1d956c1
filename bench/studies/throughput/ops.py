"""The throughput ops: what is timed (a zero-argument closure over prepared inputs) and the fewest bytes
each must move, its formula written beside it (the report prints the formula from the gbps rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.store.rows import THROUGHPUT_OPS
from softmax_impls import Variant

TABLE = "throughput"
UNIT_KEY = ("variant", "device", "dtype", "op", "rows", "cols")
ROW_KEY = (*UNIT_KEY, "metric")
TARGET_BYTES = 8  # int64 class indices


# --- ops: what is timed, and the fewest bytes it must move ----------------------------------------

@dataclass(frozen=True)
class Inputs:
    x: torch.Tensor  # [M, N] logits / scores
    dy: torch.Tensor | None = None  # softmax_fwd_bwd: the incoming gradient of y
    target: torch.Tensor | None = None  # ce_*: int64 class indices [M]
    dloss: torch.Tensor | None = None  # ce_fwd_bwd: the incoming gradient of the per-sample loss [M]


@dataclass(frozen=True)
class Op:
    name: str
    description: str
    formula: str  # the byte formula as the report prints it (M rows, N cols, e bytes per element)
    min_bytes: Callable[[int, int, int], int]  # (M, N, e) -> fewest bytes the op must move
    make_inputs: Callable[[int, int, torch.dtype, torch.device], Inputs]
    closure: Callable[[Variant, Inputs], Callable[[], object]]  # the zero-argument call that is timed


def _x(m: int, n: int, dtype: torch.dtype, device: torch.device, grad: bool = False) -> torch.Tensor:
    return torch.randn(m, n, device=device).to(dtype).requires_grad_(grad)


def _softmax_fwd(v: Variant, a: Inputs) -> Callable[[], object]:
    x = a.x
    return lambda: v.softmax(x, dim=-1)


def _softmax_fwd_bwd(v: Variant, a: Inputs) -> Callable[[], object]:
    x, dy = a.x, a.dy

    def step() -> object:
        # autograd.grad returns a fresh dx instead of accumulating into x.grad (no extra read-modify-write)
        return torch.autograd.grad(v.softmax(x, dim=-1), x, dy)[0]
    return step


def _ce_fwd(v: Variant, a: Inputs) -> Callable[[], object]:
    x, t = a.x, a.target
    return lambda: v.cross_entropy(x, t)


def _ce_fwd_bwd(v: Variant, a: Inputs) -> Callable[[], object]:
    x, t, dloss = a.x, a.target, a.dloss

    def step() -> object:
        return torch.autograd.grad(v.cross_entropy(x, t), x, dloss)[0]
    return step


def output_shape(op: str, m: int, n: int) -> tuple[int, ...]:
    """The shape of what op's timed closure returns: the per-sample loss [M] for ce_fwd, y or dx [M, N] else."""
    return (m,) if op == "ce_fwd" else (m, n)


def _targets(m: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, n, (m,), device=device, dtype=torch.int64)


OPS: dict[str, Op] = {
    "softmax_fwd": Op(
        "softmax_fwd", "softmax(x) along the last dim",
        "2·M·N·e (read x, write y)",
        lambda m, n, e: 2 * m * n * e,
        lambda m, n, dt, dev: Inputs(_x(m, n, dt, dev)),
        _softmax_fwd),
    "softmax_fwd_bwd": Op(
        "softmax_fwd_bwd", "y = softmax(x), then dx from dy through autograd",
        "5·M·N·e (forward: read x, write y; backward: read y and dy, write dx)",
        lambda m, n, e: 5 * m * n * e,
        lambda m, n, dt, dev: Inputs(_x(m, n, dt, dev, grad=True), dy=_x(m, n, dt, dev)),
        _softmax_fwd_bwd),
    "ce_fwd": Op(
        "ce_fwd", "per-sample cross-entropy of logits [M, N] and int64 targets [M]",
        "M·N·e + M·(8 + e) (read logits and int64 targets, write the per-sample loss)",
        lambda m, n, e: m * n * e + m * (TARGET_BYTES + e),
        lambda m, n, dt, dev: Inputs(_x(m, n, dt, dev), target=_targets(m, n, dev)),
        _ce_fwd),
    "ce_fwd_bwd": Op(
        "ce_fwd_bwd", "per-sample cross-entropy, then dlogits from dloss through autograd",
        "3·M·N·e + M·(16 + 2e) (forward: read logits; backward: read logits again, write dlogits; "
        "targets read twice, loss written, its gradient read)",
        lambda m, n, e: 3 * m * n * e + m * (2 * TARGET_BYTES + 2 * e),
        lambda m, n, dt, dev: Inputs(_x(m, n, dt, dev, grad=True), target=_targets(m, n, dev),
                                     dloss=torch.ones(m, device=dev, dtype=dt)),
        _ce_fwd_bwd),
}
assert tuple(OPS) == THROUGHPUT_OPS

# What the report prints beside its tables.
BYTE_FORMULAS: dict[str, str] = {name: op.formula for name, op in OPS.items()}

# Metric -> unit, in the order an ok unit writes them. The last one marks a unit as complete on --resume.
METRICS: dict[str, str] = {
    "median_s": "s", "p20_s": "s", "p80_s": "s", "iqr_s": "s", "cv": "ratio", "unstable": "flag",
    "reps": "count", "first_call_s": "s", "gbps": "GB/s", "copy_gbps": "GB/s", "roofline_frac": "ratio",
    "speedup_vs_torch": "ratio", "peak_bytes": "bytes", "threads": "count", "overhead_s": "s",
}
REPEAT_METRICS: dict[str, str] = {"repeat_median_s": "s", "repeat_diff_frac": "ratio"}


def expected_metrics(repeat: bool) -> list[str]:
    """The metric names an ok unit writes (a unit marked for a repeat writes two more)."""
    return list(METRICS) + (list(REPEAT_METRICS) if repeat else [])

