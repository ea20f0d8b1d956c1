"""softmax-bench throughput: every variant timed against the same device's copy bandwidth (its roofline).

    softmax-bench throughput --quick            # under a minute on a 2-core CPU
    softmax-bench throughput                    # the `default` preset on cpu; `gpu` with --device cuda
    softmax-bench throughput --device cuda:0 --cuda-graph
    softmax-bench throughput --variant torch --variant naive --op softmax_fwd --shape 4096x4096 --dtype float32
    softmax-bench throughput --resume results/<run>   # complete an interrupted run, nothing redone

From code (what `softmax-bench all` calls), into a run folder that already exists:

    from bench.throughput import throughput_into
    from bench.presets import THROUGHPUT_PRESETS
    rows = throughput_into(run, softmax_impls.all_variants(), torch.device("cpu"), THROUGHPUT_PRESETS["quick"])

A *unit* is one (variant, op, rows x cols, dtype) on one device. For each unit the inputs are built, the
first call is timed alone (compilation, lazy init: recorded as ``first_call_s``, never a sample), then
bench.timing samples it; peak memory is taken in a separate, untimed call. Its rows go to ``throughput.csv``
(one metric per row, see :data:`METRICS`) the moment it is done, so a killed sweep keeps every finished
unit and ``--resume RUN`` measures only what is missing. A unit that cannot run is one row (metric
``median_s``, no value) with status ``skipped`` (device/dtype unsupported), ``oom`` or ``error``.

Effective bandwidth uses the fewest bytes each op must move (:data:`OPS`, formulas below; e = element size):

    softmax_fwd      2·M·N·e            read x, write y
    softmax_fwd_bwd  5·M·N·e            forward: read x, write y; backward: read y and dy, write dx
    ce_fwd           M·N·e + M·(8 + e)  read logits and int64 targets, write the per-sample loss
    ce_fwd_bwd       3·M·N·e + M·(16 + 2e)  forward: read logits; backward: read logits again, write dlogits;
                                        targets read twice, loss written and its gradient read

``roofline_frac`` divides it by ``copy_gbps``: the fastest copy of one input-sized buffer on the same
device, timed the same way just before the unit (the same cache regime: a 10 KB tensor is compared with a copy
in cache, a 512 MB one with a copy from DRAM). On CUDA that is ``dst.copy_(src)``; on CPU the better of
``copy_`` and a streaming copy (:meth:`_Sweep.copies` says why). CPU units whose input streams from DRAM
(``cpu_interleave_bytes`` of the preset, 32 MiB) time the variant and the copies in turns instead, one call
of each per round, so the ratio does not ride on the host's bandwidth drift (sweeps minutes apart put
`native` at 62-98% of a 4096x4096 roofline measured before it; in turns, 94-97% over three sweeps).
``speedup_vs_torch`` is the `torch` variant's median over this one, both measured in this run.

Two CPU settings decide what the numbers mean (both are recorded in run.json under "throughput"):

- the allocator: by default glibc unmaps every freed block above 32 MB, so each large output page-faults on
  first touch (16384 faults for 64 MB: torch.softmax on 4096x4096 ran at 12% of copy bandwidth instead of
  44% here). The sweep keeps freed memory in the process, like CUDA's caching allocator does;
  ``--system-malloc`` measures glibc's default instead.
- threads: torch uses one OpenMP thread per core. When other jobs share the cores, a parallel region waits
  for a descheduled thread and a 15 us call takes 4-16 ms; so by default the sweep uses only the cores
  other jobs leave free, measured from /proc/stat (:func:`choose_threads`; ``--threads N`` overrides),
  records the choice in run.json and the thread count in every row.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from bench import UserError
from bench.devices import DTYPES, dtype_name, dtype_skip_reason
from bench.harness import (
    add_common_arguments,
    chosen_variants,
    classify_failure,
    device_from,
    open_run,
    timeout_from,
)
from bench.presets import (
    BASELINE,
    FULL,
    MEMORY_FRACTION,
    QUICK,
    THROUGHPUT_OPS,
    THROUGHPUT_PRESETS,
    UNIT_TIMEOUT_S,
    SweepBlock,
    ThroughputPreset,
    TimerBudget,
    as_dict,
    pick,
)
from bench.progress import each, log
from bench.results import MAX_SAMPLES, Run, SampleRow, ThroughputRow
from bench.sandbox import InputGuard, UnitTimeout, contained, deadline, memory_ceiling
from bench.targets import measured, target_lines
from bench.timing import (
    Measurement,
    keep_freed_memory,
    peak_memory,
    release_kept_memory,
    time_call,
    time_cpu_interleaved,
    timer_overhead,
)
from bench.validate import check_output
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


def streaming_copy() -> Callable[[torch.Tensor, torch.Tensor], None] | str:
    """The CPU streaming copy (dst, src) of the native kernels, or the reason it cannot run here."""
    from softmax_impls import native  # the kernels' build lives with the variant that uses them

    reason = native.unavailable(torch.device("cpu"))
    return reason if reason else native.stream_copy


# --- the plan: which units, in which order --------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    variant: str
    op: str
    rows: int
    cols: int
    dtype: str
    timer: TimerBudget
    repeat: bool = False

    def label(self) -> str:
        return f"{self.variant} {self.op} {self.rows}x{self.cols} {self.dtype}"


def plan(preset: ThroughputPreset, variant_names: Sequence[str], ops: Sequence[str] | None = None,
         dtypes: Sequence[str] | None = None, shapes: Sequence[tuple[int, int]] | None = None) -> list[Unit]:
    """Every unit of the preset, in sweep order; `ops`/`dtypes`/`shapes` replace the preset's lists.

    Within one (shape, dtype, op) the baseline `torch` comes first, so every other variant's speedup is
    against a measurement taken just before it.
    """
    ordered = sorted(dict.fromkeys(variant_names), key=lambda name: (name != BASELINE,))
    repeats = {(r.variant, r.op, r.rows, r.cols, r.dtype) for r in preset.repeats}
    units: dict[tuple, Unit] = {}
    for block in preset.blocks:
        block = SweepBlock(tuple(ops) if ops else block.ops, tuple(shapes) if shapes else block.shapes,
                           tuple(dtypes) if dtypes else block.dtypes, block.timer)
        for rows, cols in block.shapes:
            for dtype in block.dtypes:
                for op in block.ops:
                    for name in ordered:
                        key = (name, op, rows, cols, dtype)
                        if key not in units:
                            units[key] = Unit(name, op, rows, cols, dtype, block.timer or preset.timer,
                                              repeat=key in repeats)
    return list(units.values())


# --- measuring -------------------------------------------------------------------------------------

def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Sweep:
    """State shared by the units of one sweep: baselines, copy bandwidths, what the run already holds."""

    def __init__(self, run: Run, variants: Sequence[Variant], device: torch.device, preset: ThroughputPreset,
                 flush_l2: bool, cuda_graph: bool, timeout: float | None = None):
        self.run, self.device, self.preset = run, device, preset
        self.flush_l2, self.cuda_graph = flush_l2, cuda_graph
        self.variants = {v.name: v for v in variants}
        self.dev = str(device)
        self.baseline: dict[tuple[str, str, int, int], float | None] = {}
        self.have: dict[tuple[str, ...], dict[str, str]] = {}  # unit key -> {metric: status}
        existing = run.read(TABLE)
        for row in existing[existing["device"] == self.dev].itertuples(index=False):
            unit_key = tuple(str(getattr(row, k)) for k in UNIT_KEY)
            self.have.setdefault(unit_key, {})[row.metric] = row.status
            if row.status != "ok" or row.value is None or (isinstance(row.value, float) and math.isnan(row.value)):
                continue
            # A resumed run compares against what this run measured before the interruption.
            if row.metric == "median_s" and row.variant == BASELINE:
                self.baseline.setdefault((row.op, row.dtype, int(row.rows), int(row.cols)), float(row.value))
        self.overhead: float | None = None
        self.timeout = timeout
        # (variant, op, dtype) -> elements of the smallest shape that timed out: bigger ones are not tried
        self.timed_out: dict[tuple[str, str, str], int] = {}

    # -- resume bookkeeping
    def unit_key(self, u: Unit) -> tuple[str, ...]:
        return (u.variant, self.dev, u.dtype, u.op, str(u.rows), str(u.cols))

    def done(self, u: Unit) -> bool:
        """Whether the run already holds this unit completely (a one-row failed unit counts as complete).

        A unit cut mid-write is measured again whole; the reader keeps only its latest block of rows."""
        have = self.have.get(self.unit_key(u), {})
        if not have:
            return False
        if have.get("median_s", "ok") != "ok":
            return True  # skipped, oom, error, wrong or timeout
        return not set(expected_metrics(u.repeat)) - set(have)

    # -- rows
    def row(self, u: Unit, metric: str, value: float | None, unit: str, status: str = "ok",
            message: str = "") -> ThroughputRow:
        return ThroughputRow(u.variant, self.dev, u.dtype, u.op, u.rows, u.cols, metric, value, unit,
                             status, message)

    def failed(self, u: Unit, status: str, message: str) -> list[ThroughputRow]:
        return [self.row(u, "median_s", None, "s", status, message)]

    # -- measurements
    def time(self, fn: Callable[[], object], timer: TimerBudget) -> Measurement:
        return time_call(fn, self.device, timer, flush_l2=self.flush_l2, graph=self.cuda_graph)

    def copies(self, u: Unit) -> tuple[list[tuple[str, Callable[[], object]]], int, str]:
        """The copies whose best is the roofline, as (name, closure), the bytes each moves, and a note.

        CUDA: dst.copy_(src). CPU: dst.copy_(src) and a streaming copy (non-temporal stores, built with the
        `native` kernels). PyTorch's CPU copy_ reads each destination line before writing it
        (read-for-ownership), so it moves 1.5x the bytes it counts and a kernel with streaming stores beat it
        by up to 1.5x here: a roofline must be the best copy the machine can do. Where the native kernels
        cannot be built, copy_ alone, and the note says why.
        """
        src = torch.randn(u.rows, u.cols, device=self.device).to(DTYPES[u.dtype])
        dst = torch.empty_like(src)
        calls: list[tuple[str, Callable[[], object]]] = [("copy_", lambda: dst.copy_(src))]
        note = ""
        if self.device.type == "cpu":
            stream = streaming_copy()
            if isinstance(stream, str):
                note = f"copy_ only: {stream}"
            else:
                calls.append(("streaming copy", lambda: stream(dst, src)))
        return calls, 2 * src.numel() * src.element_size(), note

    @staticmethod
    def best_copy(names: Sequence[str], gbps: Sequence[float], note: str, how: str = "") -> tuple[float, str]:
        """(the best copy's GB/s, the message naming every copy) from the copies' bandwidths."""
        if len(names) == 1:
            return gbps[0], note
        figures = " and ".join(f"{name} {g:.3g}" for name, g in zip(names, gbps, strict=True))
        return max(gbps), f"best of {figures} GB/s{how}"

    def copy_bandwidth(self, u: Unit) -> tuple[float | None, str, str]:
        """(GB/s, status, message) of the best copy (:meth:`copies`) of one input-sized buffer, measured just
        before the unit.

        Measured again for every unit, not once per shape: on a shared machine the memory bandwidth drifts
        by 2x over minutes (a 64 MB copy ran at 21 to 59 GB/s here), and a roofline taken ten units earlier
        then says more about the neighbours than about the variant. DRAM-sized CPU units go further and
        sample the copies in turns with the variant (:meth:`time_beside_copies`).
        """
        try:
            calls, nbytes, note = self.copies(u)
            # timed exactly as the variant is (CUDA graph replays with --cuda-graph), or the ratio mixes modes
            gbps = [nbytes / self.time(fn, u.timer).stats.median / 1e9 for _, fn in calls]
            best, message = self.best_copy([name for name, _ in calls], gbps, note)
            return best, "ok", message
        except Exception as exc:  # an OOM on the copy still lets the variant be timed
            status, message = classify_failure(exc)
            return None, status, f"copy bandwidth: {message}"

    def interleaves(self, u: Unit) -> bool:
        """Whether this unit's variant and copies are sampled in turns: CPU inputs of at least
        preset.cpu_interleave_bytes, which stream from DRAM (smaller ones would evict each other's cache)."""
        return (self.device.type == "cpu"
                and u.rows * u.cols * DTYPES[u.dtype].itemsize >= self.preset.cpu_interleave_bytes)

    def time_beside_copies(self, fn: Callable[[], object], u: Unit
                           ) -> tuple[Measurement, tuple[float | None, str, str]]:
        """The variant's measurement and the roofline (as copy_bandwidth) from one interleaved sampling."""
        try:
            calls, nbytes, note = self.copies(u)
        except Exception as exc:  # no room for the copy buffers: time the variant alone
            status, message = classify_failure(exc)
            return self.time(fn, u.timer), (None, status, f"copy bandwidth: {message}")
        ms = time_cpu_interleaved([fn, *(call for _, call in calls)], u.timer)
        gbps = [nbytes / m.stats.median / 1e9 for m in ms[1:]]
        best, message = self.best_copy([name for name, _ in calls], gbps, note,
                                       ", each sampled in turns with the variant")
        return ms[0], (best, "ok", message)

    def baseline_median(self, u: Unit) -> float | None:
        """The `torch` median at this op/shape/dtype; timed here (rows not stored) if torch is not swept."""
        key = (u.op, u.dtype, u.rows, u.cols)
        if key not in self.baseline:
            self.baseline[key] = None
            if BASELINE not in self.variants:
                try:
                    import softmax_impls

                    base = softmax_impls.get(BASELINE)
                    op = OPS[u.op]
                    inputs = op.make_inputs(u.rows, u.cols, DTYPES[u.dtype], self.device)
                    self.baseline[key] = self.time(op.closure(base, inputs), u.timer).stats.median
                    del inputs
                except BaseException as exc:  # no baseline: the speedup row says so
                    if not contained(exc):
                        raise
        return self.baseline[key]

    def memory_guard(self, u: Unit) -> str | None:
        """Why the unit is not attempted (it would not fit), or None. Counts what this process already holds:
        the sweep keeps freed memory (keep_freed_memory), so RSS is given back first when it is in the way."""
        if self.device.type != "cpu":
            return None  # CUDA raises a clean OutOfMemoryError instead
        need = u.rows * u.cols * DTYPES[u.dtype].itemsize * (2 + self.preset.cpu_live_copies)
        available = _mem_available_bytes()
        if available is not None and need > available:
            release_kept_memory()
            available = _mem_available_bytes()
        if available is not None and need > available:
            return (f"not attempted: needs about {need / 1e9:.1f} GB (inputs, a pristine copy and "
                    f"{self.preset.cpu_live_copies} input-sized temporaries) but only {available / 1e9:.1f} GB "
                    f"is available; the OOM killer would end the whole sweep")
        return None

    def inputs_for(self, u: Unit) -> Inputs:
        torch.manual_seed(0)  # every variant of a point sees the same inputs
        return OPS[u.op].make_inputs(u.rows, u.cols, DTYPES[u.dtype], self.device)

    def validate(self, variant: Variant, u: Unit, inputs: Inputs, fn: Callable[[], object],
                 guard: InputGuard) -> tuple[str, str] | None:
        """Run the variant once and judge its output and its inputs: (status, reason) when it must not be
        timed (`wrong` result, `error` for a mutated input), None when it may."""
        start = time.perf_counter()
        out = fn()
        took = time.perf_counter() - start
        calls = 2 + u.timer.warmup + u.timer.min_reps  # first call, warm-up, samples, peak memory
        if self.timeout and took * calls > self.timeout:
            raise UnitTimeout(f"one call took {took:.3g} s and timing needs at least {calls} more, past the "
                              f"time limit of {self.timeout:g} s (--timeout)")
        mutated = guard.changed()
        if mutated:
            return "error", mutated
        problem = check_output(u.op, out, inputs.x, inputs.target, inputs.dy,
                               variant.contract.ordinary_tolerance_ulps)
        return ("wrong", f"not timed: {problem}") if problem else None

    def measure(self, u: Unit) -> list[ThroughputRow | SampleRow]:
        """All rows of one unit; never raises for a failing variant (Ctrl-C excepted)."""
        variant = self.variants[u.variant]
        dtype = DTYPES[u.dtype]
        reason = variant.skip_reason(self.device, dtype) or dtype_skip_reason(self.device, dtype)
        if reason:
            return self.failed(u, "skipped", reason)
        too_big = self.memory_guard(u)
        if too_big:
            return self.failed(u, "oom", too_big)
        earlier = self.timed_out.get((u.variant, u.op, u.dtype))
        if earlier is not None and u.rows * u.cols >= earlier:
            return self.failed(u, "timeout", "not attempted: a smaller shape of this op and dtype ran past "
                                             "the time limit (--timeout)")
        try:
            with deadline(self.timeout, f"unit {u.label()}"):
                return self.measure_unit(variant, u)
        except UnitTimeout as exc:
            self.timed_out[(u.variant, u.op, u.dtype)] = u.rows * u.cols
            return self.failed(u, "timeout", str(exc))
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # big shapes: leave the next unit the whole memory

    def measure_unit(self, variant: Variant, u: Unit) -> list[ThroughputRow | SampleRow]:
        op = OPS[u.op]
        interleave = self.interleaves(u)
        if not interleave:
            copy_gbps, copy_status, copy_msg = self.copy_bandwidth(u)
        inputs = fn = guard = None
        try:
            inputs = self.inputs_for(u)
            guard = InputGuard(vars(inputs))
            fn = op.closure(variant, inputs)
            refused = self.validate(variant, u, inputs, fn, guard)
            if refused:
                return self.failed(u, *refused)
            if interleave:
                m, (copy_gbps, copy_status, copy_msg) = self.time_beside_copies(fn, u)
            else:
                m = self.time(fn, u.timer)
            again = self.time(fn, u.timer) if u.repeat else None
            peak = self.peak(fn, m)
            mutated = guard.changed()
            if mutated:
                return self.failed(u, "error", mutated + " while it was timed")
        except UnitTimeout:
            raise
        except BaseException as exc:  # SystemExit from a plugin too: a row, never the end of the sweep
            if not contained(exc):
                raise
            return self.failed(u, *classify_failure(exc))
        finally:
            del inputs, fn, guard
        return self.ok_rows(u, m, again, peak, (copy_gbps, copy_status, copy_msg))

    def peak(self, fn: Callable[[], object], m: Measurement) -> tuple[float | None, str, str]:
        try:
            return float(peak_memory(fn, self.device)), "ok", ""
        except UnitTimeout:
            raise
        except BaseException as exc:  # e.g. no mallinfo2: the peak row says why, the timing stands
            if not contained(exc):
                raise
            status, message = classify_failure(exc)
            return None, "skipped" if status == "error" else status, message

    def ok_rows(self, u: Unit, m: Measurement, again: Measurement | None, peak: tuple[float | None, str, str],
                copy: tuple[float | None, str, str]) -> list[ThroughputRow | SampleRow]:
        op, dtype = OPS[u.op], DTYPES[u.dtype]
        copy_gbps, copy_status, copy_msg = copy
        s = m.stats
        if u.variant == BASELINE:
            self.baseline[(u.op, u.dtype, u.rows, u.cols)] = s.median
        gbps = op.min_bytes(u.rows, u.cols, dtype.itemsize) / s.median / 1e9
        rows = [
            self.row(u, "median_s", s.median, "s"),
            self.row(u, "p20_s", s.p20, "s"),
            self.row(u, "p80_s", s.p80, "s"),
            self.row(u, "iqr_s", s.iqr, "s"),
            self.row(u, "cv", s.cv, "ratio"),
            self.row(u, "unstable", float(s.unstable), "flag",
                     message=f"IQR is {s.rel_spread:.0%} of the median" if s.unstable else ""),
            self.row(u, "reps", float(s.n), "count", message=f"{m.inner} call(s) per sample, timer {m.timer}"),
            self.row(u, "first_call_s", m.first_call_s, "s"),
            self.row(u, "gbps", gbps, "GB/s", message=op.formula),
        ]
        if copy_gbps is None:
            rows += [self.row(u, "copy_gbps", None, "GB/s", copy_status, copy_msg),
                     self.row(u, "roofline_frac", None, "ratio", copy_status, copy_msg)]
        else:
            rows += [self.row(u, "copy_gbps", copy_gbps, "GB/s", message=copy_msg),
                     self.row(u, "roofline_frac", gbps / copy_gbps, "ratio")]
        base = s.median if u.variant == BASELINE else self.baseline_median(u)
        if base is None:
            rows.append(self.row(u, "speedup_vs_torch", None, "ratio", "skipped",
                                 f"no `{BASELINE}` measurement at this op/shape/dtype in this run"))
        else:
            rows.append(self.row(u, "speedup_vs_torch", base / s.median, "ratio"))
        rows.append(self.row(u, "peak_bytes", peak[0], "bytes", peak[1], peak[2]))
        rows.append(self.row(u, "threads", float(m.threads), "count"))
        rows.append(self.row(u, "overhead_s", self.overhead, "s",
                             message="empty closure through the same timer, per call"))
        if again is not None:
            diff = abs(again.stats.median - s.median) / s.median
            rows += [self.row(u, "repeat_median_s", again.stats.median, "s"),
                     self.row(u, "repeat_diff_frac", diff, "ratio")]
        return rows + self.sample_rows(u, m.samples)

    def sample_rows(self, u: Unit, samples: Sequence[float]) -> list[SampleRow]:
        """At most MAX_SAMPLES of the unit's per-call times, evenly spaced in the order they were taken (a
        drift within the unit stays visible), for compare's rank test."""
        n = len(samples)
        picks = range(n) if n <= MAX_SAMPLES else [round(i * (n - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)]
        return [SampleRow(u.variant, self.dev, u.dtype, u.op, u.rows, u.cols, k, float(samples[i]))
                for k, i in enumerate(picks)]


def busy_cores_of_other_jobs(window_s: float = 0.5) -> float | None:
    """How many cores other processes keep busy, measured now from /proc/stat over `window_s`.

    This process sleeps through the window, so only other jobs (and the hypervisor's steal time) count.
    The load average cannot tell them apart: after `softmax-bench all` trained for two minutes, its own
    past load made the sweep think another job held a core. None where /proc/stat is unreadable.
    """
    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])  # busy (user..steal), total; guest is inside user

    first = sample()
    if first is None:
        return None
    time.sleep(window_s)
    second = sample()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def choose_threads(device: torch.device, requested: int | None = None,
                   busy: Callable[[], float | None] = busy_cores_of_other_jobs) -> tuple[int, str]:
    """(torch CPU threads for the sweep, why). `requested` wins; else one per core that other jobs leave free.

    With every core in use by torch's OpenMP threads, a parallel region waits for whichever thread the OS
    descheduled: on this shared 2-core machine a 15 us call then takes 4-16 ms (scheduler ticks). So the
    cores other jobs keep busy right now (:func:`busy_cores_of_other_jobs`; the load average where that
    cannot be read) decide.
    """
    default = torch.get_num_threads()
    if requested is not None:
        return requested, "asked for with --threads"
    if device.type != "cpu":
        return default, "torch's default"
    cores = os.cpu_count() or 1
    held, source = busy(), "measured over 0.5 s"
    if held is None:
        try:
            held, source = os.getloadavg()[0], "load average"
        except OSError:
            return default, "torch's default (neither /proc/stat nor a load average on this system)"
    free = max(1, min(default, int(cores - held + 0.5)))
    if free < default:
        return free, (f"other jobs keep {held:.1f} of {cores} cores busy ({source}), so {free} instead of "
                      f"torch's {default} (--threads N to override)")
    return default, f"torch's default, one per core (other jobs: {held:.1f} cores busy, {source})"


def estimate_seconds(units: Sequence[Unit], device: torch.device) -> float:
    """What the timer budgets alone cost: per unit, the variant and each roofline copy (two on CPU, one on
    CUDA) spend their sampling budget and some warm-up (at most 0.1 s of it: short calls stop after a few),
    plus the validation and peak-memory calls (~0.05 s)."""
    copies = 2 if device.type == "cpu" else 1
    return sum((copies + 1) * (min(u.timer.warmup_s, 0.1) + u.timer.budget_s) + 0.05 for u in units)


@contextlib.contextmanager
def memory_limit(device: torch.device) -> Iterator[str]:
    """Keep the sweep under MEMORY_FRACTION of the device's memory, so an allocation past it is an `oom` row
    and never a killed process; yields what was set (for run.json)."""
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(MEMORY_FRACTION, device)
        yield f"torch.cuda.set_per_process_memory_fraction({MEMORY_FRACTION})"
        return
    with memory_ceiling(MEMORY_FRACTION) as what:
        yield what


def throughput_into(run: Run, variants: Sequence[Variant], device: torch.device, preset: ThroughputPreset, *,
                    ops: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
                    shapes: Sequence[tuple[int, int]] | None = None, flush_l2: bool = True,
                    cuda_graph: bool = False, keep_memory: bool = True, threads: int | None = None,
                    summary: bool = True, timeout: float | None = None) -> list[ThroughputRow]:
    """Sweep `variants` over `preset` on `device` into `run`'s throughput.csv; return the rows written now.

    Units the run already holds (a --resume) are not measured again. keep_memory keeps glibc from unmapping
    freed blocks (see bench.timing.keep_freed_memory). threads: torch CPU threads, None for
    :func:`choose_threads`'s choice; torch's setting is restored afterwards. Prints the summary table at the
    end when `summary`. timeout: seconds per unit (None: the device's default, UNIT_TIMEOUT_S; 0: none).
    """
    if not variants:
        raise UserError("no variants to measure.")
    previous_threads = torch.get_num_threads()
    n_threads, why = choose_threads(device, threads)
    torch.set_num_threads(n_threads)
    try:
        limit = UNIT_TIMEOUT_S[device.type] if timeout is None else timeout
        with memory_limit(device) as memory:
            return _sweep(run, variants, device, preset, ops, dtypes, shapes, flush_l2, cuda_graph, keep_memory,
                          f"{n_threads} ({why})", summary, limit, memory)
    finally:
        torch.set_num_threads(previous_threads)


def _sweep(run: Run, variants: Sequence[Variant], device: torch.device, preset: ThroughputPreset,
           ops: Sequence[str] | None, dtypes: Sequence[str] | None, shapes: Sequence[tuple[int, int]] | None,
           flush_l2: bool, cuda_graph: bool, keep_memory: bool, threads: str, summary: bool,
           timeout: float, memory: str) -> list[ThroughputRow]:
    allocator = keep_freed_memory() if (keep_memory and device.type == "cpu") else "system allocator defaults"
    run.info.setdefault("throughput", {})[str(device)] = {
        "preset": preset.name, "allocator": allocator, "l2_flush": flush_l2, "cuda_graph": cuda_graph,
        "threads": threads, "unit_timeout_s": timeout, "memory_limit": memory}
    run.save_info()
    sweep = _Sweep(run, variants, device, preset, flush_l2, cuda_graph, timeout)
    units = plan(preset, [v.name for v in variants], ops, dtypes, shapes)
    todo = [u for u in units if not sweep.done(u)]
    log(f"throughput: {len(todo)} of {len(units)} units to measure on {device} (preset {preset.name}, "
        f"allocator: {allocator}; torch threads: {threads}) into {run.path}")
    if todo:
        log(f"throughput: estimate {estimate_seconds(todo, device) / 60:.1f} min for {len(todo)} units (timer "
            f"budgets; compile time and long calls come on top; measured figure after the first units)")
        sweep.overhead = timer_overhead(device, preset.timer, flush_l2=flush_l2).median
    written: list[ThroughputRow] = []
    start, checkpoint = time.perf_counter(), max(3, len(todo) // 10)
    for k, u in enumerate(each(todo, desc="throughput", describe=Unit.label), 1):
        rows = sweep.measure(u)
        run.append(*rows)
        written += [r for r in rows if isinstance(r, ThroughputRow)]
        if k == checkpoint < len(todo):
            per_unit = (time.perf_counter() - start) / k
            log(f"throughput: measured {per_unit:.2f} s per unit over {k} units: about "
                f"{per_unit * (len(todo) - k) / 60:.1f} min left")
        # No gc.collect() per unit: with torch loaded it costs ~0.4 s here, and refcounting already frees
        # each unit's tensors when measure() returns (classify_failure collects after an OOM).
    if summary:
        print(summary_table(run.read(TABLE), str(device)))
    return written


# --- the summary -----------------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ok_value(table: dict[tuple, Any], key: tuple) -> float | None:
    hit = table.get(key)
    return None if hit is None or hit.status != "ok" else float(hit.value)


def summary_table(df: pd.DataFrame, device: str | None = None, columns_per_block: int = 5) -> str:
    """Per op: variant x shape/dtype cells 'GB/s  % of copy bandwidth  speedup vs torch'; then the checks.

    A pure function of stored rows, so the same table prints for a resumed or merged run.
    """
    if device is not None:
        df = df[df["device"] == device]
    if df.empty:
        return "no throughput rows."

    variants = sorted(df["variant"].unique(), key=lambda name: (name != BASELINE, name))
    value = {(r.variant, r.op, r.rows, r.cols, r.dtype, r.metric): r for r in df.itertuples(index=False)}
    trusted = {(r.variant, r.op, r.rows, r.cols, r.dtype, r.metric): r for r in measured(df).itertuples(index=False)}
    cells: dict[str, dict[tuple[int, int, str], dict[str, str]]] = {}
    for (var, op, rows, cols, dtype, metric), r in value.items():
        if metric != "median_s":
            continue
        if r.status != "ok":
            text = r.status
        else:
            gbps, roof, speed = (_ok_value(trusted, (var, op, rows, cols, dtype, name))
                                 for name in ("gbps", "roofline_frac", "speedup_vs_torch"))
            text = (f"{gbps:.3g}" if gbps is not None else "?") + " "
            text += (f"{roof:.0%}" if roof is not None else "?") + " "
            text += f"{speed:.2f}x" if speed is not None else "?x"
        cells.setdefault(op, {}).setdefault((int(rows), int(cols), dtype), {})[var] = text
    lines = [f"throughput on {device or 'all devices'}: cells are GB/s (fewest bytes), % of the copy bandwidth "
             f"of the same buffer, speedup vs {BASELINE}"]
    name_w = max(len(v) for v in variants)
    order = {op: i for i, op in enumerate(THROUGHPUT_OPS)}
    for op in sorted(cells, key=lambda o: (order.get(o, 99), o)):
        keys = sorted(cells[op], key=lambda k: (k[0] * k[1], k[0], k[2]))
        for start in range(0, len(keys), columns_per_block):
            chunk = keys[start:start + columns_per_block]
            heads = [f"{r}x{c} {d}" for r, c, d in chunk]
            width = max(16, *(len(h) for h in heads))
            lines.append("")
            lines.append(f"{op:{name_w}s} " + " ".join(f"{h:>{width}s}" for h in heads))
            for var in variants:
                row = [cells[op][k].get(var, "-") for k in chunk]
                if all(c == "-" for c in row):
                    continue
                lines.append(f"{var:{name_w}s} " + " ".join(f"{c:>{width}s}" for c in row))

    lines.append("")
    targets = target_lines(df, device=device)
    if targets:
        lines += ["targets (bench/presets.py):", *(f"  {line}" for line in targets), ""]
    for r in df[(df["metric"] == "repeat_diff_frac") & (df["status"] == "ok")].itertuples(index=False):
        first = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "median_s"))
        second = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "repeat_median_s"))
        mb = int(r.rows) * int(r.cols) * DTYPES[r.dtype].itemsize / 1e6
        if first is not None and second is not None:
            lines.append(f"repeat: {r.variant} {r.op} {r.rows}x{r.cols} {r.dtype} ({mb:.0f} MB): median "
                         f"{_fmt_time(float(first.value))} then {_fmt_time(float(second.value))}, "
                         f"differ by {float(r.value):.1%} ({'within' if r.value <= 0.05 else 'NOT within'} 5%)")
    overhead = df[(df["metric"] == "overhead_s") & (df["status"] == "ok")]["value"].dropna()
    if not overhead.empty:
        cost = float(overhead.median())
        line = f"timer overhead: {_fmt_time(cost)} per timed call (an empty closure through the same timer)"
        ok = df[(df["metric"] == "median_s") & (df["status"] == "ok")]
        smallest = ok[ok["rows"] * ok["cols"] == (ok["rows"] * ok["cols"]).min()] if not ok.empty else ok
        if not smallest.empty:
            # The smallest shape is where the harness's own cost would show; say how much of a call it is.
            pick_torch = smallest[(smallest["variant"] == BASELINE) & (smallest["op"] == "softmax_fwd")]
            r = (pick_torch if not pick_torch.empty else smallest.sort_values("value")).iloc[0]
            line += (f"; {r['variant']} {r['op']} {r['rows']}x{r['cols']} {r['dtype']} takes "
                     f"{_fmt_time(float(r['value']))}, so the overhead is {cost / float(r['value']):.2%} of it")
        lines.append(line)
    flagged = df[(df["metric"] == "unstable") & (df["value"] == 1)]
    if not flagged.empty:
        names = ", ".join(f"{r.variant} {r.op} {r.rows}x{r.cols} {r.dtype}" for r in flagged.head(6).itertuples())
        more = f" and {len(flagged) - 6} more" if len(flagged) > 6 else ""
        lines.append(f"unstable (IQR > spread limit of the median; machine busy?): {len(flagged)}: {names}{more}")
    bad = df[(df["metric"] == "median_s") & (df["status"] != "ok")]
    if not bad.empty:
        lines.append("not measured: " + ", ".join(f"{s} {n}" for s, n in bad["status"].value_counts().items()))
    # a wrong output or a timeout is a finding about the variant, not about the machine: say each one and why
    for r in bad[bad["status"].isin(["wrong", "timeout"])].head(20).itertuples(index=False):
        why = " ".join(str(r.message).split())[:200]
        lines.append(f"  {r.status}: {r.variant} {r.op} {r.rows}x{r.cols} {r.dtype} on {r.device}: {why}")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------------

