"""The report's Findings: what to use, per workload, and where each public kernel breaks. Every sentence is
generated from the stored rows (the throughput points and the stability cells), never written by hand.

A workload class is a dtype, a range of row lengths and the ops a model runs there. For each class and
device the report names:

- the fastest implementation that is at least as stable as the builtin there: its failed stability families
  at that dtype are a subset of `torch`'s (speed: the geometric mean of its speedups over `torch` across the
  class's points, counting only implementations measured at every point of the class);
- the most accurate one: the fewest failed families at that dtype, ties broken by the smaller worst error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.bundle import Bundle, throughput_wide
from bench.report.render import Doc
from bench.report.sections.stability import stability_cells
from bench.store.rows import BASELINE

# Public implementations a reader chooses between (the rest are this study's own variants).
PUBLIC = {"torch": "the PyTorch builtin", "compiled": "torch.compile", "onnxruntime": "onnxruntime",
          "jax": "JAX/XLA", "liger": "Liger-Kernel", "quack": "QuACK"}


@dataclass(frozen=True)
class Workload:
    label: str
    dtype: str
    min_cols: int
    max_cols: int
    ops: tuple[str, ...]


WORKLOADS = (
    Workload("the chapter's 10-class rows, float32", "float32", 10, 10, ("ce_fwd_bwd", "softmax_fwd")),
    Workload("wide float32 rows (4096 to 16384 columns)", "float32", 4096, 16384, ("softmax_fwd", "ce_fwd_bwd")),
    Workload("LLM vocabularies in bfloat16 (32000 columns and more)", "bfloat16", 32000, 2**62,
             ("ce_fwd_bwd", "softmax_fwd")),
)


def _failed(cells: pd.DataFrame, device: str, dtype: str) -> dict[str, set[str]] | None:
    """variant -> families failed at `dtype` on `device` (only variants whose stability was measured there)."""
    if cells.empty:
        return None
    c = cells[(cells["device_name"] == device) & (cells["dtype"] == dtype)
              & cells["result"].isin(["pass", "fail", "error", "wrong", "timeout", "oom"])]
    if c.empty:
        return None
    return {v: set(g.loc[g["result"] != "pass", "family"]) for v, g in c.groupby("variant")}


def _worst_error(cells: pd.DataFrame, device: str, dtype: str, variant: str) -> float:
    c = cells[(cells["device_name"] == device) & (cells["dtype"] == dtype) & (cells["variant"] == variant)]
    errs = pd.to_numeric(c["max_err_u"], errors="coerce").dropna()
    return float(errs.max()) if not errs.empty else math.inf


def _speeds(wide: pd.DataFrame, device: str, w: Workload) -> tuple[pd.Series, int]:
    """Per variant, the geometric-mean speedup over torch across the class's points; only variants measured
    at every point. Also the number of points."""
    pts = wide[(wide["device_name"] == device) & (wide["dtype"] == w.dtype) & wide["op"].isin(w.ops)
               & (wide["cols"] >= w.min_cols) & (wide["cols"] <= w.max_cols)]
    if pts.empty or "speedup_vs_torch" not in pts:
        return pd.Series(dtype=float), 0
    pts = pts.dropna(subset=["speedup_vs_torch"])
    keys = ["op", "rows", "cols"]
    n = len(pts[pts["variant"] == BASELINE].drop_duplicates(keys)) or len(pts.drop_duplicates(keys))
    per = pts.groupby(["variant", *keys])["speedup_vs_torch"].median().reset_index()
    counts = per.groupby("variant").size()
    full = counts[counts == n].index
    logs = per[per["variant"].isin(full)].groupby("variant")["speedup_vs_torch"].apply(
        lambda s: float(math.exp(s.map(math.log).mean())))
    return logs.sort_values(ascending=False), n


def _name(variant: str) -> str:
    # plain text, never a code span: the renderer escapes what it quotes, and a code span would not be
    return variant + (f" ({PUBLIC[variant]})" if variant in PUBLIC and variant != BASELINE else "")


def workload_finding(wide: pd.DataFrame, cells: pd.DataFrame, device: str, w: Workload) -> str | None:
    """One sentence for one workload on one device, or None when the runs measured none of its points."""
    speeds, n = _speeds(wide, device, w)
    if speeds.empty:
        return None
    failed = _failed(cells, device, w.dtype)
    # plain text: the renderer escapes what it quotes, so markdown emphasis would show as asterisks
    where = f"{w.label[0].upper()}{w.label[1:]}, on {device} ({n} points, {', '.join(w.ops)})"
    if failed is None or BASELINE not in failed:
        best = speeds.index[0]
        return (f"{where}: fastest {_name(best)} at {speeds.iloc[0]:.2f}x `torch`; no stability rows at "
                f"{w.dtype} for this device, so none is vouched for.")
    base = failed[BASELINE]
    stable = [v for v in speeds.index if v in failed and failed[v] <= base]
    parts = [where + ":"]
    if stable:
        v = stable[0]
        parts.append(f"fastest as stable as `torch`: {_name(v)}, {speeds[v]:.2f}x `torch` (geometric mean);")
    else:
        parts.append("no implementation measured here is as stable as `torch`;")
    ranked = sorted(failed, key=lambda v: (len(failed[v]), _worst_error(cells, device, w.dtype, v)))
    acc = ranked[0]
    speed = f", {speeds[acc]:.2f}x `torch`" if acc in speeds else ""
    parts.append(f"most accurate: {_name(acc)} (fails {len(failed[acc])} families in {w.dtype}, `torch` "
                 f"{len(base)}{speed}).")
    faster = [v for v in speeds.index if v not in stable and speeds[v] > (speeds[stable[0]] if stable else 0)]
    if faster:
        parts.append("Faster but less stable: " + ", ".join(
            f"{_name(v)} {speeds[v]:.2f}x (also fails {', '.join(sorted(failed.get(v, set()) - base)) or 'unmeasured'})"
            for v in faster[:3]) + ".")
    return " ".join(parts)


def breakdowns(cells: pd.DataFrame) -> list[str]:
    """Per public kernel other than the builtin: the families it fails, by dtype (linking docs/peers.md)."""
    lines = []
    for v in [p for p in PUBLIC if p != BASELINE]:
        c = cells[(cells["variant"] == v) & (cells["result"] != "pass")
                  & ~cells["result"].isin(["skipped", "—"])] if not cells.empty else cells
        measured = not cells.empty and (cells["variant"] == v).any()
        if not measured:
            continue
        if c.empty:
            lines.append(f"{_name(v)}: passes every family it was measured in.")
            continue
        by = c.groupby("family")["dtype"].apply(lambda s: ", ".join(sorted(set(s))))
        source = "docs/stability.md" if v == "compiled" else "docs/peers.md"  # ours vs upstream's code
        lines.append(f"{_name(v)} breaks in " + "; ".join(f"{f} ({d})" for f, d in by.items())
                     + f" (see {source} in the repository).")
    return lines


def findings(wide: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """Every Findings sentence, workloads first, then where the public kernels break."""
    devices = list(dict.fromkeys(wide["device_name"])) if not wide.empty else []
    lines = [line for dev in devices for w in WORKLOADS
             if (line := workload_finding(wide, cells, dev, w)) is not None]
    return lines + breakdowns(cells)


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """The report's first section: what to use for each workload, and where each public kernel breaks."""
    lines = findings(throughput_wide(bundle), stability_cells(bundle))
    doc.h("Findings")
    if not lines:
        doc.p("These runs hold no throughput point of the workloads the findings speak of (the chapter's "
              "10-class rows, wide float32 rows, LLM vocabularies in bfloat16).")
        return
    doc.p("Generated from the stored rows. 'As stable as torch': fails no stability family that `torch` passes "
          "at that dtype on that device; speeds are geometric means of the speedup over `torch` across the "
          "workload's points (only implementations measured at all of them).")
    doc.ul(lines)
