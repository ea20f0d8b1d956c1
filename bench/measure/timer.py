"""CPU and CUDA timers and their statistics.

Time a zero-argument closure whose inputs were built beforehand:

    >>> from bench.measure.timer import TimerBudget, time_call
    >>> x = torch.randn(4096, 4096)
    >>> m = time_call(lambda: torch.softmax(x, -1), torch.device("cpu"), TimerBudget())
    >>> m.stats.median, m.stats.iqr, m.stats.unstable, m.first_call_s, m.threads

The first call is timed on its own (it is where torch.compile / Triton compile) and never enters the
samples; then come warm-up calls, then samples until the time budget is spent (at least ``min_reps``).

- CPU (:func:`time_cpu`): ``time.perf_counter`` around the call. A call shorter than ``min_sample_s`` is
  repeated ``inner`` times inside one sample, so the timer's own cost (a few hundred ns) stays out of the
  per-call time; :func:`timer_overhead` times an empty closure the same way to show what is left.
- CUDA (:func:`time_cuda`): one pair of CUDA events per call, read after one synchronisation. Between calls
  a buffer ``l2_flush_multiple`` times the L2 size is read (its max), so every call starts from a cold L2
  holding no dirty lines (triton.testing.do_bench zeroes one instead); ``graph=True`` captures the call
  once in a CUDA graph and times replays, which removes Python and launch overhead.

The statistics (:func:`summarize`, :func:`quantile`) are pure functions of the samples.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TimerBudget:
    """How long and how often one measurement is timed (bench/measure/timer.py reads it)."""

    warmup: int = 3  # calls after the separately timed first call, before timing starts
    warmup_s: float = 0.2  # ...but stop warming up once this long was spent (1 s calls need no 3 warm-ups)
    min_reps: int = 5  # samples taken even when the time budget is spent
    max_reps: int = 2000
    budget_s: float = 0.25  # time spent collecting samples for one measurement
    # CPU: a call shorter than this is repeated inside one sample so perf_counter's own cost stays negligible.
    min_sample_s: float = 100e-6
    max_inner: int = 1000
    # Flag a measurement as unstable when its interquartile range exceeds this fraction of its median.
    spread_limit: float = 0.10
    l2_flush_multiple: int = 2  # CUDA: the flush buffer is this many times the device's L2 size



# --- statistics (pure) ---------------------------------------------------------------------------

def quantile(sorted_samples: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks: numpy's default method (Hyndman-Fan
    type 7), position h = (n - 1) q, value = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])."""
    if len(sorted_samples) == 0:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must lie in [0, 1], got {q}")
    return float(np.quantile(np.asarray(sorted_samples, dtype=np.float64), q))


@dataclass(frozen=True)
class Stats:
    """Summary of per-call times in seconds. ``unstable`` flags a spread too wide to trust."""

    n: int
    median: float
    p20: float
    p80: float
    q25: float
    q75: float
    iqr: float
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one sample
    cv: float  # std / mean: outlier-sensitive, reported; the flag uses the robust IQR instead
    min: float
    max: float
    rel_spread: float  # iqr / median
    unstable: bool


def summarize(samples: Sequence[float], spread_limit: float = TimerBudget.spread_limit) -> Stats:
    """Median, p20, p80, quartiles, IQR, mean, std, CV of `samples`; unstable when IQR/median > spread_limit."""
    if len(samples) == 0:
        raise ValueError("summarize needs at least one sample")
    xs = sorted(float(s) for s in samples)
    median = quantile(xs, 0.5)
    q25, q75 = quantile(xs, 0.25), quantile(xs, 0.75)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    cv = std / mean if mean > 0 else math.nan
    iqr = q75 - q25
    rel = iqr / median if median > 0 else math.inf
    return Stats(n=len(xs), median=median, p20=quantile(xs, 0.2), p80=quantile(xs, 0.8), q25=q25, q75=q75,
                 iqr=iqr, mean=mean, std=std, cv=cv, min=xs[0], max=xs[-1], rel_spread=rel,
                 unstable=rel > spread_limit)