_SHAPE = re.compile(r"^\s*(\d+)\s*[xX*,]\s*(\d+)\s*$")


def parse_shape(text: str) -> tuple[int, int]:
    match = _SHAPE.match(text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"--shape {text!r} is not ROWSxCOLS with positive integers, e.g. 4096x32768.")
    return int(match.group(1)), int(match.group(2))


def add_arguments_throughput(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--preset", help=f"one of {', '.join(THROUGHPUT_PRESETS)} (default: quick with --quick, "
                                         f"gpu-quick with --quick on cuda, gpu on cuda, default otherwise)")
    parser.add_argument("--op", action="append", metavar="OP",
                        help=f"replace the preset's ops (repeatable): {', '.join(THROUGHPUT_OPS)}")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help=f"replace the preset's dtypes (repeatable): {', '.join(DTYPES)}")
    parser.add_argument("--shape", action="append", metavar="RxC", help="replace the preset's shapes (repeatable)")
    parser.add_argument("--cuda-graph", action="store_true", help="CUDA: time CUDA-graph replays")
    parser.add_argument("--no-l2-flush", action="store_true", help="CUDA: do not flush the L2 between calls")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: one per core that other jobs leave free, so "
                             "OpenMP barriers do not wait on threads other jobs deschedule)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="CPU: keep glibc's default of unmapping big freed blocks (every big output "
                             "then page-faults; see bench.timing.keep_freed_memory)")


