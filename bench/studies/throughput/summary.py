"""The throughput summary printed after a sweep: a pure function of stored rows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.fmt import seconds
from bench.measure.host import DTYPES
from bench.store.rows import BASELINE, THROUGHPUT_OPS
from bench.store.targets import target_lines
from bench.store.wide import wide_throughput

KEY = ["variant", "op", "rows", "cols", "dtype"]


def _cell_text(r: Any, wide: pd.DataFrame) -> str:
    """'GB/s roofline% speedup x' of one unit from the pivot of trusted rows ('?' for a missing figure), or
    the status of a unit that holds no time."""
    if r.status != "ok":
        return r.status
    key = (r.variant, r.op, r.rows, r.cols, r.dtype)
    hit = wide.loc[key] if key in wide.index else None

    def get(metric: str) -> float | None:
        value = hit.get(metric) if hit is not None else None
        return None if value is None or pd.isna(value) else float(value)

    gbps, roof, speed = get("gbps"), get("roofline_frac"), get("speedup_vs_torch")
    return ((f"{gbps:.3g}" if gbps is not None else "?") + " " + (f"{roof:.0%}" if roof is not None else "?")
            + " " + (f"{speed:.2f}x" if speed is not None else "?x"))


def _cells(df: pd.DataFrame) -> dict[str, dict[tuple[int, int, str], dict[str, str]]]:
    """op -> (rows, cols, dtype) -> variant -> cell text, through the store's one pivot."""
    wide = wide_throughput(df, KEY, derive=False)
    wide = wide.set_index(KEY) if not wide.empty else wide
    cells: dict[str, dict[tuple[int, int, str], dict[str, str]]] = {}
    medians = df[df["metric"] == "median_s"].drop_duplicates(KEY, keep="last")
    for r in medians.itertuples(index=False):
        cells.setdefault(r.op, {}).setdefault((int(r.rows), int(r.cols), r.dtype), {})[r.variant] = _cell_text(r, wide)
    return cells


def _grid(cells: dict, variants: list[str], columns_per_block: int) -> list[str]:
    """Per op, blocks of at most `columns_per_block` shape/dtype columns, one line per variant."""
    lines: list[str] = []
    name_w = max(len(v) for v in variants)
    order = {op: i for i, op in enumerate(THROUGHPUT_OPS)}
    for op in sorted(cells, key=lambda o: (order.get(o, 99), o)):
        keys = sorted(cells[op], key=lambda k: (k[0] * k[1], k[0], k[2]))
        for start in range(0, len(keys), columns_per_block):
            chunk = keys[start:start + columns_per_block]
            heads = [f"{r}x{c} {d}" for r, c, d in chunk]
            width = max(16, *(len(h) for h in heads))
            lines.append("")
            lines.append(f"{op:{name_w}s} " + " ".join(f"{h:>{width}s}" for h in heads))
            for var in variants:
                row = [cells[op][k].get(var, "-") for k in chunk]
                if all(c == "-" for c in row):
                    continue
                lines.append(f"{var:{name_w}s} " + " ".join(f"{c:>{width}s}" for c in row))
    return lines


def _repeats(df: pd.DataFrame) -> list[str]:
    """How far the two medians of each unit measured twice agree."""
    lines = []
    value = {(r.variant, r.op, r.rows, r.cols, r.dtype, r.metric): r for r in df.itertuples(index=False)}
    for r in df[(df["metric"] == "repeat_diff_frac") & (df["status"] == "ok")].itertuples(index=False):
        first = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "median_s"))
        second = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "repeat_median_s"))
        mb = int(r.rows) * int(r.cols) * DTYPES[r.dtype].itemsize / 1e6
        if first is not None and second is not None:
            lines.append(f"repeat: {r.variant} {r.op} {r.rows}x{r.cols} {r.dtype} ({mb:.0f} MB): median "
                         f"{seconds(float(first.value))} then {seconds(float(second.value))}, "
                         f"differ by {float(r.value):.1%} ({'within' if r.value <= 0.05 else 'NOT within'} 5%)")
    return lines


def _overhead(df: pd.DataFrame) -> list[str]:
    """The timer's own cost per call, and what share of the smallest measured call it is."""
    overhead = df[(df["metric"] == "overhead_s") & (df["status"] == "ok")]["value"].dropna()
    if overhead.empty:
        return []
    cost = float(overhead.median())
    line = f"timer overhead: {seconds(cost)} per timed call (an empty closure through the same timer)"
    ok = df[(df["metric"] == "median_s") & (df["status"] == "ok")]
    smallest = ok[ok["rows"] * ok["cols"] == (ok["rows"] * ok["cols"]).min()] if not ok.empty else ok
    if not smallest.empty:
        # The smallest shape is where the harness's own cost would show; say how much of a call it is.
        pick_torch = smallest[(smallest["variant"] == BASELINE) & (smallest["op"] == "softmax_fwd")]
        r = (pick_torch if not pick_torch.empty else smallest.sort_values("value")).iloc[0]
        line += (f"; {r['variant']} {r['op']} {r['rows']}x{r['cols']} {r['dtype']} takes "
                 f"{seconds(float(r['value']))}, so the overhead is {cost / float(r['value']):.2%} of it")
    return [line]


def _flags(df: pd.DataFrame) -> list[str]:
    """Unstable measurements, and the units that hold no time (wrong outputs and timeouts each with why)."""
    lines = []
    flagged = df[(df["metric"] == "unstable") & (df["value"] == 1)]
    if not flagged.empty:
        names = ", ".join(f"{r.variant} {r.op} {r.rows}x{r.cols} {r.dtype}" for r in flagged.head(6).itertuples())
        more = f" and {len(flagged) - 6} more" if len(flagged) > 6 else ""
        lines.append(f"unstable (IQR > spread limit of the median; machine busy?): {len(flagged)}: {names}{more}")
    bad = df[(df["metric"] == "median_s") & (df["status"] != "ok")]
    if not bad.empty:
        lines.append("not measured: " + ", ".join(f"{s} {n}" for s, n in bad["status"].value_counts().items()))
    # a wrong output or a timeout is a finding about the variant, not about the machine: say each one and why
    for r in bad[bad["status"].isin(["wrong", "timeout"])].head(20).itertuples(index=False):
        why = " ".join(str(r.message).split())[:200]
        lines.append(f"  {r.status}: {r.variant} {r.op} {r.rows}x{r.cols} {r.dtype} on {r.device}: {why}")
    return lines


def summary_table(df: pd.DataFrame, device: str | None = None, columns_per_block: int = 5) -> str:
    """Per op: variant x shape/dtype cells 'GB/s  % of copy bandwidth  speedup vs torch'; then the checks.

    A pure function of stored rows, so the same table prints for a resumed or merged run.
    """
    if device is not None:
        df = df[df["device"] == device]
    if df.empty:
        return "no throughput rows."
    variants = sorted(df["variant"].unique(), key=lambda name: (name != BASELINE, name))
    lines = [f"throughput on {device or 'all devices'}: cells are GB/s (fewest bytes), % of the copy bandwidth "
             f"of the same buffer, speedup vs {BASELINE}"]
    lines += _grid(_cells(df), variants, columns_per_block)
    lines.append("")
    targets = target_lines(df, device=device)
    if targets:
        lines += ["targets (bench/store/targets.py):", *(f"  {line}" for line in targets), ""]
    return "\n".join(lines + _repeats(df) + _overhead(df) + _flags(df))
