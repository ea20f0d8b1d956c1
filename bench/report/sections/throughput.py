"""The throughput section: readings, targets, byte formulas, the roofline, figures and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.fmt import _nan, fmt, pct, shape, times
from bench.report import figures as F
from bench.report.bundle import (
    REFERENCE,
    TP_KEY,
    Bundle,
    byte_formulas,
    cpu_roofline_has_streaming_copy,
    throughput_wide,
)
from bench.report.render import Doc
from bench.report.sections import ordered, slug
from bench.store.rows import STATUSES
from bench.store.targets import target_lines

STATUS_MEANING = {
    "wrong": "the output failed validation against the float64 reference",
    "timeout": "ran past the per-unit time limit",
    "oom": "out of memory",
    "error": "raised an error",
    "skipped": "not run here",
}
assert tuple(STATUS_MEANING) == STATUSES[1:], "every status a row can hold (bench.store.rows) is explained"
# Findings about the variant first: a wrong output or a timeout matters more than a machine's limits.
_STATUS_ORDER = {s: i for i, s in enumerate(STATUS_MEANING)}


def throughput_failures(bundle: Bundle) -> pd.DataFrame:
    """One row per point and metric that holds no measurement (metric median_s: the whole point; another
    metric, e.g. peak_bytes, alone), wrong outputs and timeouts first, with the message."""
    tp = bundle.tables["throughput"]
    bad = tp[tp["status"] != "ok"] if not tp.empty else tp
    cols = ["host", "device_name", "variant", "dtype", "op", "shape", "metric", "status", "message"]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    bad = bad.drop_duplicates(TP_KEY + ["metric", "status"]).copy()
    bad["shape"] = [shape(r, c) for r, c in zip(bad["rows"], bad["cols"], strict=False)]
    bad["message"] = bad["message"].fillna("").astype(str)
    bad = bad.assign(_order=bad["status"].map(_STATUS_ORDER).fillna(len(_STATUS_ORDER)))
    return bad.sort_values(["_order", "variant"], kind="stable")[cols].reset_index(drop=True)


def failure_counts(failures: pd.DataFrame) -> dict[str, str]:
    """variant -> '2 wrong, 1 oom': the points of each variant that hold no time (metric median_s), by status."""
    out: dict[str, str] = {}
    failures = failures[failures["metric"] == "median_s"] if not failures.empty else failures
    if failures.empty:
        return out
    for variant, g in failures.groupby("variant", sort=True):
        counts = g["status"].value_counts()
        order = sorted(counts.index, key=lambda s: (_STATUS_ORDER.get(s, 99), s))
        out[str(variant)] = ", ".join(f"{counts[s]} {s}" for s in order)
    return out


def memory_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Peak memory beyond the inputs at the largest shape of each (device, dtype, op): 'MB (× torch)'.

    This is where a chunked or fused variant shows what it saves: the builtin's cross-entropy backward holds
    a full [M, N] float32 gradient plus its softmax, a chunked one a single chunk.
    """
    if wide.empty or "peak_bytes" not in wide:
        return pd.DataFrame()
    d = wide[wide["peak_bytes"].notna()]
    out = []
    for (dev, host, dtype, op), g in d.groupby(["device_name", "host", "dtype", "op"], sort=True):
        n = g["rows"].astype(float) * g["cols"].astype(float)
        big = g[n == n.max()]
        rows, cols = int(big["rows"].iloc[0]), int(big["cols"].iloc[0])
        big = big[(big["rows"] == rows) & (big["cols"] == cols)]
        ref = big.loc[big["variant"] == REFERENCE, "peak_bytes"]
        rec: dict[str, Any] = {"host": host, "device": dev, "dtype": dtype, "op": op, "shape": shape(rows, cols)}
        for _, r in big.sort_values("variant").iterrows():
            b = r["peak_bytes"]
            cell = f"{b / 1e9:.3g} GB" if b >= 1e9 else f"{b / 1e6:.3g} MB"
            if len(ref) and ref.iloc[0] > 0 and r["variant"] != REFERENCE:
                cell += f" ({r['peak_bytes'] / ref.iloc[0]:.2f}×)"
            rec[r["variant"]] = cell
        out.append(rec)
    return pd.DataFrame(out).fillna("—")


