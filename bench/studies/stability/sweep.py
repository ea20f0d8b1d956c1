"""Numerical stability: every variant on adversarial inputs, against a 50-digit reference.

    softmax-bench stability [--quick] [--variant V ...] [--dtype D ...] [--family F ...] [--device cuda]
    softmax-bench stability --resume results/<run>        # complete an interrupted run
    softmax-bench check VARIANT [--device cuda]           # one variant against its contract; exit 1 on breach

What it does, per (variant, device, dtype, family, param, row length n) and per op (softmax, log_softmax,
cross_entropy, ce_grad = the gradient of the summed loss through autograd):

* the inputs come from a named, seeded family (bench/families.py) and are rounded to the dtype first;
* the reference is mpmath at 50 digits on those rounded inputs (bench/reference.py);
* metrics go to ``stability.csv``: ``nonfinite`` (count of non-finite outputs), ``max_rel_err_u`` (max
  |y_hat - y| / max(|y|, tiny), in units of the dtype's unit roundoff u), ``max_abs_err``, for softmax also
  ``sum_err`` (max |sum p - 1|) and ``kl`` (max KL(ref || out), nats, in the generalized form that
  stays >= 0 for an unnormalized output), and a ``passed`` verdict (1/0).
* thresholds go to ``thresholds.csv``: for overflow, underflow and far-target, the largest c on the stated
  probe row (:data:`PROBES`) at which the op is still finite and within tolerance, bisected over the dtype's
  representable values, so down to the dtype's own spacing; ``inf`` when it passes even at the dtype's max.

The verdict (:func:`compare`). Special values must match the reference exactly: nan where it is nan (a row
holding nan or +inf, a fully -inf row), -inf / exact 0 where an entry is masked, finite where it is finite.
Then the error must be within the variant's contract tolerance T (``contract.ordinary_tolerance_ulps``,
default 64) in units of u:
  * probabilities: |p_hat - p| <= T u max(p, tiny) (1 + |ln p|). Blanchard, Higham & Higham (2021) bound
    the relative error of exp(x - max) / sum by a term in |x_i - max| u (the subtraction's rounding is
    amplified by exp) and that of exp(x - lse) by one in |x_i - lse| u = |ln p_i| u; the factor grants
    both formulations their proven behaviour, so only genuine breakdowns fail;
  * log-probabilities and losses: |y_hat - y| <= T u max(|y|, tiny), relative, so a loss of 1e-13 that
    comes out 0 fails (the confident-correct family);
  * gradients p - onehot: |g_hat - g| <= T u (max(p, tiny)(1 + |ln p|) + onehot), absolute at the target
    where p_t - 1 cancels in every formulation.

For the ``all`` command: ``stability_into(run, variants, device, preset)`` writes both tables into an open
run folder and returns the summary lines; ``format_summary`` prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bench import UserError
from bench.devices import dtype_name, parse_dtype, supported_dtypes
from bench.families import FAMILIES, Batch, Family, Limits, limits, round_to
from bench.harness import (
    add_common_arguments,
    chosen_variants,
    classify_failure,
    device_from,
    open_run,
    select_variants,
    timeout_from,
)
from bench.presets import STABILITY_PRESETS, STABILITY_TIMEOUT_S, StabilityPreset, pick
from bench.progress import bar, interactive, log
from bench.reference import Reference, reference
from bench.results import Run, StabilityRow, ThresholdRow, key_of
from bench.sandbox import InputGuard, UnitTimeout, contained, deadline
from softmax_impls import Variant

OPS = ("softmax", "log_softmax", "cross_entropy", "ce_grad")
PROBES = {
    "overflow": "[c, c-1, ..., c-9], target 0",
    "underflow": "[-c, -c-1, ..., -c-9], target 0",
    "far_target": "[0, -1, ..., -8, -c], target 9 (the -c)",
}
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}
STABILITY_KEY = ("variant", "device", "dtype", "family", "param", "n", "op", "metric")
THRESHOLD_KEY = ("variant", "device", "dtype", "op", "kind")


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


def compare(op: str, out: np.ndarray, ref: Reference, target: np.ndarray, lim: Limits,
            tolerance_u: float) -> OpResult:
    """Metrics and verdict of one op's output against the reference (the rules are in the module docstring)."""
    if op == "softmax":
        hi, lo = ref.p_hi, ref.p_lo
    elif op == "log_softmax":
        hi, lo = ref.logp_hi, ref.logp_lo
    elif op == "cross_entropy":
        hi, lo = ref.loss_hi, ref.loss_lo
    else:
        hi, lo = ref.grad_hi, ref.grad_lo
    if out.shape != hi.shape:
        return OpResult(op, {}, False, "error", f"output shape {list(out.shape)}, expected {list(hi.shape)}")
    u = lim.u
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
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs((out - hi) - lo)[comparable]
    href = np.abs(hi[comparable])
    metrics = {"nonfinite": float(np.count_nonzero(~np.isfinite(out))),
               "max_rel_err_u": float((err / np.maximum(href, lim.tiny) / u).max()) if err.size else 0.0,
               "max_abs_err": float(err.max()) if err.size else 0.0}
    if op in ("softmax", "ce_grad"):
        cap = lim.normal - math.log(u)  # |ln p| of the smallest subnormal: beyond it p is 0 anyway
        p = ref.p_hi[comparable]
        scale = np.maximum(p, lim.tiny) * (1.0 + np.minimum(np.abs(ref.logp_hi[comparable]), cap))
        if op == "ce_grad":
            onehot = np.zeros_like(hi, dtype=bool)
            onehot[np.arange(hi.shape[0]), target] = True
            scale = scale + onehot[comparable]
        scaled = float((err / scale / u).max()) if err.size else 0.0
    else:
        scaled = metrics["max_rel_err_u"]
    if op == "softmax":
        rows = ~ref.undefined
        o = out[rows]
        sums = np.array([math.fsum(r) for r in o]) if lim.u < 1e-10 else o.sum(axis=1)
        metrics["sum_err"] = float(np.abs(sums - 1.0).max()) if o.size else 0.0
        pr, lr = ref.p_hi[rows], ref.logp_hi[rows]
        # the generalized KL, sum p log(p/q) - p + q: >= 0 term by term even for an unnormalized output q,
        # so rounding never makes it negative; it equals KL(p || q) when q sums to 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            terms = np.where(pr > 0, pr * (lr - np.log(o)) - pr + o, o)
        metrics["kl"] = float(terms.sum(axis=1).max()) if o.size else 0.0
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
    return compare(op, out, ref, batch.target, lim, variant.contract.ordinary_tolerance_ulps)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One CPU thread while measuring: the rows are small, so threads only add spin-up (and, on a shared
    2-core box, contention), and a single thread fixes the CPU reduction order, so a rerun on a machine with
    another core count gives the same errors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the sweep over cases --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    family: Family
    param: float
    n: int

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)} {self.family.name} param={self.param:g} n={self.n}"


