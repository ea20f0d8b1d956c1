"""The stability sweep: every (dtype, family, param, n) case of a preset, every variant, into stability.csv;
then the thresholds; then the summary."""


from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from bench import UserError
from bench.measure.host import dtype_name, parse_dtype, supported_dtypes, torch_threads
from bench.progress import each
from bench.store.rows import StabilityRow, key_of
from bench.store.run import Run
from bench.studies.common import (
    STABILITY_TIMEOUT_S,
)
from bench.studies.stability.families import FAMILIES, Batch, Family, limits
from bench.studies.stability.judge import _UNITS, STABILITY_KEY, OpResult, measure, ops_of
from bench.studies.stability.presets import StabilityPreset
from bench.studies.stability.reference import reference
from bench.studies.stability.thresholds import thresholds_into
from softmax_impls import Variant

# -- the sweep over cases --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    family: Family
    param: float
    n: int

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)} {self.family.name} param={self.param:g} n={self.n}"


def cases(preset: StabilityPreset, dtypes: Iterable[torch.dtype], families: Iterable[str] | None = None
          ) -> list[Case]:
    """Every (dtype, family, param, n) the preset measures, in order."""
    chosen = list(families or preset.families or FAMILIES)
    out = []
    for dtype in dtypes:
        for name in chosen:
            fam = FAMILIES[name]
            if dtype_name(dtype) not in fam.dtypes:
                continue
            lengths = (fam.fixed_n,) if fam.fixed_n else (preset.long_lengths if fam.long else preset.lengths)
            for param in fam.params(limits(dtype)):
                for n in lengths:
                    out.append(Case(dtype, fam, float(param), int(n)))
    return out


def make_batch(case: Case, preset: StabilityPreset) -> Batch:
    rows = preset.long_rows if case.n > 20000 else preset.rows
    return case.family.make(case.dtype, case.param, case.n, rows, preset.seed)


def _rows_of(variant: Variant, device: torch.device, case: Case, results: list[OpResult]) -> list[StabilityRow]:
    rows = []
    common = dict(variant=variant.name, device=str(device), dtype=dtype_name(case.dtype), family=case.family.name,
                  param=case.param, n=case.n)
    for r in results:
        for metric, value in r.metrics.items():
            rows.append(StabilityRow(op=r.op, metric=metric, value=value, unit=_UNITS[metric], **common))
        # the verdict row comes last in each op: --resume treats a case as done once its last op's verdict is in
        rows.append(StabilityRow(op=r.op, metric="passed", value=float(r.passed) if r.status == "ok" else None,
                                 unit="bool", status=r.status, message=r.message, **common))
    return rows


def _check_names(names: Iterable[str] | None, table: dict, kind: str) -> list[str] | None:
    if not names:
        return None
    unknown = [n for n in names if n not in table]
    if unknown:
        plural = "families" if kind == "family" else kind + "s"
        raise UserError(f"unknown {kind} {', '.join(map(repr, unknown))}; known {plural}: {', '.join(table)}.")
    return list(dict.fromkeys(names))


def study_dtypes(device: torch.device, requested: Iterable[str] | None = None) -> list[torch.dtype]:
    """The dtypes the device supports, or the requested subset of them (a UserError for unsupported ones)."""
    supported = supported_dtypes(device)
    if not requested:
        return supported
    chosen = [parse_dtype(d) for d in dict.fromkeys(requested)]
    missing = [dtype_name(d) for d in chosen if d not in supported]
    if missing:
        raise UserError(f"{', '.join(missing)} is not supported on {device}; it supports "
                        f"{', '.join(map(dtype_name, supported))}.")
    return chosen


