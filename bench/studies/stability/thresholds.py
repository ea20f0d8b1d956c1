"""Thresholds: the largest c on a probe row at which an op is still finite and within tolerance, bisected
over the dtype's representable values."""


from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from bench.measure.host import dtype_name
from bench.measure.sandbox import contained
from bench.progress import each
from bench.store.rows import ThresholdRow, key_of
from bench.store.run import Run
from bench.studies.common import (
    classify_failure,
)
from bench.studies.stability.families import Batch, round_to
from bench.studies.stability.judge import OpResult, measure, ops_of
from bench.studies.stability.reference import Reference, reference
from softmax_impls import Variant

PROBES = {
    "overflow": "[c, c-1, ..., c-9], target 0",
    "underflow": "[-c, -c-1, ..., -c-9], target 0",
    "far_target": "[0, -1, ..., -8, -c], target 9 (the -c)",
}
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}
THRESHOLD_KEY = ("variant", "device", "dtype", "op", "kind")



# -- thresholds -------------------------------------------------------------------------------------------

def probe(kind: str, c: float, dtype: torch.dtype) -> Batch:
    """The probe row of `kind` at parameter c, rounded to dtype (the rows are written out in PROBES)."""
    k = np.arange(10, dtype=np.float64)
    if kind == "overflow":
        x, t = c - k, 0
    elif kind == "underflow":
        x, t = -c - k, 0
    else:
        x, t = np.concatenate([-k[:9], [-c]]), 9
    return Batch(round_to(x[None, :], dtype), np.array([t], dtype=np.int64))


def _bits(value: float, dtype: torch.dtype) -> int:
    return int(torch.tensor([value], dtype=torch.float64).to(dtype).view(_INT_VIEW[dtype]).item())


def _value(bits: int, dtype: torch.dtype) -> float:
    return float(torch.tensor([bits], dtype=_INT_VIEW[dtype]).view(dtype).to(torch.float64).item())


class _ProbeReferences:
    """Probe references shared by every variant and op (the same rows come up in every bisection)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[bytes, int], Reference] = {}

    def __call__(self, batch: Batch) -> Reference:
        key = (batch.x.tobytes(), int(batch.target[0]))
        if key not in self.cache:
            self.cache[key] = reference(batch.x, batch.target)
        return self.cache[key]


def threshold(variant: Variant, op: str, kind: str, dtype: torch.dtype, device: torch.device,
              refs: Callable[[Batch], Reference] | None = None) -> tuple[float | None, str]:
    """Largest c (a dtype value) at which `op` still passes on the probe row of `kind`; inf if even max does.

    Bisection over the bit patterns of the dtype's non-negative values, which are ordered like the values,
    so it ends on two neighbouring representable numbers. Returns (threshold, message); None if c = 0 fails.
    """
    refs = refs or _ProbeReferences()

    def ok(c: float) -> OpResult:
        batch = probe(kind, c, dtype)
        return measure(variant, op, batch, refs(batch), dtype, device)

    first = ok(0.0)
    if not first.passed:
        return None, f"fails already at c = 0: {first.message}"
    top = torch.finfo(dtype).max
    if ok(top).passed:
        return math.inf, f"none within dtype range: passes even at c = {top:g}"
    lo, hi = 0, _bits(top, dtype)
    last_failure = ""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = ok(_value(mid, dtype))
        if r.passed:
            lo = mid
        else:
            hi, last_failure = mid, r.message
    return _value(lo, dtype), f"passes at c = {_value(lo, dtype)!r}; at the next value {_value(hi, dtype)!r}: " \
                              f"{last_failure}"


def thresholds_into(run: Run, variants: list[Variant], device: torch.device, dtypes: list[torch.dtype],
                    active: dict[torch.dtype, list[Variant]] | None = None) -> None:
    """Bisect every (variant, dtype, op, kind) threshold not yet in thresholds.csv, appending each."""
    done = run.done("thresholds", THRESHOLD_KEY)
    dev = str(device)
    units = []
    for dtype in dtypes:
        for v in (active[dtype] if active is not None else variants):
            for op in ops_of(v):
                for kind in PROBES:
                    row = ThresholdRow(v.name, dev, dtype_name(dtype), op, kind, None, PROBES[kind])
                    if key_of(row, THRESHOLD_KEY) not in done:
                        units.append((v, dtype, op, kind))
    refs = _ProbeReferences()
    def describe(u: tuple) -> str:
        return f"{u[0].name} {dtype_name(u[1])} {u[2]} {u[3]}"

    for v, dtype, op, kind in each(units, "thresholds", describe=describe, log_lines=10):
        try:
            value, message = threshold(v, op, kind, dtype, device, refs)
            row = ThresholdRow(v.name, dev, dtype_name(dtype), op, kind, value, PROBES[kind], "ok", message)
        except BaseException as exc:
            if not contained(exc):
                raise
            status, message = classify_failure(exc)
            row = ThresholdRow(v.name, dev, dtype_name(dtype), op, kind, None, PROBES[kind], status, message)
        run.append(row)