def cases(preset: StabilityPreset, dtypes: Iterable[torch.dtype], families: Iterable[str] | None = None
          ) -> list[Case]:
    """Every (dtype, family, param, n) the preset measures, in order."""
    chosen = list(families or preset.families or FAMILIES)
    out = []
    for dtype in dtypes:
        for name in chosen:
            fam = FAMILIES[name]
            if dtype_name(dtype) not in fam.dtypes:
                continue
            lengths = (fam.fixed_n,) if fam.fixed_n else (preset.long_lengths if fam.long else preset.lengths)
            for param in fam.params(limits(dtype)):
                for n in lengths:
                    out.append(Case(dtype, fam, float(param), int(n)))
    return out


def make_batch(case: Case, preset: StabilityPreset) -> Batch:
    rows = preset.long_rows if case.n > 20000 else preset.rows
    return case.family.make(case.dtype, case.param, case.n, rows, preset.seed)


def _rows_of(variant: Variant, device: torch.device, case: Case, results: list[OpResult]) -> list[StabilityRow]:
    rows = []
    common = dict(variant=variant.name, device=str(device), dtype=dtype_name(case.dtype), family=case.family.name,
                  param=case.param, n=case.n)
    for r in results:
        for metric, value in r.metrics.items():
            rows.append(StabilityRow(op=r.op, metric=metric, value=value, unit=_UNITS[metric], **common))
        # the verdict row comes last in each op: --resume treats a case as done once its last op's verdict is in
        rows.append(StabilityRow(op=r.op, metric="passed", value=float(r.passed) if r.status == "ok" else None,
                                 unit="bool", status=r.status, message=r.message, **common))
    return rows


def _check_names(names: Iterable[str] | None, table: dict, kind: str) -> list[str] | None:
    if not names:
        return None
    unknown = [n for n in names if n not in table]
    if unknown:
        plural = "families" if kind == "family" else kind + "s"
        raise UserError(f"unknown {kind} {', '.join(map(repr, unknown))}; known {plural}: {', '.join(table)}.")
    return list(dict.fromkeys(names))


