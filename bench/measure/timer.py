"""CPU and CUDA timers and their statistics.

Time a zero-argument closure whose inputs were built beforehand:

    >>> from bench.timing import time_call
    >>> from bench.presets import TimerBudget
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

import ctypes
import ctypes.util
import functools
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bench.presets import TimerBudget

# --- statistics (pure) ---------------------------------------------------------------------------

def quantile(sorted_samples: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks (numpy's default, Hyndman-Fan type 7).

    position h = (n - 1) q; value = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]).
    """
    n = len(sorted_samples)
    if n == 0:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must lie in [0, 1], got {q}")
    h = (n - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_samples[lo] + (h - lo) * (sorted_samples[hi] - sorted_samples[lo])


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

        call = fn
        timer = "cuda_events"
        if graph:
            # Capture on a side stream after warming it up there, as torch.cuda.graphs recommends.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            call = g.replay
            timer = "cuda_graph"
            call()
            sync()

        evict = None
        if flush_l2:
            # Evicted by READING a buffer larger than the L2 (its max): the lines left behind are clean. Zeroing
            # it (triton.testing.do_bench's way) leaves the L2 full of dirty lines, whose write-back to HBM
            # then lands inside the timed call.
            flush = torch.ones(budget.l2_flush_multiple * l2_cache_bytes(device), dtype=torch.int8, device=device)

            def evict() -> None:
                flush.amax()

        def timed(n: int) -> list[float]:
            pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for start, end in pairs:
                if evict is not None:
                    evict()
                start.record()
                call()
                end.record()
            sync()
            return [start.elapsed_time(end) / 1e3 for start, end in pairs]

        # A short probe sizes the sample count to the budget.
        probe = timed(min(5, budget.min_reps))
        per_call = max(statistics.median(probe), 1e-7)
        n = int(min(budget.max_reps, max(budget.min_reps, budget.budget_s / per_call)))
        samples = timed(n)
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


# --- peak memory ---------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33 (no mallinfo2)
        return None


def cpu_memory_unsupported() -> str | None:
    """None when CPU peak memory can be measured here, else why not (the row says so)."""
    if _libc() is None:
        return ("CPU peak memory is read from glibc's mallinfo2 (glibc >= 2.33), which this C library "
                "does not provide")
    return None


def _malloc_in_use() -> int:
    info = _libc().mallinfo2()
    return int(info.uordblks + info.hblkhd)  # bytes in use in the heap arenas + in mmapped blocks


def _sampled_peak(fn: Callable[[], object], min_s: float) -> int:
    """The most bytes malloc held while `fn` ran (called again until `min_s` passed), beyond
    what it held before: a second thread reads mallinfo2 in a loop, while torch's kernels run without the
    GIL. It watches the process, not the call: it sees buffers of compiled or hand-written kernels too, which
    no op-level hook does, and nothing in the variant has to cooperate."""
    base = _malloc_in_use()
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        high = base
        while not done.is_set():
            high = max(high, _malloc_in_use())
        peak[0] = high

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so the watcher samples between Python steps too
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline, calls = time.perf_counter() + min_s, 0
        while calls < 1 or time.perf_counter() < deadline:
            out = fn()
            peak[0] = max(peak[0], _malloc_in_use())  # the output, still alive
            del out
            calls += 1
    finally:
        done.set()
        watcher.join()
        sys.setswitchinterval(switch)
    return max(0, peak[0] - base)


def peak_memory(fn: Callable[[], object], device: torch.device, min_s: float = 0.05) -> int:
    """Bytes the call allocates beyond what existed before it (its inputs), at its peak.

    CUDA: torch.cuda.max_memory_allocated after a reset. CPU: glibc's bytes in use, sampled from a second
    thread while the call runs (repeated for `min_s`, so a short-lived temporary is caught): outputs, saved
    intermediates and kernel scratch all count. Call it outside the timed region.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    reason = cpu_memory_unsupported()
    if reason:
        raise RuntimeError(reason)
    return _sampled_peak(fn, min_s)


def keep_freed_memory() -> str:
    """Make glibc keep freed memory in the process instead of handing big blocks back to the OS.

    By default glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps them
    on free, so every large output page-faults on first touch: a 64 MB softmax output costs ~4x its
    kernel time in page faults on this machine. CUDA's caching allocator never pays that, and neither does
    a training loop with a caching CPU allocator (jemalloc, tcmalloc), so the sweep measures kernels, not
    the OS, by default. Returns a description of the allocator setting for run.json.
    """
    libc = _libc()
    if libc is None:
        return "system allocator (not glibc: left as is)"
    m_trim_threshold, m_mmap_max = -1, -4  # from malloc.h
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "glibc, freed memory kept (mmap off, trim off)" if ok else "glibc defaults (mallopt refused)"


def release_kept_memory() -> None:
    """Give the freed memory glibc keeps (keep_freed_memory) back to the OS: before a unit that would not fit
    otherwise, so what earlier units freed never counts against the next one."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
