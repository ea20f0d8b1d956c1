"""softmax-bench throughput: its options and its run (the sweep is bench.studies.throughput.sweep)."""

from __future__ import annotations

import argparse
import re
import sys

from bench import UserError
from bench.measure.host import DTYPES, dtype_name
from bench.store.rows import THROUGHPUT_OPS
from bench.studies.common import (
    add_common_arguments,
    as_dict,
    chosen_variants,
    device_from,
    open_run,
    pick,
    timeout_from,
)
from bench.studies.throughput.ops import OPS, TABLE
from bench.studies.throughput.presets import FULL, QUICK, THROUGHPUT_PRESETS
from bench.studies.throughput.sweep import throughput_into

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
                             "then page-faults; see bench.measure.memory.keep_freed_memory)")


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
        from bench.measure.host import parse_dtype

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



# The Study protocol (bench.studies.Study): what the command line and `softmax-bench all` read.
name = "throughput"
tables = ("throughput", "samples")
presets = THROUGHPUT_PRESETS
add_arguments = add_arguments_throughput
run = run_throughput