def study_dtypes(device: torch.device, requested: Iterable[str] | None = None) -> list[torch.dtype]:
    """The dtypes the device supports, or the requested subset of them (a UserError for unsupported ones)."""
    supported = supported_dtypes(device)
    if not requested:
        return supported
    chosen = [parse_dtype(d) for d in dict.fromkeys(requested)]
    missing = [dtype_name(d) for d in chosen if d not in supported]
    if missing:
        raise UserError(f"{', '.join(missing)} is not supported on {device}; it supports "
                        f"{', '.join(map(dtype_name, supported))}.")
    return chosen


def stability_into(run: Run, variants: list[Variant], device: torch.device, preset: StabilityPreset,
                   dtypes: Iterable[str] | None = None, families: Iterable[str] | None = None,
                   timeout: float | None = None) -> list[SummaryLine]:
    """The whole study into an open run folder: stability.csv, then thresholds.csv; returns the summary.

    Rows are appended as measured; what the run folder already holds (--resume) is not measured again.
    Used by ``softmax-bench stability`` and ``softmax-bench all``.
    """
    chosen_dtypes = study_dtypes(device, dtypes)
    fams = _check_names(families, FAMILIES, "family")
    done = run.done("stability", STABILITY_KEY)
    dev = str(device)
    skipped: list[StabilityRow] = []
    active: dict[torch.dtype, list[Variant]] = {}
    for dtype in chosen_dtypes:
        active[dtype] = []
        for v in variants:
            reason = v.skip_reason(device, dtype)
            if reason is None:
                active[dtype].append(v)
                continue
            row = StabilityRow(v.name, dev, dtype_name(dtype), "all", "all", float("nan"), 0, "passed", None, "bool",
                               "skipped", reason)
            if key_of(row, STABILITY_KEY) not in done:
                skipped.append(row)
    if skipped:
        run.append(*skipped)

    def todo(v: Variant, case: Case) -> bool:
        last = StabilityRow(v.name, dev, dtype_name(case.dtype), ops_of(v)[-1], case.family.name, case.param,
                            case.n, "passed", None, "bool")
        return key_of(last, STABILITY_KEY) not in done

    all_cases = cases(preset, chosen_dtypes, fams)
    with single_thread():
        _measure_cases(run, all_cases, active, device, preset, todo,
                       STABILITY_TIMEOUT_S if timeout is None else timeout)
        if preset.thresholds:
            thresholds_into(run, [v for d in chosen_dtypes for v in active[d]], device, chosen_dtypes, active)
    return summarize(run, [v.name for v in variants], dev, [dtype_name(d) for d in chosen_dtypes])


