"""The one long-to-wide pivot of throughput rows: one row per measured point, one column per metric.

Everything that reads throughput figures (the study's summary, its targets, the report's bundle) goes
through :func:`wide_throughput`, so a row that must not count (a wrong or timed-out unit, a speedup against
a failed baseline) is dropped in one place, :func:`measured`.
"""

from __future__ import annotations

import pandas as pd

from bench.store.rows import BASELINE

UNIT_POINT = ["device", "op", "dtype", "rows", "cols"]
UNIT = ["variant", *UNIT_POINT]


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
            point = pd.MultiIndex.from_frame(rows[UNIT_POINT].astype(str))
            keep &= ~(point.isin(pd.MultiIndex.from_frame(base[UNIT_POINT].astype(str)).unique())
                      & rows["metric"].eq("speedup_vs_torch").to_numpy())
    return rows[keep]



def wide_throughput(rows: pd.DataFrame, key: list[str], derive: bool = True) -> pd.DataFrame:
    """One row per `key` (which holds "variant") with one column per metric, from :func:`measured` rows
    (median of duplicates). `derive`: roofline_frac and speedup_vs_torch computed where no row holds them
    (gbps / copy_gbps; torch's median over the variant's, only where torch was measured)."""
    ok = measured(rows)
    if ok.empty:
        return pd.DataFrame(columns=key)
    wide = ok.pivot_table(index=key, columns="metric", values="value", aggfunc="median").reset_index()
    wide.columns.name = None
    if not derive:
        return wide
    if "gbps" in wide and "copy_gbps" in wide and "roofline_frac" not in wide:
        wide["roofline_frac"] = wide["gbps"] / wide["copy_gbps"]
    if "speedup_vs_torch" not in wide and "median_s" in wide:  # only a measured baseline is in `wide`
        point = [k for k in key if k != "variant"]
        ref = wide[wide["variant"] == BASELINE].set_index(point)["median_s"]
        idx = pd.MultiIndex.from_frame(wide[point])
        wide["speedup_vs_torch"] = ref.reindex(idx).to_numpy() / wide["median_s"].to_numpy()
    return wide
