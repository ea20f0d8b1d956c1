"""The `native` kernels' two ISA paths side by side: AVX-512 and AVX2 + FMA + F16C against torch, per op.

    python -m bench.tools.native_paths                          # the issue's shapes, torch's threads (~2 min)
    python -m bench.tools.native_paths --shape 1024x4096 --dtype bfloat16 --threads 1

A CPU without AVX-512 runs the AVX2 path; this prints, on a CPU that has both, what such a CPU's users get
beside what this one gets, from the same seconds: at each point the three calls (torch, native on the
avx512 path, native on the avx2 path) are sampled in turns (bench.measure.timer.time_cpu_interleaved), so
a neighbour's load lands on all three alike. Each line: the median milliseconds of each, native's speed over
torch on each path, and the AVX2 path's speed as a fraction of the AVX-512 one's. Results are validated
first (the same rule the throughput study applies: a wrong result is reported, never timed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

import torch

import softmax_impls
from bench import UserError
from bench.measure.host import cpu_model, dtype_name, parse_dtype
from bench.measure.memory import keep_freed_memory
from bench.measure.timer import TimerBudget, time_cpu_interleaved
from bench.store.rows import THROUGHPUT_OPS
from bench.studies.throughput.command import parse_shape
from bench.studies.throughput.ops import OPS
from bench.studies.throughput.validate import check_output

BUDGET = TimerBudget(warmup=3, warmup_s=0.5, min_reps=5, budget_s=0.3)
# (shape, dtypes): issue 12's points, a mid shape, the chapter's and an LLM vocabulary
DEFAULT_POINTS: tuple[tuple[tuple[int, int], tuple[str, ...]], ...] = (
    ((256, 10), ("float32", "float64")),
    ((65536, 10), ("float32",)),
    ((1024, 4096), ("float32", "bfloat16", "float16")),
    ((4096, 4096), ("float32",)),
    ((524, 32000), ("bfloat16",)),
)
PATHS = ("avx512", "avx2")


def on_path(path: str, call: Callable[[], object]) -> Callable[[], object]:
    """`call`, with the native kernels switched to `path` first (a dictionary write: free beside a kernel)."""
    from softmax_impls import native

    def run() -> object:
        native.select_isa(path)
        return call()
    return run


def points(shapes: list[tuple[int, int]] | None, dtypes: list[str] | None) -> Iterator[tuple[int, int, str]]:
    if shapes is None:
        for (m, n), kinds in DEFAULT_POINTS:
            for dt in dtypes or kinds:
                yield m, n, dt
        return
    for m, n in shapes:
        for dt in dtypes or ["float32"]:
            yield m, n, dt


def compare_point(m: int, n: int, dtype: torch.dtype, op_name: str) -> str:
    """One printed line for one op at one point: torch, native/avx512, native/avx2."""
    from softmax_impls import native

    cpu = torch.device("cpu")
    op = OPS[op_name]
    inputs = op.make_inputs(m, n, dtype, cpu)
    base, nat = softmax_impls.get("torch"), softmax_impls.get("native")
    calls = [op.closure(base, inputs)]
    for path in PATHS:
        native.select_isa(path)
        out = op.closure(nat, inputs)()
        problem = check_output(op_name, out, inputs.x, inputs.target, inputs.dy,
                               nat.contract.ordinary_tolerance_ulps)
        if problem:
            return f"{op_name:16s} native on {path} gives a wrong result, not timed: {problem}"
        calls.append(on_path(path, op.closure(nat, inputs)))
    try:
        t_torch, t512, t2 = (r.stats.median for r in time_cpu_interleaved(calls, BUDGET))
    finally:
        native.select_isa(None)
    return (f"{op_name:16s} {t_torch * 1e3:9.3f} {t512 * 1e3:9.3f} {t_torch / t512:6.2f}x "
            f"{t2 * 1e3:9.3f} {t_torch / t2:6.2f}x {t512 / t2:7.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.native_paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="ROWSxCOLS (repeatable; default: the issue's points)")
    parser.add_argument("--dtype", action="append", help="float32, float64, bfloat16 or float16 (repeatable)")
    parser.add_argument("--op", action="append", choices=THROUGHPUT_OPS, help="ops to time (default: all four)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    from softmax_impls import native

    try:
        shapes = [parse_shape(s) for s in args.shape] if args.shape else None
        dtypes = [dtype_name(parse_dtype(d)) for d in args.dtype] if args.dtype else None
        if args.threads is not None:
            if args.threads < 1:
                raise UserError(f"--threads {args.threads}: give a positive number of threads.")
            torch.set_num_threads(args.threads)
        missing = [p for p in PATHS if p not in native.supported_isas()]
        if missing:
            raise UserError(f"this CPU cannot run the {', '.join(missing)} path(s) of the native kernels: only "
                            f"{', '.join(native.supported_isas()) or 'none'}; nothing to compare.")
        reason = native.unavailable(torch.device("cpu"))
        if reason:
            raise UserError(reason)
    except UserError as exc:
        print(f"native_paths: {exc}", file=sys.stderr)
        return 2
    keep_freed_memory()  # as the throughput sweep does: big outputs must not page-fault on every call
    cpu_name = cpu_model()
    print(f"native's ISA paths against torch on {cpu_name}, {torch.get_num_threads()} thread(s); "
          f"milliseconds (median), speed over torch, avx2 as a fraction of avx512")
    for m, n, dt in points(shapes, dtypes):
        print(f"{m}x{n} {dt}")
        print(f"  {'op':16s} {'torch':>9s} {'avx512':>9s} {'':7s} {'avx2':>9s} {'':7s} {'avx2/512':>7s}")
        for op_name in args.op or THROUGHPUT_OPS:
            print("  " + compare_point(m, n, parse_dtype(dt), op_name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