def stability_into(run: Run, variants: list[Variant], device: torch.device, preset: StabilityPreset,
                   dtypes: Iterable[str] | None = None, families: Iterable[str] | None = None,
                   timeout: float | None = None) -> list[SummaryLine]:
    """The whole study into an open run folder: stability.csv, then thresholds.csv; returns the summary.

    Rows are appended as measured; what the run folder already holds (--resume) is not measured again.
    Used by ``softmax-bench stability`` and ``softmax-bench all``.
    """
    chosen_dtypes = study_dtypes(device, dtypes)
    fams = _check_names(families, FAMILIES, "family")
    done = run.done("stability", STABILITY_KEY)
    dev = str(device)
    skipped: list[StabilityRow] = []
    active: dict[torch.dtype, list[Variant]] = {}
    for dtype in chosen_dtypes:
        active[dtype] = []
        for v in variants:
            reason = v.skip_reason(device, dtype)
            if reason is None:
                active[dtype].append(v)
                continue
            row = StabilityRow(v.name, dev, dtype_name(dtype), "all", "all", float("nan"), 0, "passed", None, "bool",
                               "skipped", reason)
            if key_of(row, STABILITY_KEY) not in done:
                skipped.append(row)
    if skipped:
        run.append(*skipped)

    def todo(v: Variant, case: Case) -> bool:
        last = StabilityRow(v.name, dev, dtype_name(case.dtype), ops_of(v)[-1], case.family.name, case.param,
                            case.n, "passed", None, "bool")
        return key_of(last, STABILITY_KEY) not in done

    all_cases = cases(preset, chosen_dtypes, fams)
    with torch_threads(1):  # small rows: threads only add spin-up, and one thread fixes the reduction order
        _measure_cases(run, all_cases, active, device, preset, todo,
                       STABILITY_TIMEOUT_S if timeout is None else timeout)
        if preset.thresholds:
            thresholds_into(run, [v for d in chosen_dtypes for v in active[d]], device, chosen_dtypes, active)
    return summarize(run, [v.name for v in variants], dev, [dtype_name(d) for d in chosen_dtypes])


def _measure_cases(run: Run, all_cases: list[Case], active: dict[torch.dtype, list[Variant]],
                   device: torch.device, preset: StabilityPreset, todo: Callable[[Variant, Case], bool],
                   timeout: float) -> None:
    for case in each(all_cases, "stability", describe=Case.describe, log_lines=10):
        pending = [v for v in active[case.dtype] if todo(v, case)]
        if not pending:
            continue
        batch = make_batch(case, preset)
        ref = reference(batch.x, batch.target)
        rows: list[StabilityRow] = []
        for v in pending:
            rows += _rows_of(v, device, case, [measure(v, op, batch, ref, case.dtype, device, timeout)
                                               for op in ops_of(v)])
        run.append(*rows)



# -- summary ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryLine:
    variant: str
    dtype: str
    passed: tuple[str, ...]  # families every case and op of which passed
    failed: tuple[str, ...]
    status: str  # ok, or skipped with the reason in `note`
    note: str = ""


def summarize(run: Run, variants: list[str], device: str, dtypes: list[str]) -> list[SummaryLine]:
    """Per (variant, dtype): the families passed and failed, from the stored rows (resumed ones included)."""
    df = run.read("stability")
    df = df[(df.metric == "passed") & (df.device == device)]
    lines = []
    for name in variants:
        for dt in dtypes:
            sub = df[(df.variant == name) & (df.dtype == dt)]
            skip = sub[sub.status == "skipped"]
            if not skip.empty:
                lines.append(SummaryLine(name, dt, (), (), "skipped", str(skip.message.iloc[0])))
                continue
            sub = sub[sub.family != "all"]
            ok_by_family = sub.groupby("family", sort=False)["value"].apply(lambda s: bool((s == 1.0).all()))
            lines.append(SummaryLine(name, dt, tuple(f for f, ok in ok_by_family.items() if ok),
                                     tuple(f for f, ok in ok_by_family.items() if not ok), "ok"))
    return lines


def format_summary(lines: list[SummaryLine]) -> str:
    out = [f"{'variant':16s} {'dtype':9s} {'families':>8s}  failed families"]
    for ln in lines:
        if ln.status == "skipped":
            out.append(f"{ln.variant:16s} {ln.dtype:9s} {'skipped':>8s}  {ln.note}")
            continue
        total = len(ln.passed) + len(ln.failed)
        out.append(f"{ln.variant:16s} {ln.dtype:9s} {len(ln.passed):>3d}/{total:<3d} ok  "
                   f"{', '.join(ln.failed) or '-'}")
    return "\n".join(out)


