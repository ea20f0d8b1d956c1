"""Pieces every study shares: the common options, choosing variants, opening the run folder, and turning
a failed measurement into a status (`oom`, `error`) instead of a crash."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, TypeVar

import torch

import softmax_impls
from bench import UserError
from bench.measure.host import parse_device
from bench.store.rows import BASELINE as BASELINE  # re-exported: a fact of the stored rows
from bench.store.run import RESULTS_DIR, Run
from softmax_impls import Variant

T = TypeVar("T")

# Per-unit time limit (seconds) by device type: far above any honest unit of the presets, so only a hung
# variant reaches it. `--timeout` overrides; 0 turns it off.
UNIT_TIMEOUT_S: dict[str, float] = {"cpu": 300.0, "cuda": 120.0}
# The stability study's unit is one call of a variant on a small batch (milliseconds; mpmath is not timed).
STABILITY_TIMEOUT_S = 120.0
# One training run (a variant, regime and dtype: the chapter's 10 epochs, far below this).
TRAIN_TIMEOUT_S = 1800.0
# Share of RAM (CPU) or GPU memory the sweep may hold at once: an allocation past it fails as an `oom` row
# instead of waking the OOM killer (which would end the whole run).
MEMORY_FRACTION = 0.8

def pick(kind: str, table: Mapping[str, T], name: str | None, default: str | None = None) -> T:
    """table[name] (table[default] when name is None, i.e. not given), or a UserError naming the known ones.

    An empty or blank name is refused, never read as "not given": `--preset ""` (an unset shell variable)
    must not silently run the default preset.
    """
    known = ", ".join(table)
    if name is None and default is not None:
        name = default
    if name is None or not name.strip():
        raise UserError(f"an empty {kind} name was given; give one of the known {kind}s: {known}.")
    if name not in table:
        raise UserError(f"unknown {kind} {name!r}; known {kind}s: {known}.")
    return table[name]


def as_dict(preset: Any) -> dict[str, Any]:
    return asdict(preset) if is_dataclass(preset) else dict(preset)


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
    parser.add_argument("--exclude", action="append", metavar="NAME", default=[],
                        help="leave this variant out (repeatable)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="time limit per measured unit; past it the unit is a `timeout` row and the study "
                             "goes on (default: 300 on cpu, 120 on cuda; 0: none)")


def chosen_variants(args: argparse.Namespace) -> list[Variant]:
    """--variant (or every registered variant) without --exclude; an unknown name either way is a UserError."""
    chosen = select_variants(args.variant)
    excluded = list(dict.fromkeys(getattr(args, "exclude", None) or []))
    known = set(softmax_impls.names()) | set(softmax_impls.broken()) | set(softmax_impls.conflicts())
    unknown = [name for name in excluded if name not in known]
    if unknown:
        raise UserError(f"--exclude {', '.join(unknown)}: not a registered variant; registered variants: "
                        f"{', '.join(softmax_impls.names())}.")
    kept = [v for v in chosen if v.name not in excluded]
    if not kept:
        raise UserError("--exclude leaves no variant to measure; name fewer, or add --variant.")
    return kept


def timeout_from(args: argparse.Namespace) -> float | None:
    """--timeout in seconds (None: the study's default per device); a negative value is a UserError."""
    value = getattr(args, "timeout", None)
    if value is not None and not value >= 0:
        raise UserError(f"--timeout {value:g}: give a number of seconds (0 turns the limit off).")
    return value


def select_variants(requested: list[str] | None) -> list[Variant]:
    """The variants named (in order, each once), or every registered one; unknown names are a UserError."""
    for conflict in softmax_impls.conflicts().values():  # a name two packages claim: never silently one
        # (a conflicting name asked for by --variant is refused below, with the same explanation)
        if not requested or (conflict.name in requested and conflict.kept is not None):
            print(f"softmax-bench: {conflict.describe()}", file=sys.stderr)
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
        return Run.resume(args.resume, sys.argv, preset_dict)  # locked: a second writer is refused
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
