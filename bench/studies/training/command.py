"""softmax-bench train: its options, its run and the table it prints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence

from bench import UserError, progress
from bench.fmt import fixed
from bench.measure.host import parse_dtype
from bench.studies.common import (
    add_common_arguments,
    chosen_variants,
    device_from,
    open_run,
    pick,
    timeout_from,
)
from bench.studies.training.model import QUICK_EPOCHS, TrainResult, effective_regime
from bench.studies.training.presets import REGIMES
from bench.studies.training.sweep import train_into


def format_table(results: Sequence[TrainResult]) -> str:
    """The comparison table: one line per (variant, regime, dtype)."""
    header = ("variant", "regime", "dtype", "test acc", "train loss", "diverged", "seconds", "status")
    lines = [header]
    for r in results:
        lines.append((r.variant, r.regime, r.dtype, fixed(r.test_acc), fixed(r.train_loss),
                      str(r.diverged_step) if r.diverged_step is not None else "-", fixed(r.seconds, ".2f"),
                      r.status + (" (resumed)" if r.resumed else "") + (f": {r.message}" if r.status != "ok"
                                                                       else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)


# --- the command ------------------------------------------------------------------------------------

def add_arguments_train(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--regime", action="append", metavar="NAME",
                        help=f"training regime (repeatable, or 'all'): {', '.join(REGIMES)}; default standard")
    parser.add_argument("--dtype", help="train in this dtype instead of the regime's (float32 for all but "
                                        "low-precision, which trains in float16 and bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds W and the shuffles (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help=f"epochs (default: the regime's 10; {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--lr", type=float, help="learning rate for every regime (default: the regime's)")
    parser.add_argument("--batch-size", type=int, help="minibatch size (default: the regime's 256)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per run on stdout (the table goes to stderr)")


def _regime_names(requested: list[str] | None) -> list[str]:
    if not requested:
        return ["standard"]
    names: list[str] = []
    for name in requested:
        for part in name.split(","):
            part = part.strip()
            names.extend(REGIMES if part == "all" else [pick("regime", REGIMES, part).name])
    return list(dict.fromkeys(names))


def run_train(args: argparse.Namespace) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}.")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive finite number, not {args.lr}.")
    regimes = _regime_names(args.regime)
    device = device_from(args)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    variants = chosen_variants(args)
    timeout = timeout_from(args)
    from bench.studies.training import data as data_module

    ds = data_module.load()  # before the run folder: missing data should not leave an empty run behind
    plans = {name: dataclasses.asdict(effective_regime(REGIMES[name], args.epochs, args.quick, args.lr,
                                                       args.batch_size)) for name in regimes}
    run = open_run(args, {"training": {"regimes": plans, "seed": args.seed, "device": str(device),
                                       "dtype": args.dtype}})
    progress.log(f"softmax-bench train: writing to {run.path}")
    results = train_into(run, variants, regimes, device, seed=args.seed, epochs=args.epochs, quick=args.quick,
                         dtype=dtype, lr=args.lr, batch_size=args.batch_size, dataset=ds, timeout=timeout)
    table = format_table(results)
    if args.json:
        print(table, file=sys.stderr)
        for r in results:
            print(json.dumps(r.to_json()))
    else:
        print(table)
        first = next((r for r in results if r.status == "ok" and r.predictions), None)
        if first is not None:
            print(f"\npredictions of {first.variant} ({first.regime}, {first.dtype}) on the first test images "
                  "(true -> predicted):")
            print(", ".join(f"{p['label_name']} -> {p['predicted_name']}" for p in first.predictions[:8]))
        print(f"\nrows in {run.path}")
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


# The Study protocol (bench.studies.Study): what the command line and `softmax-bench all` read.
name = "train"
tables = ("training", "predictions")
presets = REGIMES
add_arguments = add_arguments_train
run = run_train