# --- timers --------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """What one timer run gives: per-call statistics, the raw samples and how they were taken."""

    stats: Stats
    samples: list[float] = field(repr=False)
    inner: int  # calls per sample (CPU batching of short calls); samples are already per call
    first_call_s: float  # the very first call alone: compilation, lazy init, first-touch page faults
    threads: int  # torch.get_num_threads() during the measurement
    timer: str  # "perf_counter", "cuda_events" or "cuda_graph"
    l2_flush: bool = False


def time_cpu(fn: Callable[[], object], budget: TimerBudget = TimerBudget()) -> Measurement:
    """Time `fn` on the CPU with time.perf_counter: first call, warm-up, samples until the budget is spent."""
    return time_cpu_interleaved([fn], budget)[0]


def time_cpu_interleaved(fns: Sequence[Callable[[], object]], budget: TimerBudget = TimerBudget()
                         ) -> list[Measurement]:
    """Time several closures on the CPU in alternation: one sample of each per round, rounds until the budget
    (per closure) is spent. Each Measurement is what :func:`time_cpu` would give for that closure alone,
    except that all of them come from the same seconds.

    Why: a shared machine's memory bandwidth drifts by 2x over minutes, so a kernel timed a second after its
    roofline can land at 60% or 130% of it by luck. Sampled in turns, both see the same neighbours, and
    their ratio keeps only the kernel's own spread. Meant for calls that stream from DRAM (milliseconds):
    a closure run between another's samples evicts what that one left in cache.
    """
    clock = time.perf_counter
    firsts = []
    for fn in fns:
        t0 = clock()
        fn()
        firsts.append(clock() - t0)
    # The fastest warm-up call estimates the per-call time, which decides how many calls make one sample.
    estimates = [min(_warm_up(fn, budget, clock), default=first) for fn, first in zip(fns, firsts, strict=True)]
    _settle(fns)
    inners = [1 if est >= budget.min_sample_s
              else min(budget.max_inner, max(1, math.ceil(budget.min_sample_s / max(est, 1e-9))))
              for est in estimates]
    samples: list[list[float]] = [[] for _ in fns]
    deadline = clock() + budget.budget_s * len(fns)
    while len(samples[0]) < budget.max_reps and (len(samples[0]) < budget.min_reps or clock() < deadline):
        for fn, inner, out in zip(fns, inners, samples, strict=True):
            if inner == 1:
                t0 = clock()
                fn()
                out.append(clock() - t0)
            else:
                loop = range(inner)  # built outside the timed region
                t0 = clock()
                for _ in loop:
                    fn()
                out.append((clock() - t0) / inner)
    threads = torch.get_num_threads()
    timer = "perf_counter" if len(fns) == 1 else "perf_counter, interleaved"
    return [Measurement(summarize(xs, budget.spread_limit), xs, inner, first, threads, timer)
            for xs, inner, first in zip(samples, inners, firsts, strict=True)]


SETTLE_FAULTS = 256  # minor page faults (1 MiB of 4 KiB pages) a settled round of calls may still take
SETTLE_ROUNDS = 12


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows: nothing to settle by
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _settle(fns: Sequence[Callable[[], object]]) -> int:
    """Calls the closures, a round at a time, until a round page-faults at most SETTLE_FAULTS times (at most
    SETTLE_ROUNDS rounds); returns the rounds it took.

    Why: even with freed memory kept (bench.measure.memory.keep_freed_memory), glibc serves a new 512 MB output
    from fresh heap for the first few calls (a padded aligned request does not fit the block the last call
    freed, until enough freed blocks have merged), and each such call page-faults the whole output: 131072
    minor faults, 150-240 ms a call against 18-25 ms once settled, for native's 1024x131072 softmax. A unit
    whose samples mixed both was reported at 7% of the roofline. The warm-up's call count cannot see this;
    the fault counter can."""
    if _minor_faults() is None:
        return 0
    for rounds in range(1, SETTLE_ROUNDS + 1):
        before = _minor_faults()
        for fn in fns:
            fn()
        if _minor_faults() - before <= SETTLE_FAULTS:
            return rounds
    return SETTLE_ROUNDS


