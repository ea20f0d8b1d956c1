"""Why torch's CPU softmax sits far below the copy roofline: time the pieces of one pass side by side.

    python -m bench.roofline_probe                      # 4096x4096 float32, torch's threads
    python -m bench.roofline_probe --shape 1024x131072 --threads 1

Every line is bytes moved (read x + write y, 2·M·N·4) over the median time, for one buffer of the given
shape, timed by bench.timing in one process, one call of each piece in turn (so all see the same memory
bandwidth):

    copy_        dst.copy_(x)                      PyTorch's copy (stores read each line first)
    stream_copy  the native kernels' streaming copy  non-temporal stores; bench.throughput's CPU roofline is
                                                   the better of the two copies
    exp          torch.exp(x)                      one read, one write, one exp per element
    exp2         torch.exp2(x)                     the same with torch's cheaper exp2 kernel
    softmax      torch.softmax(x, -1)              read x (twice, from cache), write y
    <variant>    each registered variant's softmax, for comparison (default: naive, native)

If torch.exp alone moves far less than copy_, no softmax built on it can reach the roofline: the pass is
bound by the exp's arithmetic, not by memory. A kernel with a cheaper exp (the `native` variant's
polynomial) on the same buffer shows how far memory allows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

import softmax_impls
from bench import UserError
from bench.presets import TimerBudget
from bench.throughput import parse_shape, streaming_copy
from bench.timing import keep_freed_memory, time_cpu_interleaved

BUDGET = TimerBudget(warmup=6, warmup_s=2.0, min_reps=5, budget_s=0.5)  # the big-shape warm-up of the sweep


def probe(rows: int, cols: int, variants: list[str]) -> list[tuple[str, float]]:
    """(name, GB/s) for copy_, the streaming copy (where the native kernels build), exp, exp2, torch.softmax
    and each named variant's softmax on one buffer."""
    cpu = torch.device("cpu")
    x = torch.randn(rows, cols)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roofline_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x4096", help="ROWSxCOLS of the float32 buffer (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--variant", action="append", help="variants to add (default: naive and native)")
    args = parser.parse_args(argv)
    try:
        rows, cols = parse_shape(args.shape)
        if args.threads is not None:
            if args.threads < 1:
                raise UserError(f"--threads {args.threads}: give a positive number of threads.")
            torch.set_num_threads(args.threads)
        keep_freed_memory()  # as the throughput sweep does: big outputs must not page-fault on every call
        results = probe(rows, cols, args.variant or ["naive", "native"])
    except (UserError, softmax_impls.UnknownVariantError) as exc:
        print(f"roofline_probe: {exc}", file=sys.stderr)
        return 2
    by_name = dict(results)
    copy = by_name["copy_"]
    best = max(copy, by_name.get("stream_copy", 0.0))
    print(f"{rows}x{cols} float32, {torch.get_num_threads()} thread(s): GB/s as read x + write y, "
          f"% of copy_, and % of the better copy (the sweep's roofline)")
    for name, gbps in results:
        print(f"  {name:12s} {gbps:7.2f} GB/s  {gbps / copy:6.0%}  {gbps / best:6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
