"""bench.measure.timer: the statistics against hand-computed values, the CPU timer against a known busy-wait,
peak memory against what the ops must allocate. CUDA tests run only where a GPU is present.

    .venv/bin/pytest -q tests/test_timing.py
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import softmax_impls
from bench.measure.memory import cpu_memory_unsupported, peak_memory
from bench.measure.timer import (
    TimerBudget,
    l2_cache_bytes,
    quantile,
    summarize,
    time_cpu,
    time_cpu_interleaved,
    time_cuda,
    timer_overhead,
)

CPU = torch.device("cpu")
def needs_cuda(test):  # noqa: ANN001, ANN201 - a decorator: the `cuda` marker (pytest -m cuda) and the skip
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


# --- statistics: exact values worked out by hand ---------------------------------------------------

def test_quantile_odd_sample_by_hand():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    # h = (n-1) q = 4q: q=0.2 -> h=0.8 -> 1 + 0.8*(2-1) = 1.8; q=0.8 -> h=3.2 -> 4 + 0.2 = 4.2
    assert quantile(xs, 0.5) == 3.0
    assert quantile(xs, 0.2) == pytest.approx(1.8, abs=1e-15)
    assert quantile(xs, 0.8) == pytest.approx(4.2, abs=1e-15)
    assert quantile(xs, 0.0) == 1.0 and quantile(xs, 1.0) == 5.0


def test_summarize_even_sample_by_hand():
    s = summarize([4.0, 1.0, 3.0, 2.0], spread_limit=0.5)  # unsorted on purpose
    # sorted 1 2 3 4; h = 3q: median h=1.5 -> 2.5; p20 h=0.6 -> 1.6; p80 h=2.4 -> 3.4
    # q25 h=0.75 -> 1.75; q75 h=2.25 -> 3.25; iqr 1.5; mean 2.5; var = (2.25+.25+.25+2.25)/3 = 5/3
    assert (s.n, s.median, s.min, s.max) == (4, 2.5, 1.0, 4.0)
    assert s.p20 == pytest.approx(1.6, abs=1e-15) and s.p80 == pytest.approx(3.4, abs=1e-15)
    assert s.q25 == 1.75 and s.q75 == 3.25 and s.iqr == 1.5
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    assert s.cv == pytest.approx(math.sqrt(5 / 3) / 2.5, rel=1e-15)
    assert s.rel_spread == pytest.approx(0.6, rel=1e-15)  # 1.5 / 2.5
    assert s.unstable  # 0.6 > 0.5


def test_quantiles_match_numpy_default():
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=37)
    s = summarize(xs)
    for q, got in ((0.2, s.p20), (0.25, s.q25), (0.5, s.median), (0.75, s.q75), (0.8, s.p80)):
        assert got == pytest.approx(np.quantile(xs, q), rel=1e-12)


def test_spread_flag_boundary_and_tight_sample():
    tight = summarize([10.0, 10.0, 10.0, 10.5, 10.0], spread_limit=0.1)
    assert tight.iqr == 0.0 and not tight.unstable
    # 1 2 3 4 5: iqr = 4 - 2 = 2, median 3 -> rel 2/3; flagged at limit 0.5, not at exactly 2/3
    assert summarize([1, 2, 3, 4, 5], spread_limit=0.5).unstable
    assert not summarize([1, 2, 3, 4, 5], spread_limit=2 / 3).unstable


def test_one_sample_and_no_sample():
    s = summarize([0.25])
    assert (s.median, s.p20, s.p80, s.iqr, s.std, s.cv) == (0.25, 0.25, 0.25, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


# --- the CPU timer ---------------------------------------------------------------------------------

def _busy_wait(seconds: float):
    def spin() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return spin


@pytest.mark.parametrize("target", [2e-3, 50e-6])
def test_cpu_timer_against_busy_wait(target):
    # A busy-wait never ends early, so no sample may be below the target. Being descheduled by the other
    # jobs on this shared 2-core machine only adds time, to up to half the samples when it is busy, so the
    # upper bound is checked on p20, which those samples do not reach.
    m = time_cpu(_busy_wait(target), TimerBudget(warmup=2, min_reps=10, budget_s=0.1))
    assert m.stats.min >= target * 0.999, m.stats
    assert m.stats.p20 <= target * 1.25, m.stats
    assert m.threads == torch.get_num_threads()
    assert m.timer == "perf_counter"
    if target < TimerBudget().min_sample_s:
        assert m.inner > 1  # short calls are batched so perf_counter's cost does not dominate


def test_first_call_is_timed_alone_and_warmup_runs():
    calls = []

    def fn() -> None:
        if not calls:
            time.sleep(0.05)  # a "compilation" on the first call
        calls.append(1)

    budget = TimerBudget(warmup=3, warmup_s=10.0, min_reps=4, max_reps=4, min_sample_s=0.0)
    m = time_cpu(fn, budget)
    assert m.first_call_s >= 0.05
    assert m.stats.median < 0.01  # the compile never reaches the samples
    # the first call, the warm-up, one settling round (no page faults here), the samples
    assert len(calls) == 1 + 3 + 1 + 4 * m.inner and m.stats.n == 4


def test_interleaved_timer_samples_in_turns_and_times_each_like_alone():
    order: list[str] = []

    def tagged(name: str, seconds: float):
        spin = _busy_wait(seconds)

        def fn() -> None:
            order.append(name)
            spin()
        return fn

    budget = TimerBudget(warmup=2, warmup_s=10.0, min_reps=6, max_reps=6, min_sample_s=0.0)
    slow, fast = time_cpu_interleaved([tagged("slow", 2e-3), tagged("fast", 0.5e-3)], budget)
    # first calls, then each one's warm-up, one settling round in turns, then strict turns: slow, fast, ...
    assert order[:2] == ["slow", "fast"] and order[2:4] == ["slow"] * 2 and order[4:6] == ["fast"] * 2
    assert order[6:8] == ["slow", "fast"]
    assert order[8:] == ["slow", "fast"] * 6 and slow.stats.n == fast.stats.n == 6
    for m, target in ((slow, 2e-3), (fast, 0.5e-3)):  # busy-waits: never below the target, p20 near it
        assert m.stats.min >= target * 0.999 and m.stats.p20 <= target * 1.25, m.stats
        assert m.timer == "perf_counter, interleaved" and m.first_call_s >= target


def test_harness_overhead_is_small():
    batched = timer_overhead(CPU, TimerBudget(budget_s=0.05))
    single = timer_overhead(CPU, TimerBudget(budget_s=0.05, min_sample_s=0.0))  # one call per sample
    assert batched.median < 20e-6 and single.median < 20e-6
    assert batched.median <= single.median * 1.5  # batching short calls never makes the overhead worse


# --- peak memory -----------------------------------------------------------------------------------

@pytest.mark.skipif(cpu_memory_unsupported() is not None, reason=str(cpu_memory_unsupported()))
@pytest.mark.parametrize("name, copies", [("torch", 1), ("naive", 2), ("max_subtracted", 3)])
def test_cpu_peak_memory_counts_outputs_and_temporaries(name, copies):
    # torch.softmax allocates only y; naive keeps exp(x) while dividing (2 live buffers); max_subtracted
    # keeps x - max and its exp while dividing (3). The row sums are M floats: negligible.
    x = torch.randn(512, 4096)
    variant = softmax_impls.get(name)
    peak = peak_memory(lambda: variant.softmax(x), CPU)
    assert peak / (x.numel() * 4) == pytest.approx(copies, abs=0.05)


# --- CUDA ------------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_timer_events_graph_and_flush():
    dev = torch.device("cuda")
    x = torch.randn(4096, 4096, device=dev)
    y = torch.empty_like(x)
    budget = TimerBudget(warmup=3, min_reps=10, budget_s=0.05)
    plain = time_cuda(lambda: y.copy_(x), dev, budget)
    graph = time_cuda(lambda: y.copy_(x), dev, budget, graph=True)
    assert plain.timer == "cuda_events" and graph.timer == "cuda_graph" and plain.l2_flush
    assert plain.stats.n >= 10 and 0 < plain.stats.median < 0.1
    # a 128 MB copy moves 2 x 64 MB: well under 10 TB/s and above 50 GB/s on any GPU this targets
    gbps = 2 * x.numel() * 4 / plain.stats.median / 1e9
    assert 50 < gbps < 10_000
    assert graph.stats.median == pytest.approx(plain.stats.median, rel=0.5)
    assert l2_cache_bytes(dev) > 1 << 20


@needs_cuda
def test_cuda_timer_against_known_sleep():
    dev = torch.device("cuda")
    probe = time_cuda(lambda: torch.cuda._sleep(1_000_000), dev, TimerBudget(min_reps=5, budget_s=0.05),
                      flush_l2=False)
    double = time_cuda(lambda: torch.cuda._sleep(2_000_000), dev, TimerBudget(min_reps=5, budget_s=0.05),
                       flush_l2=False)
    assert double.stats.median / probe.stats.median == pytest.approx(2.0, rel=0.1)


@needs_cuda
def test_cuda_peak_memory_beyond_inputs():
    dev = torch.device("cuda")
    x = torch.randn(1024, 4096, device=dev)
    peak = peak_memory(lambda: torch.softmax(x, -1), dev)
    assert peak / (x.numel() * 4) == pytest.approx(1.0, abs=0.05)


def test_the_timer_settles_until_a_round_of_calls_stops_page_faulting():
    # glibc can serve a big output from fresh, page-faulting memory for a few calls before it reuses a freed
    # block; those calls time the OS, not the kernel, so sampling starts only once a round stops faulting
    import mmap

    from bench.measure.timer import SETTLE_ROUNDS, _minor_faults, _settle

    if _minor_faults() is None:
        pytest.skip("no page-fault counter (resource.getrusage) on this platform")
    calls = []

    def faulting_three_times() -> None:
        calls.append(1)
        if len(calls) <= 3:
            buf = mmap.mmap(-1, 8 << 20)  # fresh pages: 2048 minor faults once touched
            for offset in range(0, 8 << 20, 4096):
                buf[offset] = 1
            buf.close()

    assert _settle([faulting_three_times]) == 4 and len(calls) == 4

    def faulting_forever() -> None:
        buf = mmap.mmap(-1, 4 << 20)
        for offset in range(0, 4 << 20, 4096):
            buf[offset] = 1
        buf.close()

    assert _settle([faulting_forever]) == SETTLE_ROUNDS  # bounded: a call that always faults is timed anyway