def _progress(items: list, desc: str, describe: Callable[..., str]) -> Iterator:
    """A bar on a terminal; off a terminal (CI logs) one line per ~10% instead of one per case."""
    step = max(1, len(items) // 10)
    progress = bar(items, desc=desc, total=len(items))
    for i, item in enumerate(progress, 1):
        if interactive():
            progress.set_postfix_str(describe(item), refresh=False)
        elif i == 1 or i % step == 0 or i == len(items):
            log(f"[{desc} {i}/{len(items)}] {describe(item)}")
        yield item


def _measure_cases(run: Run, all_cases: list[Case], active: dict[torch.dtype, list[Variant]],
                   device: torch.device, preset: StabilityPreset, todo: Callable[[Variant, Case], bool],
                   timeout: float) -> None:
    for case in _progress(all_cases, "stability", Case.describe):
        pending = [v for v in active[case.dtype] if todo(v, case)]
        if not pending:
            continue
        batch = make_batch(case, preset)
        ref = reference(batch.x, batch.target)
        rows: list[StabilityRow] = []
        for v in pending:
            rows += _rows_of(v, device, case, [measure(v, op, batch, ref, case.dtype, device, timeout)
                                               for op in ops_of(v)])
        run.append(*rows)


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
    for v, dtype, op, kind in _progress(units, "thresholds", lambda u: f"{u[0].name} {dtype_name(u[1])} "
                                                                           f"{u[2]} {u[3]}"):
        try:
            value, message = threshold(v, op, kind, dtype, device, refs)
            row = ThresholdRow(v.name, dev, dtype_name(dtype), op, kind, value, PROBES[kind], "ok", message)
        except BaseException as exc:
            if not contained(exc):
                raise
            status, message = classify_failure(exc)
            row = ThresholdRow(v.name, dev, dtype_name(dtype), op, kind, None, PROBES[kind], status, message)
        run.append(row)


# -- summary ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryLine:
    variant: str
    dtype: str
    passed: tuple[str, ...]  # families every case and op of which passed
    failed: tuple[str, ...]
    status: str  # ok, or skipped with the reason in `note`
    note: str = ""


def summarize(run: Run, variants: list[str], device: str, dtypes: list[str]) -> list[SummaryLine]:
    """Per (variant, dtype): the families passed and failed, from the stored rows (resumed ones included)."""
    df = run.read("stability")
    df = df[(df.metric == "passed") & (df.device == device)]
    lines = []
    for name in variants:
        for dt in dtypes:
            sub = df[(df.variant == name) & (df.dtype == dt)]
            skip = sub[sub.status == "skipped"]
            if not skip.empty:
                lines.append(SummaryLine(name, dt, (), (), "skipped", str(skip.message.iloc[0])))
                continue
            sub = sub[sub.family != "all"]
            ok_by_family = sub.groupby("family", sort=False)["value"].apply(lambda s: bool((s == 1.0).all()))
            lines.append(SummaryLine(name, dt, tuple(f for f, ok in ok_by_family.items() if ok),
                                     tuple(f for f, ok in ok_by_family.items() if not ok), "ok"))
    return lines


def format_summary(lines: list[SummaryLine]) -> str:
    out = [f"{'variant':16s} {'dtype':9s} {'families':>8s}  failed families"]
    for ln in lines:
        if ln.status == "skipped":
            out.append(f"{ln.variant:16s} {ln.dtype:9s} {'skipped':>8s}  {ln.note}")
            continue
        total = len(ln.passed) + len(ln.failed)
        out.append(f"{ln.variant:16s} {ln.dtype:9s} {len(ln.passed):>3d}/{total:<3d} ok  "
                   f"{', '.join(ln.failed) or '-'}")
    return "\n".join(out)


# -- contracts --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckLine:
    variant: str
    family: str
    dtype: str
    expected: str  # pass, fail
    measured: str  # pass, fail, skipped
    detail: str = ""  # the first failing case, or why a contract entry is invalid

    @property
    def ok(self) -> bool:
        return self.measured == "skipped" or self.expected == self.measured


def contract_problems(variant: Variant) -> list[CheckLine]:
    """Contract entries naming a family or dtype that does not exist (a typo would silently weaken it)."""
    bad = []
    for fam, dts in variant.contract.expected_failures.items():
        if fam not in FAMILIES:
            bad.append(CheckLine(variant.name, fam, "-", "fail", "unknown",
                                 f"the contract names family {fam!r}; families are {', '.join(FAMILIES)}"))
            continue
        for dt in dts:
            if dt not in FAMILIES[fam].dtypes:
                bad.append(CheckLine(variant.name, fam, dt, "fail", "unknown",
                                     f"{fam} is not measured in {dt} (only {', '.join(FAMILIES[fam].dtypes)})"))
    return bad


def check_variants(variants: list[Variant], device: torch.device, preset: StabilityPreset,
                   dtypes: Iterable[str] | None = None, progress: bool = True,
                   timeout: float | None = None) -> dict[str, list[CheckLine]]:
    """Every variant against its contract, case by case (each reference computed once for all variants).

    A (family, dtype) is measured `fail` when any of its cases and ops fails; the contract expects `fail`
    exactly where it lists the family for that dtype and `pass` everywhere else.
    """
    chosen = study_dtypes(device, dtypes)
    failures: dict[tuple[str, str, str], str] = {}
    runnable: dict[str, list[torch.dtype]] = {}
    for v in variants:
        runnable[v.name] = [d for d in chosen if v.skip_reason(device, d) is None]
    all_cases = cases(preset, chosen)
    iterator: Iterator[Case] = _progress(all_cases, "check", Case.describe) if progress else iter(all_cases)
    with single_thread():
        for case in iterator:
            todo = [v for v in variants if case.dtype in runnable[v.name]]
            if not todo:
                continue
            batch = make_batch(case, preset)
            ref = reference(batch.x, batch.target)
            for v in todo:
                key = (v.name, case.family.name, dtype_name(case.dtype))
                for op in ops_of(v):
                    r = measure(v, op, batch, ref, case.dtype, device,
                                STABILITY_TIMEOUT_S if timeout is None else timeout)
                    if not r.passed and key not in failures:
                        failures[key] = f"{op} param={case.param:g} n={case.n}: {r.message or r.status}"
    out: dict[str, list[CheckLine]] = {}
    for v in variants:
        lines = contract_problems(v)
        for fam in (preset.families or FAMILIES):
            for dt in chosen:
                name = dtype_name(dt)
                if name not in FAMILIES[fam].dtypes:
                    continue
                expected = "fail" if v.contract.must_fail(fam, name) else "pass"
                if dt not in runnable[v.name]:
                    lines.append(CheckLine(v.name, fam, name, expected, "skipped", v.skip_reason(device, dt) or ""))
                    continue
                detail = failures.get((v.name, fam, name), "")
                lines.append(CheckLine(v.name, fam, name, expected, "fail" if detail else "pass", detail))
        out[v.name] = lines
    return out


def format_check(lines: list[CheckLine]) -> str:
    """A family x dtype grid: pass / fail (expected) / BREACH, then the detail of each breach."""
    dts = list(dict.fromkeys(ln.dtype for ln in lines if ln.dtype != "-"))
    fams = list(dict.fromkeys(ln.family for ln in lines))
    cell = {(ln.family, ln.dtype): ln for ln in lines}
    out = [f"{'family':18s} " + " ".join(f"{d:>14s}" for d in dts)]
    for fam in fams:
        cells = []
        for d in dts:
            ln = cell.get((fam, d))
            if ln is None:
                text = "-"
            elif ln.measured == "skipped":
                text = "skipped"
            elif ln.ok:
                text = "pass" if ln.measured == "pass" else "fail (expected)"
            else:
                text = f"BREACH:{ln.measured}"
            cells.append(f"{text:>14s}")
        out.append(f"{fam:18s} " + " ".join(cells))
    breaches = [ln for ln in lines if not ln.ok]
    for ln in breaches:
        why = ln.detail or "every case passed, but the contract says it must fail here"
        out.append(f"BREACH {ln.family} {ln.dtype}: expected {ln.expected}, measured {ln.measured}: {why}")
    out.append(f"{len(lines) - len(breaches)}/{len(lines)} contract entries hold" +
               ("" if not breaches else f"; {len(breaches)} breached"))
    return "\n".join(out)


# -- the commands -----------------------------------------------------------------------------------------

def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="float64, float32, float16 or bfloat16 (repeatable); default: all the device supports")
    parser.add_argument("--preset", choices=list(STABILITY_PRESETS), default=None,
                        help="stability preset (default: 'default', or 'quick' with --quick)")


