"""The stability section: readings, the heatmap, the thresholds and their probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.fmt import _nan, fmt
from bench.report import figures as F
from bench.report.bundle import Bundle
from bench.report.render import Doc
from bench.report.sections import slug

# --- stability -----------------------------------------------------------------------------------------

# Statuses of a stability group that neither passed nor failed, most telling first.
UNMEASURED = ("wrong", "timeout", "error", "oom")


def stability_cells(bundle: Bundle) -> pd.DataFrame:
    """One row per (origin, device, variant, dtype, family): result pass/fail/wrong/timeout/error/oom/skipped and
    the error size (a family with any unmeasured group is not a pass: the first of UNMEASURED it holds wins).

    A family passes when every measured (op, parameter, length) in it passed; `max_err_u` is the largest
    relative error in units of the dtype's unit roundoff; `nonfinite` counts non-finite outputs.
    """
    st = bundle.tables["stability"]
    key = ["run", "host", "device_name", "device", "variant", "dtype", "family"]
    cols = key + ["result", "max_err_u", "nonfinite", "failed_params", "message"]
    # family "all" marks a variant/dtype the study skipped as a whole; it is not a family of its own
    st = st[st["family"] != "all"] if not st.empty else st
    if st.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for k, g in st.groupby(key, sort=True):
        ok = g[g["status"] == "ok"]
        passed = ok.loc[ok["metric"] == "passed", "value"]
        errs = ok.loc[ok["metric"] == "max_rel_err_u", "value"]
        nonfinite = ok.loc[ok["metric"] == "nonfinite", "value"]
        failed = ok[(ok["metric"] == "passed") & (ok["value"] < 0.5)]
        unmeasured = next((s for s in UNMEASURED if (g["status"] == s).any()), None)
        if len(passed) and (passed < 0.5).any():
            result = "fail"
        elif unmeasured:
            result = unmeasured
        elif len(passed):
            result = "pass"
        else:
            result = "skipped" if (g["status"] == "skipped").any() else "—"
        message = "; ".join(dict.fromkeys(g.loc[g["status"] != "ok", "message"].astype(str)))[:200]
        params = sorted(set(failed["param"].dropna().astype(float)))
        out.append(dict(zip(key, k, strict=False)) | {
            "result": result,
            "max_err_u": float(errs.replace([np.inf], np.inf).max()) if len(errs) else float("nan"),
            "nonfinite": float(nonfinite.sum()) if len(nonfinite) else float("nan"),
            "failed_params": ", ".join(fmt(p) for p in params[:4]) + (" …" if len(params) > 4 else ""),
            "message": message,
        })
    return pd.DataFrame(out, columns=cols)


def stability_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Rows = device/variant/dtype, columns = families, cell = 'pass 3.1u' / 'FAIL ∞u'."""
    if cells.empty:
        return pd.DataFrame()
    def cell(r: pd.Series) -> str:
        label = r["result"].upper() if r["result"] in ("fail", *UNMEASURED) else r["result"]
        return label if _nan(r["max_err_u"]) else f"{label} {fmt(r['max_err_u'], 2)}u"
    c = cells.assign(cell=cells.apply(cell, axis=1))
    wide = c.pivot_table(index=["device_name", "variant", "dtype"], columns="family", values="cell",
                         aggfunc="first").reset_index()
    wide.columns.name = None
    return wide.rename(columns={"device_name": "device"}).fillna("—")


