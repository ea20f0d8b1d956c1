"""Stored rows -> the pandas tables a report is built from (and that `compare` gates on).

Everything here reads run folders through :mod:`bench.results` and returns DataFrames; nothing measures.
The markdown and HTML pages (bench/report.py) and the figures (bench/report_figures.py) are drawn from
the same frames, so the two pages cannot disagree.

    >>> from bench.report_tables import load
    >>> bundle = load(["results/20250101T000000Z-host"])
    >>> verdict(bundle)
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import UserError
from bench.store.rows import BASELINE, TABLES, columns
from bench.store.run import Run
from bench.store.wide import measured

# Columns every merged table gets in front, so rows from several machines keep where they came from.
ORIGIN = ["run", "host", "device_name"]
# What a report section needs, and the study command that writes it.
SECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "throughput": (("throughput",), "softmax-bench throughput --resume RUN"),
    "stability": (("stability", "thresholds"), "softmax-bench stability --resume RUN"),
    "training": (("training", "predictions"), "softmax-bench train --resume RUN"),
}
TP_KEY = ["run", "host", "device_name", "device", "variant", "dtype", "op", "rows", "cols"]
REFERENCE = BASELINE  # the builtin every variant's speed is compared against


@dataclass
class RunMeta:
    """One opened run folder: where it is, which machine wrote it, and what it holds."""

    path: Path
    name: str
    host: str
    info: dict[str, Any]
    tables: list[str] = field(default_factory=list)

    @property
    def machine(self) -> dict[str, Any]:
        m = self.info.get("machine")
        return m if isinstance(m, dict) else {}

    def device_name(self, device: str) -> str:
        """The CPU model or GPU name behind a device string such as 'cpu' or 'cuda:1'."""
        device = str(device)
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
            for gpu in self.machine.get("gpus") or []:
                if isinstance(gpu, dict) and gpu.get("index") == index and gpu.get("name"):
                    return str(gpu["name"])
            return device
        if device == "cpu":
            return str(self.machine.get("cpu") or "cpu")
        return device


@dataclass
class Bundle:
    """Several runs merged: one DataFrame per table, plus what is damaged and what is missing."""

    runs: list[RunMeta]
    tables: dict[str, pd.DataFrame]
    problems: list[str]

    def has(self, table: str) -> bool:
        df = self.tables.get(table)
        return df is not None and not df.empty

    def missing(self) -> list[str]:
        """One plain sentence per section part that a run does not hold."""
        out = []
        for section, (tables, command) in SECTIONS.items():
            for run in self.runs:
                lacking = [t for t in tables if t not in run.tables]
                if lacking:
                    out.append(f"run {run.name} has no {', '.join(t + '.csv' for t in lacking)}, so its "
                               f"{section} part is not shown (write it with `{command}`).")
        return out


def load(paths: Iterable[Path | str]) -> Bundle:
    """Open every run folder (UserError for one that is not a run or has another schema) and merge them."""
    runs: list[RunMeta] = []
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    problems: list[str] = []
    seen: set[Path] = set()
    for p in paths:
        run = Run.open(p)
        if run.path.resolve() in seen:
            continue
        seen.add(run.path.resolve())
        machine = run.info.get("machine") if isinstance(run.info.get("machine"), dict) else {}
        # the folder's own name, however the path was spelled (`RUN/sub/..` is RUN, never '..')
        meta = RunMeta(run.path, run.path.resolve().name, str(machine.get("host") or "?"), run.info)
        for table in TABLES:
            df = run.read(table)
            problems += [f"{meta.name}: {msg}" for msg in df.attrs.get("problems", [])]
            if table in run.tables():  # the live .csv or an archived .csv.gz
                meta.tables.append(table)
            if df.empty:
                continue
            df = df.copy()
            df.insert(0, "device_name", [meta.device_name(d) for d in df["device"]])
            df.insert(0, "host", meta.host)
            df.insert(0, "run", meta.name)
            frames[table].append(df)
        runs.append(meta)
    if not runs:
        raise UserError("no run folder given; pass one or more folders under results/.")
    tables = {}
    for table, parts in frames.items():
        if parts:
            merged = pd.concat(parts, ignore_index=True)
        else:
            merged = pd.DataFrame(columns=ORIGIN + columns(table))
        merged.attrs = {}
        tables[table] = merged
    return Bundle(runs, tables, problems)


# --- formatting ----------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, inf as ∞, missing as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def pct(value: Any) -> str:
    return "—" if _nan(value) else f"{100 * float(value):.0f}%"


def times(value: Any) -> str:
    return "—" if _nan(value) else f"{float(value):.2f}×"


def _nan(value: Any) -> bool:
    try:
        return value is None or value is pd.NA or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def shape(rows: Any, cols: Any) -> str:
    return f"{int(rows)}×{int(cols)}"


# What a quoted name or message could otherwise turn into markup: code, emphasis, links and images, raw HTML
# and entities, table pipes, strikethrough, GitHub's $math$. An underscore inside a word starts no emphasis,
# so `max_subtracted` stays readable in the raw file.
_MD_SPECIAL = re.compile(r"[\\`*\[\]<|~$&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# What opens a block at the start of a line: a heading, a quote, a list item (a marker and a space).
_MD_LEAD = re.compile(r"^(?:#{1,6}|[+-]|\d{1,9}[.)])(?=\s|$)|^>")
_CODE_SPAN = re.compile(r"(`[^`]+`)")


def md_escape(text: Any, block: bool = False) -> str:
    """`text` as one line of literal markdown: every character that markdown (GitHub's flavour) would read as
    markup is backslash-escaped, newlines become spaces, so a variant named `a|b` or a message holding `*`,
    `_`, backticks, `<script>` or newlines can neither break a table nor inject markup. The one helper for
    everything index.md quotes: table cells and alt text as they are, sentences with `block`.

    `block`: the text is a paragraph, list item or heading of the report's own, so its `code` spans (the one
    markup its sentences use; the HTML writer turns them into <code>) are kept, everything around them is
    escaped, and a leading '#', '-', '1.' or '>' cannot open a block.
    """
    flat = re.sub(r"[\r\n]+", " ", str(text)).strip()  # a newline would end a table row or a list item
    parts = _CODE_SPAN.split(flat) if block else [flat]
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: its content is literal markdown already
            out.append(part)
        else:
            out.append(_MD_SPECIAL.sub(lambda m: "\\" + m.group(0), part))
    joined = "".join(out)
    if not block:  # a table cell or alt text: nothing in it can open a block
        return joined
    return _MD_LEAD.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], joined)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (no tabulate dependency); every cell as escaped text (:func:`md_escape`)."""
    head = "| " + " | ".join(md_escape(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def to_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def variants_in(bundle: Bundle) -> list[str]:
    names: set[str] = set()
    for df in bundle.tables.values():
        if not df.empty:
            names.update(df["variant"].astype(str))
    return sorted(names)


# --- machines -------------------------------------------------------------------------------------------

def machines(bundle: Bundle) -> pd.DataFrame:
    rows = []
    for run in bundle.runs:
        m = run.machine
        gpus = ", ".join(f"{g.get('name')} ({(g.get('memory_bytes') or 0) / 2**30:.0f} GiB, sm{g.get('capability')})"
                         for g in m.get("gpus") or [] if isinstance(g, dict)) or "none"
        commit = str(m.get("git_commit") or "?")[:10] + (" (dirty)" if m.get("git_dirty") else "")
        rows.append({
            "run": run.name, "host": run.host, "CPU": m.get("cpu", "?"),
            "cores / torch threads": f"{m.get('cpu_count', '?')} / {m.get('torch_threads', '?')}",
            "GPU": gpus, "python": m.get("python", "?"), "torch": m.get("torch", "?"),
            "CUDA / driver": f"{m.get('torch_cuda') or '—'} / {m.get('cuda_driver') or '—'}",
            "triton": m.get("triton") or "—", "commit": commit,
            "tables": ", ".join(run.tables) or "none",
        })
    return pd.DataFrame(rows)


def commands(bundle: Bundle) -> pd.DataFrame:
    rows = []
    for run in bundle.runs:
        for c in run.info.get("commands") or []:
            argv = c.get("argv") or []
            rows.append({"run": run.name, "started": str(c.get("started", ""))[:19],
                         "command": " ".join(["softmax-bench", *map(str, argv[1:])]) if argv else "?"})
    return pd.DataFrame(rows, columns=["run", "started", "command"])


# --- throughput ----------------------------------------------------------------------------------------

def throughput_wide(bundle: Bundle) -> pd.DataFrame:
    """One row per measured point (TP_KEY) with one column per metric; roofline and speedup derived if absent.

    Only rows with status ok carry numbers (bench.targets.measured: a unit whose output was wrong or that
    timed out contributes none, nor does a speedup against a baseline that failed there); failed points are
    in :func:`throughput_failures`.
    """
    tp = bundle.tables["throughput"]
    if tp.empty:
        return pd.DataFrame(columns=TP_KEY)
    ok = measured(tp)
    if ok.empty:
        return pd.DataFrame(columns=TP_KEY)
    wide = ok.pivot_table(index=TP_KEY, columns="metric", values="value", aggfunc="median").reset_index()
    wide.columns.name = None
    if "gbps" in wide and "copy_gbps" in wide and "roofline_frac" not in wide:
        wide["roofline_frac"] = wide["gbps"] / wide["copy_gbps"]
    if "speedup_vs_torch" not in wide and "median_s" in wide:  # only a measured baseline is in `wide`
        ref = wide[wide["variant"] == REFERENCE].set_index([k for k in TP_KEY if k != "variant"])["median_s"]
        idx = pd.MultiIndex.from_frame(wide[[k for k in TP_KEY if k != "variant"]])
        wide["speedup_vs_torch"] = ref.reindex(idx).to_numpy() / wide["median_s"].to_numpy()
    return wide


def cpu_roofline_has_streaming_copy(bundle: Bundle) -> bool:
    """Whether the CPU rooflines of these runs include the streaming copy (runs before it used copy_ alone;
    bench.throughput writes 'streaming copy' into the message of every CPU copy_gbps row that has one)."""
    tp = bundle.tables["throughput"]
    if tp.empty or "message" not in tp:
        return False
    rows = tp[(tp["metric"] == "copy_gbps") & (tp["device"].astype(str).str.startswith("cpu"))]
    return bool(rows["message"].fillna("").str.contains("streaming copy").any())


# What each status that is not a measurement means, for the reader of the failure list.
STATUS_MEANING = {
    "wrong": "the output failed validation against the float64 reference",
    "timeout": "ran past the per-unit time limit",
    "oom": "out of memory",
    "error": "raised an error",
    "skipped": "not run here",
}
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


# --- training ------------------------------------------------------------------------------------------

TR_KEY = ["run", "host", "device_name", "device", "variant", "regime", "dtype", "seed"]


def training_final(bundle: Bundle) -> pd.DataFrame:
    """One row per training run: last epoch's metrics, seconds, and where (if) it diverged."""
    tr = bundle.tables["training"]
    cols = TR_KEY + ["epochs", "train_loss", "train_acc", "test_acc", "seconds", "diverged_step", "diverged",
                     "status", "message"]
    if tr.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for k, g in tr.groupby(TR_KEY, sort=True, dropna=False):
        rec: dict[str, Any] = dict(zip(TR_KEY, k, strict=False))
        per_epoch = g[g["epoch"].notna() & (g["status"] == "ok")]
        whole = g[g["epoch"].isna() & (g["status"] == "ok")]
        rec["epochs"] = int(per_epoch["epoch"].max()) if len(per_epoch) else 0
        for m in ("train_loss", "train_acc", "test_acc"):
            s = per_epoch[per_epoch["metric"] == m].sort_values("epoch")["value"]
            rec[m] = float(s.iloc[-1]) if len(s) else float("nan")
        for m in ("seconds", "diverged_step"):
            s = whole[whole["metric"] == m]["value"]
            rec[m] = float(s.iloc[-1]) if len(s) else float("nan")
        loss = per_epoch[per_epoch["metric"] == "train_loss"]["value"]
        rec["diverged"] = bool(not _nan(rec["diverged_step"]) or (len(loss) and not np.isfinite(loss).all()))
        bad = g[g["status"] != "ok"]
        rec["status"] = str(bad["status"].iloc[0]) if len(bad) else "ok"
        rec["message"] = str(bad["message"].iloc[0])[:200] if len(bad) else ""
        out.append(rec)
    return pd.DataFrame(out, columns=cols)


def training_table(final: pd.DataFrame) -> pd.DataFrame:
    if final.empty:
        return pd.DataFrame()
    rows = []
    for _, r in final.iterrows():
        div = f"step {int(r['diverged_step'])}" if not _nan(r["diverged_step"]) else ("yes" if r["diverged"] else "no")
        rows.append({"host": r["host"], "device": r["device_name"], "regime": r["regime"], "variant": r["variant"],
                     "dtype": r["dtype"], "seed": r["seed"], "epochs": r["epochs"],
                     "train loss": fmt(r["train_loss"]), "train acc": fmt(r["train_acc"]),
                     "test acc": fmt(r["test_acc"]), "diverged": div, "seconds": fmt(r["seconds"]),
                     "status": r["status"] if r["status"] == "ok" else f"{r['status']}: {r['message']}"})
    return pd.DataFrame(rows)


def training_reading(final: pd.DataFrame) -> list[str]:
    if final.empty:
        return ["No training row is stored, so there is nothing to read yet."]
    out = []
    for regime, g in final.groupby("regime", sort=False):
        # A skipped or failed run trained nothing: it neither kept a finite loss nor diverged.
        not_run = g[g["status"] != "ok"]
        g = g[g["status"] == "ok"]
        kept = g[~g["diverged"]]
        div = g[g["diverged"]]
        text = f"{regime}: "
        if len(kept):
            lo, hi = kept["test_acc"].min(), kept["test_acc"].max()
            several = g["dtype"].nunique() > 1  # name the dtype when a regime trains in more than one
            names = ", ".join(sorted(set(kept["variant"] + (" (" + kept["dtype"] + ")" if several else ""))))
            text += (f"{names} kept finite losses and reached test accuracy {fmt(lo)}"
                     + (f" to {fmt(hi)}" if hi - lo > 5e-4 else ""))
        if len(div):
            parts = []
            for _, r in div.iterrows():
                at = f"step {int(r['diverged_step'])}" if not _nan(r["diverged_step"]) else "an unknown step"
                parts.append(f"{r['variant']} ({r['dtype']}) at {at}, ending at test accuracy {fmt(r['test_acc'])}")
            text += ("; " if len(kept) else "") + "diverged to a non-finite loss: " + "; ".join(parts)
        if len(not_run):
            names = ", ".join(sorted(set(not_run["variant"] + " (" + not_run["status"] + ")")))
            text += ("; " if len(g) else "") + f"not trained: {names}"
        out.append(text + ".")
    return out


def predictions_table(bundle: Bundle, regime: str = "standard") -> pd.DataFrame:
    from bench.store.rows import FASHION_LABELS

    pr = bundle.tables["predictions"]
    if pr.empty:
        return pd.DataFrame()
    pr = pr[pr["regime"] == regime] if (pr["regime"] == regime).any() else pr
    first = pr.drop_duplicates(["run", "device", "dtype", "seed", "regime"]).iloc[0]
    pr = pr[(pr["run"] == first["run"]) & (pr["device"] == first["device"]) & (pr["seed"] == first["seed"])
            & (pr["dtype"] == first["dtype"]) & (pr["regime"] == first["regime"])]

    def name(i: Any) -> str:
        return FASHION_LABELS[int(i)] if not _nan(i) and 0 <= int(i) < len(FASHION_LABELS) else str(i)

    wide = pr.pivot_table(index=["index", "label"], columns="variant", values="predicted", aggfunc="first")
    out = pd.DataFrame({"test image": [i for i, _ in wide.index], "true": [name(lab) for _, lab in wide.index]})
    for v in wide.columns:
        out[v] = [name(p) + ("" if p == lab else " ✗") for p, (_, lab) in zip(wide[v], wide.index, strict=False)]
    return out


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


def verdict(bundle: Bundle) -> pd.DataFrame:
    """One row per variant: speed at representative shapes, thresholds, families failed, accuracy, divergence."""
    variants = variants_in(bundle)
    table = pd.DataFrame({"variant": variants})
    if not variants:
        return table
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
    final = training_final(bundle)
    if not final.empty:
        several = final["device_name"].nunique() > 1
        for (regime, dtype, dev), g in final.groupby(["regime", "dtype", "device_name"], sort=False):
            multi_dtype = final.loc[final["regime"] == regime, "dtype"].nunique() > 1
            label = "test acc " + regime + (f" {dtype}" if multi_dtype else "") + (f" {dev}" if several else "")
            table[label] = [_accuracy_cell(g[g["variant"] == v]) for v in variants]
        div = final[final["diverged"]]
        trained = set(final.loc[final["status"] == "ok", "variant"])
        table["diverged in"] = [
            ", ".join(sorted(set(div.loc[div["variant"] == v, "regime"]))) or "none"
            if v in trained else "—" for v in variants]
    return table
