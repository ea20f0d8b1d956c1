"""softmax-bench check: one variant against its stability contract (softmax_impls.contract), for CI."""


from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from bench.measure.host import dtype_name, torch_threads
from bench.progress import each
from bench.studies.common import (
    STABILITY_TIMEOUT_S,
    device_from,
    pick,
    select_variants,
    timeout_from,
)
from bench.studies.stability.families import FAMILIES
from bench.studies.stability.judge import measure, ops_of
from bench.studies.stability.presets import STABILITY_PRESETS, StabilityPreset
from bench.studies.stability.reference import reference
from bench.studies.stability.sweep import Case, cases, make_batch, study_dtypes
from softmax_impls import Variant

# -- contracts --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckLine:
    variant: str
    family: str
    dtype: str
    expected: str  # pass, fail
    measured: str  # pass, fail, skipped
    detail: str = ""  # the first failing case, or why a contract entry is invalid

    @property
    def ok(self) -> bool:
        return self.measured == "skipped" or self.expected == self.measured


def contract_problems(variant: Variant) -> list[CheckLine]:
    """Contract entries naming a family or dtype that does not exist (a typo would silently weaken it)."""
    bad = []
    for fam, dts in variant.contract.expected_failures.items():
        if fam not in FAMILIES:
            bad.append(CheckLine(variant.name, fam, "-", "fail", "unknown",
                                 f"the contract names family {fam!r}; families are {', '.join(FAMILIES)}"))
            continue
        for dt in dts:
            if dt not in FAMILIES[fam].dtypes:
                bad.append(CheckLine(variant.name, fam, dt, "fail", "unknown",
                                     f"{fam} is not measured in {dt} (only {', '.join(FAMILIES[fam].dtypes)})"))
    return bad


def check_variants(variants: list[Variant], device: torch.device, preset: StabilityPreset,
                   dtypes: Iterable[str] | None = None, progress: bool = True,
                   timeout: float | None = None) -> dict[str, list[CheckLine]]:
    """Every variant against its contract, case by case (each reference computed once for all variants).

    A (family, dtype) is measured `fail` when any of its cases and ops fails; the contract expects `fail`
    exactly where it lists the family for that dtype and `pass` everywhere else.
    """
    chosen = study_dtypes(device, dtypes)
    failures: dict[tuple[str, str, str], str] = {}
    runnable: dict[str, list[torch.dtype]] = {}
    for v in variants:
        runnable[v.name] = [d for d in chosen if v.skip_reason(device, d) is None]
    all_cases = cases(preset, chosen)
    iterator: Iterator[Case] = (each(all_cases, "check", describe=Case.describe, log_lines=10) if progress
                                else iter(all_cases))
    with torch_threads(1):
        for case in iterator:
            todo = [v for v in variants if case.dtype in runnable[v.name]]
            if not todo:
                continue
            batch = make_batch(case, preset)
            ref = reference(batch.x, batch.target)
            for v in todo:
                key = (v.name, case.family.name, dtype_name(case.dtype))
                for op in ops_of(v):
                    r = measure(v, op, batch, ref, case.dtype, device,
                                STABILITY_TIMEOUT_S if timeout is None else timeout)
                    if not r.passed and key not in failures:
                        failures[key] = f"{op} param={case.param:g} n={case.n}: {r.message or r.status}"
    out: dict[str, list[CheckLine]] = {}
    for v in variants:
        lines = contract_problems(v)
        for fam in (preset.families or FAMILIES):
            for dt in chosen:
                name = dtype_name(dt)
                if name not in FAMILIES[fam].dtypes:
                    continue
                expected = "fail" if v.contract.must_fail(fam, name) else "pass"
                if dt not in runnable[v.name]:
                    lines.append(CheckLine(v.name, fam, name, expected, "skipped", v.skip_reason(device, dt) or ""))
                    continue
                detail = failures.get((v.name, fam, name), "")
                lines.append(CheckLine(v.name, fam, name, expected, "fail" if detail else "pass", detail))
        out[v.name] = lines
    return out


def format_check(lines: list[CheckLine]) -> str:
    """A family x dtype grid: pass / fail (expected) / BREACH, then the detail of each breach."""
    dts = list(dict.fromkeys(ln.dtype for ln in lines if ln.dtype != "-"))
    fams = list(dict.fromkeys(ln.family for ln in lines))
    cell = {(ln.family, ln.dtype): ln for ln in lines}
    out = [f"{'family':18s} " + " ".join(f"{d:>14s}" for d in dts)]
    for fam in fams:
        cells = []
        for d in dts:
            ln = cell.get((fam, d))
            if ln is None:
                text = "-"
            elif ln.measured == "skipped":
                text = "skipped"
            elif ln.ok:
                text = "pass" if ln.measured == "pass" else "fail (expected)"
            else:
                text = f"BREACH:{ln.measured}"
            cells.append(f"{text:>14s}")
        out.append(f"{fam:18s} " + " ".join(cells))
    breaches = [ln for ln in lines if not ln.ok]
    for ln in breaches:
        why = ln.detail or "every case passed, but the contract says it must fail here"
        out.append(f"BREACH {ln.family} {ln.dtype}: expected {ln.expected}, measured {ln.measured}: {why}")
    out.append(f"{len(lines) - len(breaches)}/{len(lines)} contract entries hold" +
               ("" if not breaches else f"; {len(breaches)} breached"))
    return "\n".join(out)


def add_arguments_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", metavar="VARIANT", help="a registered variant (softmax-bench list)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="check only these dtypes (repeatable); default: all the device supports")
    parser.add_argument("--preset", choices=list(STABILITY_PRESETS), default="check",
                        help="stability preset (default: %(default)s)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"time limit per call of the variant; past it the case fails as a timeout "
                             f"(default: {STABILITY_TIMEOUT_S:g}; 0: none)")


def run_check(args: argparse.Namespace) -> int:
    variant = select_variants([args.variant])[0]
    device = device_from(args)
    preset = pick("stability preset", STABILITY_PRESETS, args.preset)
    lines = check_variants([variant], device, preset, args.dtype, timeout=timeout_from(args))[variant.name]
    print(f"{variant.name} on {device} against its contract (preset {preset.name!r}, tolerance "
          f"{variant.contract.ordinary_tolerance_ulps:g} u):")
    print(format_check(lines))
    return 0 if all(ln.ok for ln in lines) else 1
