"""Pieces every study shares: the common options, choosing variants, opening the run folder, and turning
a failed measurement into a status (`oom`, `error`) instead of a crash."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any

import torch

import softmax_impls
from bench import UserError
from bench.devices import parse_device
from bench.presets import as_dict
from bench.results import RESULTS_DIR, Run
from softmax_impls import Variant


def add_common_arguments(parser: argparse.ArgumentParser, device_default: str = "cpu") -> None:
    """--variant, --device, --quick, --resume, --results-dir: the same meaning in every study."""
    parser.add_argument("--variant", action="append", metavar="NAME",
                        help="a registered variant (repeatable); default: every registered variant")
    parser.add_argument("--device", default=device_default, help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="the short preset")
    parser.add_argument("--resume", metavar="RUN",
                        help="complete this run folder: skip what it holds, append the rest")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="where new run folders are created (default: %(default)s)")


def select_variants(requested: list[str] | None) -> list[Variant]:
    """The variants named (in order, each once), or every registered one; unknown names are a UserError."""
    if not requested:
        for plugin in softmax_impls.broken().values():
            print(f"softmax-bench: plugin {plugin.name!r} ({plugin.target}) failed to import and is left out: "
                  f"{plugin.error}", file=sys.stderr)
        return softmax_impls.all_variants()
    chosen: list[Variant] = []
    for name in dict.fromkeys(requested):
        try:
            chosen.append(softmax_impls.get(name))
        except softmax_impls.UnknownVariantError as exc:
            raise UserError(str(exc)) from None
    return chosen


def open_run(args: argparse.Namespace, presets: Any = None) -> Run:
    """The run folder named by --resume, or a new one under --results-dir; records this command in it."""
    preset_dict = as_dict(presets) if presets is not None else {}
    if getattr(args, "resume", None):
        run = Run.open(args.resume)
        run.record_command(sys.argv, preset_dict)
        return run
    return Run.create(args.results_dir, sys.argv, preset_dict)


def device_from(args: argparse.Namespace) -> torch.device:
    return parse_device(args.device)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, MemoryError):
        return True
    # CPU allocation failures read "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(status, message) for a measurement that raised: `oom` for out-of-memory, `error` otherwise.

    Frees what it can after an OOM so the sweep can go on at the next shape.
    """
    message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
    if is_oom(exc):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "oom", message
    return "error", message
