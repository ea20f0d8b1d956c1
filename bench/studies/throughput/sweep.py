"""The sweep: every unit of a plan measured into the run folder, resumable, one unit never ending it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from bench import UserError
from bench.measure import roofline
from bench.measure.host import DTYPES, choose_threads, dtype_skip_reason, torch_threads
from bench.measure.memory import keep_freed_memory, mem_available_bytes, memory_limit, peak_memory, release_kept_memory
from bench.measure.sandbox import InputGuard, UnitTimeout, contained, deadline
from bench.measure.timer import Measurement, TimerBudget, time_call, time_cpu_interleaved, timer_overhead
from bench.progress import each, log
from bench.store.rows import BASELINE, SampleRow, ThroughputRow
from bench.store.run import Run
from bench.studies.common import (
    MEMORY_FRACTION,
    UNIT_TIMEOUT_S,
    classify_failure,
)
from bench.studies.throughput.ops import OPS, TABLE, UNIT_KEY, Inputs, expected_metrics, output_shape
from bench.studies.throughput.plan import Unit, estimate_seconds, plan
from bench.studies.throughput.presets import ThroughputPreset
from bench.studies.throughput.summary import summary_table
from bench.studies.throughput.unit_rows import UnitRows
from bench.studies.throughput.validate import check_output
from softmax_impls import Variant


class _Sweep(UnitRows):
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

    # -- measurements
    def time(self, fn: Callable[[], object], timer: TimerBudget) -> Measurement:
        return time_call(fn, self.device, timer, flush_l2=self.flush_l2, graph=self.cuda_graph)

    def copy_bandwidth(self, u: Unit) -> tuple[float | None, str, str]:
        """(GB/s, status, message) of the best copy (bench.measure.roofline.copies) of one input-sized buffer,
        measured just before the unit.

        Measured again for every unit, not once per shape: on a shared machine the memory bandwidth drifts
        over minutes, and a roofline taken ten units earlier then says more about the neighbours than about
        the variant. DRAM-sized CPU units go further and
        sample the copies in turns with the variant (:meth:`time_beside_copies`).
        """
        try:
            calls, nbytes, note = roofline.copies(self.device, u.rows, u.cols, u.dtype)
            # timed exactly as the variant is (CUDA graph replays with --cuda-graph), or the ratio mixes modes
            gbps = [nbytes / self.time(fn, u.timer).stats.median / 1e9 for _, fn in calls]
            best, message = roofline.best_copy([name for name, _ in calls], gbps, note)
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
            calls, nbytes, note = roofline.copies(self.device, u.rows, u.cols, u.dtype)
        except Exception as exc:  # no room for the copy buffers: time the variant alone
            status, message = classify_failure(exc)
            return self.time(fn, u.timer), (None, status, f"copy bandwidth: {message}")
        ms = time_cpu_interleaved([fn, *(call for _, call in calls)], u.timer)
        gbps = [nbytes / m.stats.median / 1e9 for m in ms[1:]]
        best, message = roofline.best_copy([name for name, _ in calls], gbps, note,
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
        available = mem_available_bytes()
        if available is not None and need > available:
            release_kept_memory()
            available = mem_available_bytes()
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
            peak = self.peak(fn, m, u)
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

    def peak(self, fn: Callable[[], object], m: Measurement, u: Unit) -> tuple[float | None, str, str]:
        try:
            peak = float(peak_memory(fn, self.device, peaks_once=m.stats.median > 0.01))
            # Every op returns a fresh output: a peak below it means the call allocates where neither the op
            # observer nor malloc (nor CUDA's caching allocator) looks (XLA's and onnxruntime's own arenas),
            # and a figure of ~0 bytes would credit the variant with memory it did use.
            out_bytes = math.prod(output_shape(u.op, u.rows, u.cols)) * DTYPES[u.dtype].itemsize
            if peak < 0.99 * out_bytes:
                return None, "skipped", (f"not measurable: the call's allocations bypass the allocators watched "
                                         f"(seen {peak:.0f} bytes, below its own output of {out_bytes} bytes)")
            return peak, "ok", ""
        except UnitTimeout:
            raise
        except BaseException as exc:  # e.g. no mallinfo2: the peak row says why, the timing stands
            if not contained(exc):
                raise
            status, message = classify_failure(exc)
            return None, "skipped" if status == "error" else status, message


def throughput_into(run: Run, variants: Sequence[Variant], device: torch.device, preset: ThroughputPreset, *,
                    ops: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
                    shapes: Sequence[tuple[int, int]] | None = None, flush_l2: bool = True,
                    cuda_graph: bool = False, keep_memory: bool = True, threads: int | None = None,
                    summary: bool = True, timeout: float | None = None) -> list[ThroughputRow]:
    """Sweep `variants` over `preset` on `device` into `run`'s throughput.csv; return the rows written now.

    Units the run already holds (a --resume) are not measured again. keep_memory keeps glibc from unmapping
    freed blocks (see bench.measure.memory.keep_freed_memory). threads: torch CPU threads, None for
    bench.measure.host.choose_threads's choice; torch's setting is restored afterwards. Prints the summary table at the
    end when `summary`. timeout: seconds per unit (None: the device's default, UNIT_TIMEOUT_S; 0: none).
    """
    if not variants:
        raise UserError("no variants to measure.")
    n_threads, why = choose_threads(device, threads)
    limit = UNIT_TIMEOUT_S[device.type] if timeout is None else timeout
    with torch_threads(n_threads), memory_limit(device, MEMORY_FRACTION) as memory:
        return _sweep(run, variants, device, preset, ops, dtypes, shapes, flush_l2, cuda_graph, keep_memory,
                      f"{n_threads} ({why})", summary, limit, memory)


def _sweep(run: Run, variants: Sequence[Variant], device: torch.device, preset: ThroughputPreset,
           ops: Sequence[str] | None, dtypes: Sequence[str] | None, shapes: Sequence[tuple[int, int]] | None,
           flush_l2: bool, cuda_graph: bool, keep_memory: bool, threads: str, summary: bool,
           timeout: float, memory: str) -> list[ThroughputRow]:
    allocator = keep_freed_memory() if (keep_memory and device.type == "cpu") else "system allocator defaults"
    run.info.setdefault("throughput", {})[str(device)] = {
        "preset": preset.name, "allocator": allocator, "l2_flush": flush_l2, "cuda_graph": cuda_graph,
        "threads": threads, "unit_timeout_s": timeout, "memory_limit": memory,
        "roofline_copies": roofline.copy_kinds(device)}
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

