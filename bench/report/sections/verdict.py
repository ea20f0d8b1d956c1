"""The verdict: one row per variant, every study's headline figure side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.fmt import fmt, pct, shape, times
from bench.report.bundle import Bundle, throughput_wide, variants_in
from bench.report.render import Doc
from bench.report.sections.stability import failed_families, stability_cells, threshold_cell
from bench.report.sections.throughput import STATUS_MEANING, failure_counts, representative, throughput_failures
from bench.report.sections.training import training_final

# --- verdict -------------------------------------------------------------------------------------------

def _accuracy_cell(runs: pd.DataFrame) -> str:
    """Mean final test accuracy of the runs that finished; the statuses of those that did not (a run that
    timed out or errored mid-way has a partial accuracy that must not pass for a result)."""
    if runs.empty:
        return "—"
    done = runs[runs["status"] == "ok"]
    if done.empty:
        return ", ".join(sorted(set(runs["status"].astype(str))))
    return fmt(done["test_acc"].mean()) + (" (diverged)" if done["diverged"].any() else "")


def _speed(bundle: Bundle, variants: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"variant": variants})
    wide = throughput_wide(bundle)
    several_devices = wide["device_name"].nunique() > 1 if not wide.empty else False
    for dev, dtype, op, rows, cols in representative(wide):
        d = wide[(wide["device_name"] == dev) & (wide["dtype"] == dtype) & (wide["op"] == op)
                 & (wide["rows"] == rows) & (wide["cols"] == cols)].groupby("variant").median(numeric_only=True)
        where = (f"{dev} " if several_devices else "") + f"{dtype} {op} {shape(rows, cols)}"
        if "roofline_frac" in d:
            table[f"% roofline, {where}"] = [pct(d["roofline_frac"].get(v)) for v in variants]
        if "speedup_vs_torch" in d:
            table[f"× torch, {where}"] = [times(d["speedup_vs_torch"].get(v)) for v in variants]
    unmeasured = failure_counts(throughput_failures(bundle))
    if unmeasured:  # a wrong output or a timeout is a finding about the variant: the verdict says it
        table["throughput points not measured"] = [unmeasured.get(v, "none") for v in variants]
    return table


def _stability(bundle: Bundle, variants: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"variant": variants})
    th = bundle.tables["thresholds"]
    if not th.empty:
        ops = set(th["op"])
        op = "softmax" if "softmax" in ops else sorted(ops)[0]
        ok = th[(th["op"] == op) & (th["kind"].isin(["overflow", "underflow"]))]
        for (kind, dtype), g in ok.groupby(["kind", "dtype"], sort=True):
            vals = g.groupby("variant").apply(
                lambda x, dtype=dtype: threshold_cell(x["threshold"].min(), dtype) if (x["status"] == "ok").all()
                else x["status"].iloc[0],
                include_groups=False)
            table[f"{kind} {dtype}"] = [vals.get(v, "—") for v in variants]
    cells = stability_cells(bundle)
    if not cells.empty:
        failed = failed_families(cells)
        measured = set(cells["variant"])
        table["families failed"] = [
            ("; ".join(f"{f} ({', '.join(sorted(ds))})" for f, ds in sorted(failed[v].items())) if v in failed
             else "none") if v in measured else "—" for v in variants]
    return table


def _training(bundle: Bundle, variants: list[str]) -> pd.DataFrame:
    table = pd.DataFrame({"variant": variants})
    final = training_final(bundle)
    if final.empty:
        return table
    several = final["device_name"].nunique() > 1
    for (regime, dtype, dev), g in final.groupby(["regime", "dtype", "device_name"], sort=False):
        multi_dtype = final.loc[final["regime"] == regime, "dtype"].nunique() > 1
        label = "test acc " + regime + (f" {dtype}" if multi_dtype else "") + (f" {dev}" if several else "")
        table[label] = [_accuracy_cell(g[g["variant"] == v]) for v in variants]
    div = final[final["diverged"]]
    trained = set(final.loc[final["status"] == "ok", "variant"])
    table["diverged in"] = [", ".join(sorted(set(div.loc[div["variant"] == v, "regime"]))) or "none"
                            if v in trained else "—" for v in variants]
    return table


def verdict_tables(bundle: Bundle) -> list[tuple[str, pd.DataFrame]]:
    """The verdict as a few narrow tables a person reads without scrolling sideways, one per study, each one
    row per variant; a study the runs do not hold has no table."""
    variants = variants_in(bundle)
    if not variants:
        return []
    parts = [("Speed", _speed(bundle, variants)), ("Stability", _stability(bundle, variants)),
             ("Training", _training(bundle, variants))]
    return [(title, table) for title, table in parts if table.shape[1] > 1]


def _wrong_and_timed_out(doc: Doc, bundle: Bundle, limit: int = 30) -> None:
    """Every throughput point whose output was wrong or that timed out, with its message, under the verdict:
    such a point has no time, so nothing else in the report would show it but the failure table."""
    failures = throughput_failures(bundle)
    flagged = failures[failures["status"].isin(["wrong", "timeout"])]
    if flagged.empty:
        return
    doc.h3("Wrong outputs and timeouts")
    doc.p("These points hold no time: no GB/s, speedup, target, verdict figure or plot above counts them.")
    items = [f"{r.variant}: {r.op} {r.shape} {r.dtype} on {r.device_name}: {r.status} "
             f"({STATUS_MEANING[r.status]}): {r.message or 'no message'}"
             for r in flagged.head(limit).itertuples(index=False)]
    if len(flagged) > limit:
        items.append(f"… and {len(flagged) - limit} more, in the table 'Points that could not be measured'.")
    doc.ul(items, "missing")


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """The verdict table, and every wrong output and timeout under it."""
    doc.h("Verdict")
    doc.p("One row per variant. % roofline is the effective bandwidth over the copy bandwidth the same device "
          "measured in the same run; × torch is torch's median time over the variant's (above 1 is faster). "
          "Thresholds are the largest logit magnitude still handled correctly ('never': correct up to the "
          "dtype's largest finite value); test accuracy is after the last epoch of each regime.")
    for title, table in verdict_tables(bundle):
        doc.h3(f"Verdict: {title.lower()}")
        doc.table(table)
    _wrong_and_timed_out(doc, bundle)