def run_throughput(args: argparse.Namespace) -> int:
    device = device_from(args)
    default = QUICK[device.type]["throughput"] if args.quick else FULL[device.type]
    if args.quick and args.preset and args.preset != default:
        raise UserError(f"--quick asks for the {default} preset but --preset says {args.preset!r}; give one of "
                        f"them.")
    preset = pick("throughput preset", THROUGHPUT_PRESETS, args.preset, default=str(default))
    for op in args.op or ():
        if op not in OPS:
            raise UserError(f"unknown op {op!r}; known ops: {', '.join(OPS)}.")
    dtypes = None
    if args.dtype:
        from bench.devices import parse_dtype

        dtypes = [dtype_name(parse_dtype(d)) for d in args.dtype]
    shapes = [parse_shape(s) for s in args.shape] if args.shape else None
    if args.cuda_graph and device.type != "cuda":
        raise UserError("--cuda-graph needs a CUDA device (--device cuda).")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: give a positive number of threads.")
    variants = chosen_variants(args)
    timeout = timeout_from(args)
    overrides = {"ops": args.op, "dtypes": dtypes, "shapes": shapes, "threads": args.threads}
    run = open_run(args, {"throughput": as_dict(preset), "overrides": overrides})
    print(f"run folder: {run.path}", file=sys.stderr)
    throughput_into(run, variants, device, preset, ops=args.op, dtypes=dtypes, shapes=shapes,
                    flush_l2=not args.no_l2_flush, cuda_graph=args.cuda_graph, keep_memory=not args.system_malloc,
                    threads=args.threads, timeout=timeout)
    print(f"rows in {run.csv_path(TABLE)}")
    return 0


def describe_ops() -> list[dict[str, Any]]:
    """Each op's name, description and byte formula, for the report."""
    return [{"op": o.name, "description": o.description, "bytes": o.formula} for o in OPS.values()]