def first_call_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Per device and variant: the slowest first call (compilation, autotuning, lazy init), never a timed
    sample, beside the steady-state median of the same point, so a compiled variant's compile time is
    reported on its own."""
    if wide.empty or "first_call_s" not in wide or "median_s" not in wide:
        return pd.DataFrame()
    d = wide[wide["first_call_s"].notna()]
    out = []
    for (dev, variant), g in d.groupby(["device_name", "variant"], sort=True):
        r = g.loc[g["first_call_s"].idxmax()]
        out.append({"device": dev, "variant": variant, "slowest first call": f"{fmt(r['first_call_s'])} s",
                    "at": f"{r['op']} {shape(r['rows'], r['cols'])} {r['dtype']}",
                    "steady median there": f"{fmt(r['median_s'])} s",
                    "first call / median": f"{r['first_call_s'] / r['median_s']:.3g}×" if r["median_s"] else "—",
                    "sum of first calls": f"{fmt(g['first_call_s'].sum())} s"})
    return pd.DataFrame(out)


def representative(wide: pd.DataFrame) -> list[tuple[str, str, str, int, int]]:
    """(device_name, dtype, op, rows, cols) points the verdict quotes: per device, float32 softmax forward
    (or what exists), at the chapter-like shape (10 columns, most rows), at 4096 columns (most rows) and the
    largest shape torch ran."""
    if wide.empty or "gbps" not in wide:
        return []
    points = []
    for dev, d in wide.groupby("device_name", sort=True):
        dtype = "float32" if "float32" in set(d["dtype"]) else sorted(d["dtype"])[0]
        op = "softmax_fwd" if "softmax_fwd" in set(d["op"]) else sorted(d["op"])[0]
        d = d[(d["dtype"] == dtype) & (d["op"] == op)]
        ref = d[d["variant"] == REFERENCE]
        base = ref if not ref.empty else d
        sizes = base.assign(n=base["rows"].astype(float) * base["cols"].astype(float))
        chosen = []
        # the chapter's 10 classes, a 4096-wide row (cache-resident rows, DRAM-sized tensor) and the largest
        for cols in (10, 4096):
            at = sizes[sizes["cols"] == cols].sort_values("n")
            if not at.empty:
                chosen.append(at.iloc[-1])
        chosen.append(sizes.sort_values("n").iloc[-1])
        for r in chosen:
            point = (dev, dtype, op, int(r["rows"]), int(r["cols"]))
            if point not in points:
                points.append(point)
    return points


def throughput_table(wide: pd.DataFrame, dtype: str, op: str) -> pd.DataFrame:
    """Rows = device and shape, columns = variants, cells = 'GB/s (roofline %, × torch)'."""
    d = wide[(wide["dtype"] == dtype) & (wide["op"] == op)]
    if d.empty or "gbps" not in d:
        return pd.DataFrame()
    out = []
    for (dev, host, rows, cols), g in d.groupby(["device_name", "host", "rows", "cols"], sort=True):
        rec: dict[str, Any] = {"host": host, "device": dev, "shape": shape(rows, cols)}
        copy = g["copy_gbps"].median() if "copy_gbps" in g else float("nan")
        rec["copy GB/s"] = fmt(copy)
        for _, r in g.sort_values("variant").iterrows():
            parts = [fmt(r["gbps"])]
            if not _nan(r.get("roofline_frac")):
                parts.append(pct(r["roofline_frac"]))
            if not _nan(r.get("speedup_vs_torch")) and r["variant"] != REFERENCE:
                parts.append(times(r["speedup_vs_torch"]))
            rec[r["variant"]] = parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")
        out.append(rec)
    return pd.DataFrame(out).fillna("—")


def throughput_reading(wide: pd.DataFrame, failures: pd.DataFrame) -> list[str]:
    """Plain sentences drawn from the numbers: who is fastest where, and how far from the roofline."""
    if wide.empty or "gbps" not in wide:
        return ["No throughput row holds a bandwidth, so there is nothing to read yet.", *_failure_reading(failures)]
    out = []
    for dev, dtype, op, rows, cols in representative(wide):
        d = wide[(wide["device_name"] == dev) & (wide["dtype"] == dtype) & (wide["op"] == op)
                 & (wide["rows"] == rows) & (wide["cols"] == cols)].sort_values("gbps", ascending=False)
        if d.empty:
            continue
        best = d.iloc[0]
        text = (f"On {dev}, {dtype} {op} at {shape(rows, cols)}: the fastest variant is {best['variant']} at "
                f"{fmt(best['gbps'])} GB/s")
        if not _nan(best.get("copy_gbps")):
            text += f", {pct(best.get('roofline_frac'))} of the {fmt(best['copy_gbps'])} GB/s the same device copies"
        slowest = d.iloc[-1]
        if len(d) > 1:
            text += f"; the slowest is {slowest['variant']} at {fmt(slowest['gbps'])} GB/s"
            if not _nan(slowest.get("roofline_frac")):
                text += f" ({pct(slowest['roofline_frac'])} of the roofline)"
        out.append(text + ".")
    if "speedup_vs_torch" in wide:
        others = wide[(wide["variant"] != REFERENCE) & wide["speedup_vs_torch"].notna()]
        for variant, g in others.groupby("variant"):
            wins = int((g["speedup_vs_torch"] > 1.05).sum())
            gm = float(np.exp(np.log(g["speedup_vs_torch"].clip(lower=1e-12)).mean()))
            out.append(f"{variant} is faster than torch by more than 5% at {wins} of {len(g)} measured points "
                       f"(geometric mean speed ratio {gm:.2f}×).")
    return out + _failure_reading(failures)


def _failure_reading(failures: pd.DataFrame) -> list[str]:
    if failures.empty:
        return []
    points = failures[failures["metric"] == "median_s"]
    counts = points["status"].value_counts()
    order = sorted(counts.index, key=lambda s: (_STATUS_ORDER.get(s, 99), s))
    text = "Points that could not be measured: " + (", ".join(
        f"{counts[s]} {s}" + (f" ({STATUS_MEANING[s]})" if s in STATUS_MEANING else "") for s in order) or "none")
    single = failures[failures["metric"] != "median_s"]
    if not single.empty:  # e.g. peak_bytes of a compiled kernel: the point's times still count
        metrics = ", ".join(sorted(set(single["metric"].astype(str))))
        text += f"; {len(single)} single metrics ({metrics}) of measured points were not taken"
    return [text + " (listed below with their reasons; a point without a time enters no GB/s, speedup, target "
            "or figure)."]


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """Readings, targets, byte formulas, the roofline paragraph, figures and tables per device."""
    doc.h("Throughput")
    wide = throughput_wide(bundle)
    failures = throughput_failures(bundle)
    if not bundle.has("throughput"):
        doc.p("No run holds throughput.csv: not measured (run `softmax-bench throughput --resume RUN`).")
    else:
        doc.ul(throughput_reading(wide, failures))
        targets = target_lines(bundle.tables["throughput"])
        if targets:
            doc.p("The figures the study promises (THROUGHPUT_TARGETS in bench/store/targets.py), checked against "
                  "these rows:")
            doc.ul(targets)
        formulas = byte_formulas(bundle)
        if formulas:
            doc.p("Bytes each op must move (effective bandwidth = these bytes / median time):")
            doc.ul(formulas)
        rfo = ("every destination line is first read from DRAM (read-for-ownership) and a copy credited with 2B "
               "bytes moves about 3B")
        same_size = "Small tensors are compared with a copy of the same size, so both sit in cache."
        if cpu_roofline_has_streaming_copy(bundle):
            doc.p("The roofline is the fastest copy of one input-sized buffer. On CUDA that is `dst.copy_(src)`. "
                  "On a CPU it is the better of `copy_` and a streaming copy (non-temporal stores, built with the "
                  f"`native` kernels): PyTorch's `copy_` stores through the cache, so {rfo}; streaming stores "
                  "skip that read. Each row's message in data/throughput.csv.gz gives both copies. " + same_size)
        else:
            doc.p("The roofline is `dst.copy_(src)` of one input-sized buffer as PyTorch runs it. On a CPU its "
                  f"stores go through the cache, so {rfo}. A kernel that writes with streaming (non-temporal) "
                  "stores skips that read and can pass 100% of this roofline at DRAM-sized tensors, by up to "
                  "1.5×; such a figure means 'beats PyTorch's own copy', not 'beats the memory system'. "
                  + same_size)
        for dev in sorted(set(wide["device_name"])) if not wide.empty else []:
            name = slug(dev)
            doc.h3(f"{dev}")
            doc.figure(F.bandwidth,
                       f"Effective bandwidth vs row length on {dev}, per dtype and op; dashed: measured copy "
                       "bandwidth (the roofline). Where several shapes share a row length, the one with most rows.",
                       wide, dev, palette, out / f"bandwidth-{name}.png")
            doc.figure(F.speedup,
                       f"Speed relative to torch on {dev} at every measured shape (log scale; above 1 is faster).",
                       wide, dev, palette, out / f"speedup-{name}.png")
        if not wide.empty:
            for dtype in ordered(set(wide["dtype"]), ("float32", "bfloat16", "float16", "float64")):
                for op in sorted(set(wide["op"])):
                    doc.table(throughput_table(wide, dtype, op),
                              f"{dtype} {op}: GB/s (% of copy bandwidth, × torch)")
            doc.table(memory_table(wide), "Peak memory beyond the inputs at the largest shape of each op "
                      "(× torch: the variant's peak over torch's; CPU: bytes the allocator handed out during one "
                      "call, see bench.measure.memory.peak_memory)")
            doc.table(first_call_table(wide), "First calls: compilation, autotuning and lazy initialisation, "
                      "timed on their own and never part of a sample")
        doc.table(failures, "Points that could not be measured")
