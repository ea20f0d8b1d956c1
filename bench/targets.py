"""The throughput study's promised figures (bench.presets.THROUGHPUT_TARGETS), checked against stored rows.

A pure function of the rows, like every reading of the report: `softmax-bench throughput` prints the lines
under its tables and the report lists them under Throughput, so a merged CPU + GPU report checks both.

    >>> from bench.targets import target_lines
    >>> print("\\n".join(target_lines(run.read("throughput"))))
    met: CPU: narrow >= 10x torch on the chapter's shape: softmax_fwd 65536x10 float32 narrow 16.3x, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench.presets import BASELINE, THROUGHPUT_OPS, THROUGHPUT_TARGETS, ThroughputTarget

POINT = ["device", "op", "dtype", "rows", "cols"]


UNIT = ["variant", *POINT]


# Statuses that condemn a whole unit: its output was wrong, or it never finished. Such a unit is one row.
UNTRUSTED = ("wrong", "timeout")


def measured(rows: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows that may enter a GB/s, a speedup, a target or a figure: status ok with a value, of units
    (variant and point) whose time was measured (median_s ok) and that nothing marks wrong or timed out, and
    no speedup taken against a baseline that was not measured at that point. (One metric may fail alone, e.g.
    peak_bytes skipped for a compiled kernel: the unit's times still count.)
    """
    if rows.empty:
        return rows
    failed = rows[(rows["status"] != "ok") & (rows["metric"].eq("median_s") | rows["status"].isin(UNTRUSTED))]
    keep = rows["status"].eq("ok") & rows["value"].notna()
    if not failed.empty:
        unit = pd.MultiIndex.from_frame(rows[UNIT].astype(str))
        keep &= ~unit.isin(pd.MultiIndex.from_frame(failed[UNIT].astype(str)).unique())
        base = failed[failed["variant"] == BASELINE]
        if not base.empty:  # a ratio against a wrong, timed-out or failed baseline means nothing
            point = pd.MultiIndex.from_frame(rows[POINT].astype(str))
            keep &= ~(point.isin(pd.MultiIndex.from_frame(base[POINT].astype(str)).unique())
                      & rows["metric"].eq("speedup_vs_torch").to_numpy())
    return rows[keep]


def _wide(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, point) with the two metrics a target reads, from tidy throughput rows."""
    ok = measured(rows)
    ok = ok[ok["metric"].isin(["roofline_frac", "speedup_vs_torch"])] if not ok.empty else ok
    if ok.empty:
        return pd.DataFrame(columns=["variant", *POINT, "roofline_frac", "speedup_vs_torch"])
    wide = ok.pivot_table(index=["variant", *POINT], columns="metric", values="value", aggfunc="median")
    return wide.reset_index()


def _fmt(metric: str, value: float) -> str:
    return f"{value:.0%}" if metric == "roofline_frac" else f"{value:.1f}x"


def check(target: ThroughputTarget, wide: pd.DataFrame) -> str:
    """'met: ...', 'NOT met: ...' or 'not measured: ...' for one target, naming every point's figure."""
    if target.metric not in wide:
        return f"not measured: {target.name}"
    pts = wide[wide["device"].astype(str).str.startswith(target.device) & wide["op"].isin(target.ops)
               & wide["dtype"].isin(target.dtypes) & wide[target.metric].notna()]
    if target.shapes:
        keys = set(target.shapes)
        # a boolean Series, never a bare list: an empty list would select no *columns* (KeyError: 'variant')
        pts = pts[pd.Series([(int(r), int(c)) in keys for r, c in zip(pts["rows"], pts["cols"], strict=True)],
                            index=pts.index, dtype=bool)]
    else:
        pts = pts[(pts["cols"] >= target.min_cols) & (pts["cols"] <= target.max_cols)]
    if target.variant is not None:
        pts = pts[pts["variant"] == target.variant]
    elif target.metric == "speedup_vs_torch":
        pts = pts[pts["variant"] != BASELINE]  # torch against itself is 1.0 by definition
    if pts.empty:
        return f"not measured: {target.name}"
    best = pts.sort_values(target.metric, ascending=False).groupby(POINT, sort=False).head(1)
    order = {op: i for i, op in enumerate(THROUGHPUT_OPS)}
    best = best.assign(_op=best["op"].map(order)).sort_values(["_op", "dtype", "cols", "rows"])
    figures = [f"{r.op} {int(r.rows)}x{int(r.cols)} {r.dtype} {r.variant} "
               f"{_fmt(target.metric, getattr(r, target.metric))}" for r in best.itertuples(index=False)]
    values = best[target.metric]
    ok = values > target.threshold if target.strictly else values >= target.threshold
    verdict = "met" if bool(ok.all()) else f"NOT met at {int((~ok).sum())} of {len(best)} points"
    return f"{verdict}: {target.name}: " + ", ".join(figures)


def target_lines(rows: pd.DataFrame, targets: Sequence[ThroughputTarget] = THROUGHPUT_TARGETS,
                 device: str | None = None) -> list[str]:
    """One line per target for the device types these rows hold (only `device`'s when given): a CPU-only run
    says nothing about the GPU targets, a merged CPU + GPU report checks both."""
    if rows.empty:
        return []
    wide = _wide(rows)
    present = {str(d).split(":")[0] for d in rows["device"].unique()}
    return [check(t, wide) for t in targets
            if t.device in present and (device is None or str(device).startswith(t.device))]
