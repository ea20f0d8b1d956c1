"""The throughput summary printed after a sweep: a pure function of stored rows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.measure.host import DTYPES
from bench.store.rows import BASELINE, THROUGHPUT_OPS
from bench.store.targets import target_lines
from bench.store.wide import measured


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ok_value(table: dict[tuple, Any], key: tuple) -> float | None:
    hit = table.get(key)
    return None if hit is None or hit.status != "ok" else float(hit.value)


def summary_table(df: pd.DataFrame, device: str | None = None, columns_per_block: int = 5) -> str:
    """Per op: variant x shape/dtype cells 'GB/s  % of copy bandwidth  speedup vs torch'; then the checks.

    A pure function of stored rows, so the same table prints for a resumed or merged run.
    """
    if device is not None:
        df = df[df["device"] == device]
    if df.empty:
        return "no throughput rows."

    variants = sorted(df["variant"].unique(), key=lambda name: (name != BASELINE, name))
    value = {(r.variant, r.op, r.rows, r.cols, r.dtype, r.metric): r for r in df.itertuples(index=False)}
    trusted = {(r.variant, r.op, r.rows, r.cols, r.dtype, r.metric): r for r in measured(df).itertuples(index=False)}
    cells: dict[str, dict[tuple[int, int, str], dict[str, str]]] = {}
    for (var, op, rows, cols, dtype, metric), r in value.items():
        if metric != "median_s":
            continue
        if r.status != "ok":
            text = r.status
        else:
            gbps, roof, speed = (_ok_value(trusted, (var, op, rows, cols, dtype, name))
                                 for name in ("gbps", "roofline_frac", "speedup_vs_torch"))
            text = (f"{gbps:.3g}" if gbps is not None else "?") + " "
            text += (f"{roof:.0%}" if roof is not None else "?") + " "
            text += f"{speed:.2f}x" if speed is not None else "?x"
        cells.setdefault(op, {}).setdefault((int(rows), int(cols), dtype), {})[var] = text
    lines = [f"throughput on {device or 'all devices'}: cells are GB/s (fewest bytes), % of the copy bandwidth "
             f"of the same buffer, speedup vs {BASELINE}"]
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

    lines.append("")
    targets = target_lines(df, device=device)
    if targets:
        lines += ["targets (bench/store/targets.py):", *(f"  {line}" for line in targets), ""]
    for r in df[(df["metric"] == "repeat_diff_frac") & (df["status"] == "ok")].itertuples(index=False):
        first = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "median_s"))
        second = value.get((r.variant, r.op, r.rows, r.cols, r.dtype, "repeat_median_s"))
        mb = int(r.rows) * int(r.cols) * DTYPES[r.dtype].itemsize / 1e6
        if first is not None and second is not None:
            lines.append(f"repeat: {r.variant} {r.op} {r.rows}x{r.cols} {r.dtype} ({mb:.0f} MB): median "
                         f"{_fmt_time(float(first.value))} then {_fmt_time(float(second.value))}, "
                         f"differ by {float(r.value):.1%} ({'within' if r.value <= 0.05 else 'NOT within'} 5%)")
    overhead = df[(df["metric"] == "overhead_s") & (df["status"] == "ok")]["value"].dropna()
    if not overhead.empty:
        cost = float(overhead.median())
        line = f"timer overhead: {_fmt_time(cost)} per timed call (an empty closure through the same timer)"
        ok = df[(df["metric"] == "median_s") & (df["status"] == "ok")]
        smallest = ok[ok["rows"] * ok["cols"] == (ok["rows"] * ok["cols"]).min()] if not ok.empty else ok
        if not smallest.empty:
            # The smallest shape is where the harness's own cost would show; say how much of a call it is.
            pick_torch = smallest[(smallest["variant"] == BASELINE) & (smallest["op"] == "softmax_fwd")]
            r = (pick_torch if not pick_torch.empty else smallest.sort_values("value")).iloc[0]
            line += (f"; {r['variant']} {r['op']} {r['rows']}x{r['cols']} {r['dtype']} takes "
                     f"{_fmt_time(float(r['value']))}, so the overhead is {cost / float(r['value']):.2%} of it")
        lines.append(line)
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
    return "\n".join(lines)

