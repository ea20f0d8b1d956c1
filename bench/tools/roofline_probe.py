"""Why a CPU softmax sits below the copy roofline: time the pieces of one pass side by side.

    python -m bench.tools.roofline_probe                      # 4096x4096 float32, torch's threads
    python -m bench.tools.roofline_probe --shape 1024x131072 --threads 1
    python -m bench.tools.roofline_probe --shape 1024x4096 --dtype bfloat16

Every line is bytes moved (read x + write y, 2·M·N·e) over the median time, for one buffer of the given
shape and dtype, timed by bench.measure.timer in one process, one call of each piece in turn (so all see the same
memory bandwidth):

    copy_        dst.copy_(x)                      PyTorch's copy (stores read each line first)
    stream_copy  the native kernels' streaming copy  non-temporal stores; the throughput study's CPU roofline is
                                                   the better of the two copies
    exp          torch.exp(x)                      one read, one write, one exp per element
    exp2         torch.exp2(x)                     the same with torch's cheaper exp2 kernel
    softmax      torch.softmax(x, -1)              read x (twice, from cache), write y
    <variant>    each registered variant's softmax, for comparison (default: naive, native)

If torch.exp alone moves far less than copy_, no softmax built on it can reach the roofline: the pass is
bound by the exp's arithmetic, not by memory. A kernel with a cheaper exp (the `native` variant's
polynomial) on the same buffer shows how far memory allows.

Then the compute side, on one core: the `native` kernels' own vector exp (the float32 polynomial and the
half-precision one) on a 256 KiB buffer that stays in L2, in elements per second, beside the element rate of
the roofline copy (elements per second = GB/s / 2e, per thread). A softmax computes at least one exp per
element (plus its max, sum, scaling and conversions), so where one core's exp rate times the threads is
below a fraction f of the copy's element rate, no such softmax reaches f of the roofline: it is bound by
the core's vector issue rate, not by memory (half-precision rows halve the bytes of an element, not its
arithmetic).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

import softmax_impls
from bench import UserError
from bench.measure.host import dtype_name, parse_dtype
from bench.measure.memory import keep_freed_memory
from bench.measure.roofline import streaming_copy
from bench.measure.timer import TimerBudget, time_cpu, time_cpu_interleaved
from bench.studies.throughput.command import parse_shape

BUDGET = TimerBudget(warmup=6, warmup_s=2.0, min_reps=5, budget_s=0.5)  # the big-shape warm-up of the sweep
EXP_ELEMENTS = 65536  # the exp-rate lines: 256 KiB in, 256 KiB out, in L2 (the ctypes call costs ~1 us)


def probe(rows: int, cols: int, variants: list[str], dtype: torch.dtype = torch.float32) -> list[tuple[str, float]]:
    """(name, GB/s) for copy_, the streaming copy (where the native kernels build), exp, exp2, torch.softmax
    and each named variant's softmax on one buffer."""
    cpu = torch.device("cpu")
    x = torch.randn(rows, cols).to(dtype)
    dst = torch.empty_like(x)
    calls: dict[str, Callable[[], object]] = {"copy_": lambda: dst.copy_(x)}
    stream = streaming_copy()
    if not isinstance(stream, str):
        calls["stream_copy"] = lambda: stream(dst, x)
    calls |= {"exp": lambda: torch.exp(x), "exp2": lambda: torch.exp2(x), "softmax": lambda: torch.softmax(x, -1)}
    for name in variants:
        variant = softmax_impls.get(name)
        if variant.skip_reason(cpu, x.dtype) is None:
            calls[name] = lambda v=variant: v.softmax(x, -1)
    nbytes = 2 * x.numel() * x.element_size()
    # sampled in turns, so every piece sees the same memory bandwidth (it drifts 2x over minutes here)
    measured = time_cpu_interleaved(list(calls.values()), BUDGET)
    return [(name, nbytes / m.stats.median / 1e9) for name, m in zip(calls, measured, strict=True)]


def exp_rates() -> list[tuple[str, float]]:
    """(name, G elements/s) of the native kernels' vector exp on one core: the float32 polynomial and
    the half-precision one, on a buffer in L2. Empty where the kernels do not build."""
    from softmax_impls import native

    if native.unavailable(torch.device("cpu")):
        return []
    lib = native.library()
    x = -torch.rand(EXP_ELEMENTS) * 80  # the hot path's range: x - max <= 0
    y = torch.empty_like(x)
    timer = TimerBudget(warmup=20, min_reps=20, budget_s=0.3)
    rates = []
    for name, code in (("native exp, float32 polynomial", 0), ("native exp, half-precision polynomial", 1)):
        m = time_cpu(lambda c=code: lib.native_exp_nonpos(x.data_ptr(), y.data_ptr(), EXP_ELEMENTS, c), timer)
        rates.append((name, EXP_ELEMENTS / m.stats.median / 1e9))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.roofline_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x4096", help="ROWSxCOLS of the buffer (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--variant", action="append", help="variants to add (default: naive and native)")
    args = parser.parse_args(argv)
    try:
        rows, cols = parse_shape(args.shape)
        if args.threads is not None:
            if args.threads < 1:
                raise UserError(f"--threads {args.threads}: give a positive number of threads.")
            torch.set_num_threads(args.threads)
        dtype = parse_dtype(args.dtype)
        keep_freed_memory()  # as the throughput sweep does: big outputs must not page-fault on every call
        results = probe(rows, cols, args.variant or ["naive", "native"], dtype)
        rates = exp_rates()
    except (UserError, softmax_impls.UnknownVariantError) as exc:
        print(f"roofline_probe: {exc}", file=sys.stderr)
        return 2
    by_name = dict(results)
    copy = by_name["copy_"]
    best = max(copy, by_name.get("stream_copy", 0.0))
    threads = torch.get_num_threads()
    print(f"{rows}x{cols} {dtype_name(dtype)}, {threads} thread(s): GB/s as read x + write y, "
          f"% of copy_, and % of the better copy (the sweep's roofline)")
    for name, gbps in results:
        print(f"  {name:12s} {gbps:7.2f} GB/s  {gbps / copy:6.0%}  {gbps / best:6.0%}")
    if rates:
        per_elem = 2 * torch.finfo(dtype).bits // 8
        copy_rate = best / per_elem
        print(f"compute bound, one core in L2 (G elements/s; the roofline copy moves {copy_rate:.2f} G elements/s "
              f"on {threads} thread(s), {copy_rate / threads:.2f} per thread):")
        for name, rate in rates:
            print(f"  {name:40s} {rate:6.2f}  x{threads} threads = {rate * threads / copy_rate:5.0%} of the copy's "
                  f"element rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