def _warm_up(fn: Callable[[], object], budget: TimerBudget, clock: Callable[[], float],
             sync: Callable[[], None] = lambda: None) -> list[float]:
    """Up to budget.warmup calls, stopping once budget.warmup_s is spent; returns each call's duration."""
    start = clock()
    durations = []
    for _ in range(budget.warmup):
        t0 = clock()
        fn()
        sync()
        durations.append(clock() - t0)
        if clock() - start >= budget.warmup_s:
            break
    return durations


def l2_cache_bytes(device: torch.device) -> int:
    """The device's L2 size from its properties (40-50 MB on A100/H100); 64 MiB when torch does not say."""
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 64 * 2**20)


def _graph_replay(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` captured once in a CUDA graph; returns the replay. Captured on a side stream after warming it up
    there, as torch.cuda.graphs recommends."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def _l2_evictor(device: torch.device, budget: TimerBudget) -> Callable[[], object]:
    """A call that leaves the L2 holding only clean lines of a buffer larger than it.

    Evicted by READING the buffer (its max): the lines left behind are clean. Zeroing it (triton.testing.
    do_bench's way) leaves the L2 full of dirty lines, whose write-back to HBM then lands inside the timed call.
    """
    flush = torch.ones(budget.l2_flush_multiple * l2_cache_bytes(device), dtype=torch.int8, device=device)
    return flush.amax


def _event_times(call: Callable[[], object], evict: Callable[[], object] | None, n: int,
                 sync: Callable[[], None]) -> list[float]:
    """n calls, each between its own pair of CUDA events (the eviction outside them); seconds per call."""
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in pairs:
        if evict is not None:
            evict()
        start.record()
        call()
        end.record()
    sync()
    return [start.elapsed_time(end) / 1e3 for start, end in pairs]


def time_cuda(fn: Callable[[], object], device: torch.device, budget: TimerBudget = TimerBudget(),
              flush_l2: bool = True, graph: bool = False) -> Measurement:
    """Time `fn` on a CUDA device with events: one start/end pair per call, read after one sync.

    flush_l2 reads a buffer larger than the L2 before every call (outside the events), so each call reads
    its inputs from HBM like the first touch in a real model step would. graph=True times CUDA-graph replays.
    """
    def sync() -> None:
        torch.cuda.synchronize(device)

    with torch.cuda.device(device):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0
        _warm_up(fn, budget, time.perf_counter, sync)
        call, timer = (_graph_replay(fn, device), "cuda_graph") if graph else (fn, "cuda_events")
        if graph:
            call()
            sync()
        evict = _l2_evictor(device, budget) if flush_l2 else None
        # A short probe sizes the sample count to the budget.
        probe = _event_times(call, evict, min(5, budget.min_reps), sync)
        per_call = max(statistics.median(probe), 1e-7)
        n = int(min(budget.max_reps, max(budget.min_reps, budget.budget_s / per_call)))
        samples = _event_times(call, evict, n, sync)
    return Measurement(summarize(samples, budget.spread_limit), samples, 1, first,
                       torch.get_num_threads(), timer, l2_flush=flush_l2)


def time_call(fn: Callable[[], object], device: torch.device, budget: TimerBudget = TimerBudget(),
              flush_l2: bool = True, graph: bool = False) -> Measurement:
    """The right timer for `device`: :func:`time_cpu` or :func:`time_cuda`."""
    if device.type == "cuda":
        return time_cuda(fn, device, budget, flush_l2=flush_l2, graph=graph)
    return time_cpu(fn, budget)


def timer_overhead(device: torch.device, budget: TimerBudget = TimerBudget(), flush_l2: bool = True) -> Stats:
    """Per-call time of an empty closure through the same timer: the harness's own cost in every sample."""
    def empty() -> None:
        return None

    return time_call(empty, device, budget, flush_l2=flush_l2).stats
