"""softmax-bench stability: its options and its run."""

from __future__ import annotations

import argparse

from bench.progress import log
from bench.studies.common import (
    add_common_arguments,
    chosen_variants,
    device_from,
    open_run,
    pick,
    timeout_from,
)
from bench.studies.stability.families import FAMILIES
from bench.studies.stability.presets import STABILITY_PRESETS
from bench.studies.stability.sweep import _check_names, format_summary, stability_into, study_dtypes


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="float64, float32, float16 or bfloat16 (repeatable); default: all the device supports")
    parser.add_argument("--preset", choices=list(STABILITY_PRESETS), default=None,
                        help="stability preset (default: 'default', or 'quick' with --quick)")


def add_arguments_stability(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    _add_selection(parser)
    parser.add_argument("--family", action="append", metavar="NAME",
                        help=f"an input family (repeatable; default all): {', '.join(FAMILIES)}")


def run_stability(args: argparse.Namespace) -> int:
    preset = pick("stability preset", STABILITY_PRESETS, args.preset or ("quick" if args.quick else "default"))
    variants = chosen_variants(args)
    timeout = timeout_from(args)
    device = device_from(args)
    study_dtypes(device, args.dtype)  # reject a bad --dtype before a run folder is created
    _check_names(args.family, FAMILIES, "family")
    run = open_run(args, preset)
    log(f"stability: {len(variants)} variant(s) on {device}, preset {preset.name!r}, into {run.path}")
    lines = stability_into(run, variants, device, preset, args.dtype, args.family, timeout)
    print(format_summary(lines))
    print(f"rows: {run.csv_path('stability')} and {run.csv_path('thresholds')}")
    return 0




if __name__ == "__main__":  # python -m bench.studies.stability.command ... behaves like softmax-bench stability ...
    pass



# The Study protocol (bench.studies.Study): what the command line and `softmax-bench all` read.
name = "stability"
tables = ("stability", "thresholds")
presets = STABILITY_PRESETS
add_arguments = add_arguments_stability
run = run_stability