def failed_families(cells: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """variant -> family -> dtypes in which it failed (on any device)."""
    out: dict[str, dict[str, list[str]]] = {}
    for _, r in cells[cells["result"].isin(["fail", "wrong"])].iterrows():  # a wrong output fails too
        fam = out.setdefault(r["variant"], {}).setdefault(r["family"], [])
        if r["dtype"] not in fam:
            fam.append(r["dtype"])
    return out


def thresholds_table(bundle: Bundle) -> pd.DataFrame:
    th = bundle.tables["thresholds"]
    if th.empty:
        return pd.DataFrame()
    th = th.copy()
    th["cell"] = [threshold_cell(v, d) if s == "ok" else s
                  for v, d, s in zip(th["threshold"], th["dtype"], th["status"], strict=False)]
    wide = th.pivot_table(index=["device_name", "variant", "op"], columns=["kind", "dtype"], values="cell",
                          aggfunc="first")
    wide.columns = [f"{k} {d}" for k, d in wide.columns]
    return wide.reset_index().rename(columns={"device_name": "device"}).fillna("—")


def probes(bundle: Bundle) -> pd.DataFrame:
    th = bundle.tables["thresholds"]
    if th.empty:
        return pd.DataFrame(columns=["kind", "probe"])
    return th[["kind", "probe"]].drop_duplicates().sort_values("kind").reset_index(drop=True)


def stability_reading(cells: pd.DataFrame, bundle: Bundle) -> list[str]:
    if cells.empty:
        return ["No stability row is stored, so there is nothing to read yet."]
    out = []
    failed = failed_families(cells)
    families = sorted(set(cells["family"]))
    for variant in sorted(set(cells["variant"])):
        mine = cells[cells["variant"] == variant]
        fams = failed.get(variant, {})
        unmeasured = mine[mine["result"].isin(UNMEASURED[1:])]
        if fams:
            listed = "; ".join(f"{f} ({', '.join(sorted(d))})" for f, d in sorted(fams.items()))
            text = f"{variant} fails {len(fams)} of {len(families)} families: {listed}"
        elif unmeasured.empty:
            text = f"{variant} passes all {len(families)} families it was measured on"
        else:  # an error is no pass: count only the families that really passed
            passed = set(mine.loc[mine["result"] == "pass", "family"]) - set(unmeasured["family"])
            text = f"{variant} passes {len(passed)} of {len(families)} families"
        if not unmeasured.empty:
            why = "; ".join(dict.fromkeys(m for m in unmeasured["message"].astype(str) if m))[:200]
            text += (f"; {len(unmeasured)} measurement groups have no result "
                     f"({', '.join(sorted(set(unmeasured['result'])))}{': ' + why if why else ''})")
        out.append(text + ".")
    th = bundle.tables["thresholds"]
    if not th.empty:
        ok = th[(th["status"] == "ok") & (th["kind"] == "overflow") & th["threshold"].notna()]
        for (variant, dtype), g in ok.groupby(["variant", "dtype"]):
            value = float(g["threshold"].min())
            limit = _finfo_max(dtype)
            if limit is not None and value < 0.5 * limit:
                out.append(f"{variant} overflows in {dtype} once the largest logit passes {fmt(value, 4)} "
                           f"(on the probe row {g['probe'].iloc[0]}).")
    return out


def threshold_cell(value: Any, dtype: str) -> str:
    """A threshold for a table: 'never' when the search reached the dtype's largest finite value."""
    limit = _finfo_max(dtype)
    if not _nan(value) and limit is not None and abs(float(value)) >= 0.99 * limit:
        return "never"
    return fmt(value, 4)


def _finfo_max(dtype: str) -> float | None:
    import torch

    try:
        return float(torch.finfo(getattr(torch, dtype)).max)
    except (AttributeError, TypeError):
        return None


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """Readings, the heatmap per device, the per-family table, the thresholds."""
    doc.h("Stability")
    cells = stability_cells(bundle)
    if not bundle.has("stability"):
        doc.p("No run holds stability.csv: not measured (run `softmax-bench stability --resume RUN`).")
    else:
        doc.ul(stability_reading(cells, bundle))
        for dev in sorted(set(cells["device_name"])):
            doc.figure(F.stability_heatmap,
                       f"Stability on {dev}: pass (green) or fail (red) per variant, input family and dtype; "
                       "the number is the largest relative error in units of the dtype's unit roundoff u.",
                       cells, dev, out / f"stability-{slug(dev)}.png")
        doc.table(stability_table(cells), "Per family: result and largest relative error (units of u)")
    if bundle.has("thresholds"):
        doc.figure(F.thresholds,
                   "Thresholds: the largest logit magnitude at which each variant's output is still finite and "
                   "within tolerance, per dtype.", bundle.tables["thresholds"], palette, out / "thresholds.png")
        doc.table(thresholds_table(bundle), "Thresholds per variant, op, kind and dtype")
        doc.table(probes(bundle), "The probe rows the thresholds were searched on")
    elif bundle.has("stability"):
        doc.p("No run holds thresholds.csv: overflow/underflow thresholds were not searched.")
