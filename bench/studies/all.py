"""softmax-bench all: the whole study into ONE run folder, then its report.

    softmax-bench all                         # training (every regime), throughput, stability
    softmax-bench all --quick                 # the short presets (make bench QUICK=1)
    softmax-bench all --device cuda --variant torch --variant logsumexp
    softmax-bench all --resume results/<run>  # finish an interrupted study: nothing measured twice
    softmax-bench all --skip throughput       # leave a study out

Steps run in order: training of every selected variant in every regime (bench.studies.training.sweep),
throughput (bench.studies.throughput.sweep), stability and thresholds (bench.studies.stability.sweep).
A step that fails, or whose module is not installed, is reported and the others still run; the report is
rendered from whatever the run folder holds (reports/<run name>/ unless --out) and says what is missing.
Exit status 0 when every step succeeded, 1 when one failed (the report is still written).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import UserError
from bench.measure.sandbox import contained
from bench.progress import log
from bench.store.run import Run
from bench.studies.common import add_common_arguments, chosen_variants, device_from, timeout_from

STEPS = ("train", "throughput", "stability")


@dataclass(frozen=True)
class Report:
    """The report's two entry points, handed in by bench/cli.py (a study never imports the report):
    `check_out(folder, force)` refuses a folder of the user's own files before anything is measured,
    `render(runs, out, force=...)` writes the report and returns its index.md."""

    check_out: Callable[[str, bool], object]
    render: Callable[..., Path]


def add_arguments_all(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--skip", action="append", choices=STEPS, default=[], help="leave this study out (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: reports/<run name>)")
    parser.add_argument("--force", action="store_true",
                        help="write the report into --out even if that folder holds files that are not a report")


def _train(run: Run, variants: list, device: torch.device, quick: bool, timeout: float | None) -> None:
    from bench.studies.throughput.presets import QUICK
    from bench.studies.training.command import format_table
    from bench.studies.training.presets import REGIMES
    from bench.studies.training.sweep import train_into

    regimes = (QUICK[device.type]["regimes"] if quick else None) or list(REGIMES)
    results = train_into(run, variants, list(regimes), device, seed=0, quick=quick, timeout=timeout)
    print(format_table(results))


def _throughput(run: Run, variants: list, device: torch.device, quick: bool, timeout: float | None) -> None:
    from bench.studies.throughput.presets import FULL, LLM, QUICK, THROUGHPUT_PRESETS
    from bench.studies.throughput.sweep import throughput_into

    name = QUICK[device.type]["throughput"] if quick else FULL[device.type]
    throughput_into(run, variants, device, THROUGHPUT_PRESETS[name], timeout=timeout)
    # then the vocabularies of today's models, in the dtypes they train in
    throughput_into(run, variants, device, THROUGHPUT_PRESETS[LLM[device.type][quick]], timeout=timeout)


def _stability(run: Run, variants: list, device: torch.device, quick: bool, timeout: float | None) -> None:
    from bench.studies.stability.presets import LLM_LENGTHS_DTYPES, STABILITY_PRESETS
    from bench.studies.stability.sweep import format_summary, stability_into
    from bench.studies.throughput.presets import QUICK

    dtypes = QUICK[device.type]["stability_dtypes"] if quick else None
    lines = stability_into(run, variants, device, STABILITY_PRESETS["quick" if quick else "default"],
                           dtypes=dtypes, timeout=timeout)
    print(format_summary(lines))
    llm = "llm-quick" if quick else "llm"  # every family at the vocabularies of today's models
    lines = stability_into(run, variants, device, STABILITY_PRESETS[llm], dtypes=LLM_LENGTHS_DTYPES[llm],
                           timeout=timeout)
    print(format_summary(lines))


STEP_FUNCTIONS: dict[str, Callable[[Run, list, torch.device, bool, float | None], None]] = {
    "train": _train, "throughput": _throughput, "stability": _stability}


def _open(args: argparse.Namespace, device: torch.device, variants: list, timeout: float | None) -> Run:
    presets = {"all": {"quick": args.quick, "device": str(device), "variants": [v.name for v in variants],
                       "skip": args.skip, "excluded": args.exclude, "timeout": timeout}}
    if args.resume:
        return Run.resume(args.resume, sys.argv, presets)  # locked: a second writer is refused
    return Run.create(args.results_dir, sys.argv, presets)


def _step(step: str, run: Run, variants: list, device: torch.device, quick: bool, timeout: float | None) -> str:
    """Run one study; what became of it ("ok in N s", "missing: ...", "failed: ..."). Never raises for a
    study that fails (Ctrl-C excepted)."""
    start = time.perf_counter()
    try:
        STEP_FUNCTIONS[step](run, variants, device, quick, timeout)
        return f"ok in {time.perf_counter() - start:.0f} s"
    except ImportError as exc:  # a study not installed yet must not stop the others
        return f"missing: {exc}"
    except UserError as exc:
        return f"failed: {exc}"
    except BaseException as exc:  # a crash (even a SystemExit) in one study is reported, the others run
        if not contained(exc):
            raise
        traceback.print_exc(file=sys.stderr)
        return f"failed: {type(exc).__name__}: {exc}"


def run_all(args: argparse.Namespace, report: Report) -> int:
    device = device_from(args)
    variants = chosen_variants(args)
    if args.out:
        report.check_out(args.out, args.force)  # refuse a folder of the user's own files before measuring
    timeout = timeout_from(args)
    run = _open(args, device, variants, timeout)
    log(f"softmax-bench all: writing to {run.path}")
    outcome: dict[str, str] = {}
    steps = [s for s in STEPS if s not in args.skip]
    for i, step in enumerate(steps, 1):
        log(f"== [{i}/{len(steps)}] {step} ({'quick' if args.quick else 'full'}, {device}, "
            f"{len(variants)} variants)")
        outcome[step] = _step(step, run, variants, device, args.quick, timeout)
        log(f"== {step}: {outcome[step]}")
    index = report.render([run.path], Path(args.out) if args.out else None, force=args.force)
    print("\nsoftmax-bench all:")
    for step in STEPS:
        print(f"  {step:11s} {outcome.get(step, 'skipped (--skip)')}")
    print(f"  run folder  {run.path}")
    print(f"  report      {index} and {index.parent / 'index.html'}")
    failed = [s for s, o in outcome.items() if not o.startswith("ok")]
    if failed:
        print(f"  {len(failed)} step(s) did not finish: {', '.join(failed)}; finish with "
              f"`softmax-bench all --resume {run.path}`.", file=sys.stderr)
    return 1 if failed else 0