def add_arguments_stability(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    _add_selection(parser)
    parser.add_argument("--family", action="append", metavar="NAME",
                        help=f"an input family (repeatable; default all): {', '.join(FAMILIES)}")


def run_stability(args: argparse.Namespace) -> int:
    preset = pick("stability preset", STABILITY_PRESETS, args.preset or ("quick" if args.quick else "default"))
    variants = chosen_variants(args)
    timeout = timeout_from(args)
    device = device_from(args)
    study_dtypes(device, args.dtype)  # reject a bad --dtype before a run folder is created
    _check_names(args.family, FAMILIES, "family")
    run = open_run(args, preset)
    log(f"stability: {len(variants)} variant(s) on {device}, preset {preset.name!r}, into {run.path}")
    lines = stability_into(run, variants, device, preset, args.dtype, args.family, timeout)
    print(format_summary(lines))
    print(f"rows: {run.csv_path('stability')} and {run.csv_path('thresholds')}")
    return 0


def add_arguments_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", metavar="VARIANT", help="a registered variant (softmax-bench list)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="check only these dtypes (repeatable); default: all the device supports")
    parser.add_argument("--preset", choices=list(STABILITY_PRESETS), default="check",
                        help="stability preset (default: %(default)s)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"time limit per call of the variant; past it the case fails as a timeout "
                             f"(default: {STABILITY_TIMEOUT_S:g}; 0: none)")


def run_check(args: argparse.Namespace) -> int:
    variant = select_variants([args.variant])[0]
    device = device_from(args)
    preset = pick("stability preset", STABILITY_PRESETS, args.preset)
    lines = check_variants([variant], device, preset, args.dtype, timeout=timeout_from(args))[variant.name]
    print(f"{variant.name} on {device} against its contract (preset {preset.name!r}, tolerance "
          f"{variant.contract.ordinary_tolerance_ulps:g} u):")
    print(format_check(lines))
    return 0 if all(ln.ok for ln in lines) else 1


if __name__ == "__main__":  # python -m bench.stability ... behaves like softmax-bench stability ...
    from bench.cli import main

    sys.exit(main(["stability", *sys.argv[1:]]))
