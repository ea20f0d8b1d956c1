"""Run folders -> a readable report (the regression gate between two runs is bench/compare.py).

    softmax-bench report results/<run>                       # -> reports/<run>/index.md and index.html
    softmax-bench report results/<cpu-run> results/<gpu-run> --out reports/cpu-and-h100
    softmax-bench report results/<run> --out my-folder --force   # write into a folder that is not a report
    python -m bench.report check reports/<name>              # open index.html in headless Chromium

The report reads only stored rows (bench/results.py), so any report can be regenerated and runs from
several machines merge into one: every row keeps its run, host and device name. index.md (GitHub: pipe
tables, relative PNG links) and index.html (one self-contained file, PNGs inlined as data: URIs) are
written from the same list of blocks, which is built from the pandas tables in bench/report_tables.py;
index.md quotes every name and message through one escaping helper (report_tables.md_escape).

A render writes the list of files it wrote into DIR/softmax-bench-report.json, and the next render of DIR
replaces or deletes those and nothing else. A non-empty DIR that is not a report (no such list, and no
index.md + index.html of an earlier softmax-bench) is refused unless --force, which deletes nothing.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError
from bench.report import bundle as T
from bench.store.rows import FASHION_LABELS
from bench.store.run import Run
from bench.store.targets import target_lines
from bench.studies.training.presets import REGIMES

REPORTS_DIR = Path("reports")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#555}.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em}
code{background:#f2f2f2;padding:0 .2em}
"""


# --- the document: one list of blocks, two writers --------------------------------------------------------

@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str], css: str = "") -> None:
        if items:
            self.blocks.append(("ul", (items, css)))

    def table(self, df: pd.DataFrame, caption: str = "") -> None:
        if df is not None and not df.empty:
            self.blocks.append(("table", (df, caption)))

    def figure(self, draw: Any, caption: str, *args: Any) -> None:
        """Draw a figure with `draw(*args)`; a figure that fails becomes a sentence, never a crash."""
        try:
            path = draw(*args)
        except Exception as exc:  # one bad figure must not cost the reader the rest of the report
            self.p(f"(A figure could not be drawn: {caption.split(':')[0]}: {type(exc).__name__}: {exc})")
            return
        if path is not None:
            self.blocks.append(("fig", (path, caption)))

    def markdown(self) -> str:
        """GitHub markdown; every text passes through T.md_escape (names and messages are quoted verbatim)."""
        def text(value: Any) -> str:
            return T.md_escape(value, block=True)

        out = [f"# {text(self.title)}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {text(value)}", ""]
            elif kind == "h3":
                out += [f"### {text(value)}", ""]
            elif kind == "p":
                out += [text(value), ""]
            elif kind == "ul":
                out += [f"- {text(item)}" for item in value[0]] + [""]
            elif kind == "table":
                df, caption = value
                out += ([f"*{text(caption)}*", ""] if caption else []) + [T.to_markdown(df), ""]
            elif kind == "fig":
                path, caption = value
                out += [f"![{T.md_escape(caption)}]({path.name})", "", f"*{text(caption)}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{_inline(value)}</h2>")
            elif kind == "h3":
                body.append(f"<h3>{_inline(value)}</h3>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                items, css = value
                cls = f' class="{css}"' if css else ""
                body.append(f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            elif kind == "table":
                df, caption = value
                body.append((f"<p><em>{_inline(caption)}</em></p>" if caption else "") + T.to_html(df))
            elif kind == "fig":
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(caption)}</figcaption></figure>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only markdown the blocks use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


# --- building the report ----------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "device"


def _steps_per_epoch(bundle: T.Bundle) -> dict[str, float]:
    """Minibatches per epoch per regime (from run.json presets, else the named regime), to place divergence."""
    out: dict[str, float] = {}
    n_train = 60000
    for run in bundle.runs:
        for cmd in run.info.get("commands") or []:
            regimes = ((cmd.get("presets") or {}).get("training") or {}).get("regimes") or {}
            for name, preset in regimes.items():
                if isinstance(preset, dict) and preset.get("batch_size"):
                    out.setdefault(name, math.ceil(n_train / float(preset["batch_size"])))
    for name, regime in REGIMES.items():
        out.setdefault(name, math.ceil(n_train / regime.batch_size))
    return out


def build(bundle: T.Bundle, out: Path) -> Doc:
    """Write the figures into `out` and return the document that refers to them."""
    from bench.report import figures as F

    names = ", ".join(r.name for r in bundle.runs)
    doc = Doc(f"softmax-bench report: {names}")
    palette = F._palette(T.variants_in(bundle))
    doc.p("Softmax and cross-entropy variants measured three ways: throughput against the device's own copy "
          "bandwidth, numerical stability against a high-precision reference, and final accuracy of the d2l "
          "chapter's softmax regression on Fashion-MNIST. Every number below is read from the stored rows of "
          "the run folders listed here; the tidy rows themselves are in `data/` (gzipped CSV).")

    doc.h("Machines and versions")
    doc.table(T.machines(bundle))
    doc.table(T.commands(bundle), "Commands that wrote into the run folders")
    missing = bundle.missing()
    if missing or bundle.problems:
        doc.h("What is missing or damaged")
        doc.ul(missing, "missing")
        doc.ul(bundle.problems, "missing")

    doc.h("Verdict")
    doc.p("One row per variant. % roofline is the effective bandwidth over the copy bandwidth the same device "
          "measured in the same run; × torch is torch's median time over the variant's (above 1 is faster). "
          "Thresholds are the largest logit magnitude still handled correctly ('never': correct up to the "
          "dtype's largest finite value); test accuracy is after the last epoch of each regime.")
    doc.table(T.verdict(bundle))
    _wrong_and_timed_out(doc, bundle)

    # -- throughput
    doc.h("Throughput")
    wide = T.throughput_wide(bundle)
    failures = T.throughput_failures(bundle)
    if not bundle.has("throughput"):
        doc.p("No run holds throughput.csv: not measured (run `softmax-bench throughput --resume RUN`).")
    else:
        doc.ul(T.throughput_reading(wide, failures))
        targets = target_lines(bundle.tables["throughput"])
        if targets:
            doc.p("The figures the study promises (THROUGHPUT_TARGETS in bench/presets.py), checked against "
                  "these rows:")
            doc.ul(targets)
        formulas = _byte_formulas()
        if formulas:
            doc.p("Bytes each op must move (effective bandwidth = these bytes / median time):")
            doc.ul(formulas)
        rfo = ("every destination line is first read from DRAM (read-for-ownership) and a copy credited with 2B "
               "bytes moves about 3B")
        same_size = "Small tensors are compared with a copy of the same size, so both sit in cache."
        if T.cpu_roofline_has_streaming_copy(bundle):
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
            slug = _slug(dev)
            doc.h3(f"{dev}")
            doc.figure(F.bandwidth,
                       f"Effective bandwidth vs row length on {dev}, per dtype and op; dashed: measured copy "
                       "bandwidth (the roofline). Where several shapes share a row length, the one with most rows.",
                       wide, dev, palette, out / f"bandwidth-{slug}.png")
            doc.figure(F.speedup,
                       f"Speed relative to torch on {dev} at every measured shape (log scale; above 1 is faster).",
                       wide, dev, palette, out / f"speedup-{slug}.png")
        if not wide.empty:
            for dtype in _ordered(set(wide["dtype"]), ("float32", "bfloat16", "float16", "float64")):
                for op in sorted(set(wide["op"])):
                    doc.table(T.throughput_table(wide, dtype, op),
                              f"{dtype} {op}: GB/s (% of copy bandwidth, × torch)")
            doc.table(T.memory_table(wide), "Peak memory beyond the inputs at the largest shape of each op "
                      "(× torch: the variant's peak over torch's; CPU: bytes the allocator handed out during one "
                      "call, see bench.timing.peak_memory)")
            doc.table(T.first_call_table(wide), "First calls: compilation, autotuning and lazy initialisation, "
                      "timed on their own and never part of a sample")
        doc.table(failures, "Points that could not be measured")

    # -- stability
    doc.h("Stability")
    cells = T.stability_cells(bundle)
    if not bundle.has("stability"):
        doc.p("No run holds stability.csv: not measured (run `softmax-bench stability --resume RUN`).")
    else:
        doc.ul(T.stability_reading(cells, bundle))
        for dev in sorted(set(cells["device_name"])):
            doc.figure(F.stability_heatmap,
                       f"Stability on {dev}: pass (green) or fail (red) per variant, input family and dtype; "
                       "the number is the largest relative error in units of the dtype's unit roundoff u.",
                       cells, dev, out / f"stability-{_slug(dev)}.png")
        doc.table(T.stability_table(cells), "Per family: result and largest relative error (units of u)")
    if bundle.has("thresholds"):
        doc.figure(F.thresholds,
                   "Thresholds: the largest logit magnitude at which each variant's output is still finite and "
                   "within tolerance, per dtype.", bundle.tables["thresholds"], palette, out / "thresholds.png")
        doc.table(T.thresholds_table(bundle), "Thresholds per variant, op, kind and dtype")
        doc.table(T.probes(bundle), "The probe rows the thresholds were searched on")
    elif bundle.has("stability"):
        doc.p("No run holds thresholds.csv: overflow/underflow thresholds were not searched.")

    # -- training
    doc.h("Training")
    final = T.training_final(bundle)
    if not bundle.has("training"):
        doc.p("No run holds training.csv: not trained (run `softmax-bench train --regime all --resume RUN`).")
    else:
        doc.ul(T.training_reading(final))
        doc.figure(F.training_curves,
                   "Train loss (log scale), train accuracy and test accuracy per epoch, one column per regime; "
                   "✕ marks where a run's loss first became non-finite.",
                   bundle.tables["training"], final, _steps_per_epoch(bundle), palette, out / "training.png")
        doc.table(T.training_table(final), "Last epoch of every training run")
    pr = bundle.tables["predictions"]
    if not pr.empty:
        grid = _grid_rows(pr)
        doc.figure(F.prediction_grid, "The chapter's predict_ch3: the first test images, true and predicted labels.",
                   grid, FASHION_LABELS, out / "predictions.png")
        doc.table(T.predictions_table(bundle), "Predictions of every variant on the same images (✗ = wrong)")
    elif bundle.has("training"):
        doc.p("No predictions.csv: the prediction grid is not shown.")
    return doc


def _wrong_and_timed_out(doc: Doc, bundle: T.Bundle, limit: int = 30) -> None:
    """Every throughput point whose output was wrong or that timed out, with its message, under the verdict:
    such a point has no time, so nothing else in the report would show it but the failure table."""
    failures = T.throughput_failures(bundle)
    flagged = failures[failures["status"].isin(["wrong", "timeout"])]
    if flagged.empty:
        return
    doc.h3("Wrong outputs and timeouts")
    doc.p("These points hold no time: no GB/s, speedup, target, verdict figure or plot above counts them.")
    items = [f"{r.variant}: {r.op} {r.shape} {r.dtype} on {r.device_name}: {r.status} "
             f"({T.STATUS_MEANING[r.status]}): {r.message or 'no message'}"
             for r in flagged.head(limit).itertuples(index=False)]
    if len(flagged) > limit:
        items.append(f"… and {len(flagged) - limit} more, in the table 'Points that could not be measured'.")
    doc.ul(items, "missing")


def _ordered(values: set[str], preferred: tuple[str, ...]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def _grid_rows(pr: pd.DataFrame) -> pd.DataFrame:
    """The chapter's own picture: the standard regime, the chapter's naive variant if present."""
    d = pr[pr["regime"] == "standard"] if (pr["regime"] == "standard").any() else pr
    variant = "naive" if (d["variant"] == "naive").any() else sorted(set(d["variant"]))[0]
    d = d[d["variant"] == variant]
    first = d.iloc[0]
    return d[(d["run"] == first["run"]) & (d["device"] == first["device"]) & (d["dtype"] == first["dtype"])
             & (d["seed"] == first["seed"])]


def _byte_formulas() -> list[str]:
    """The throughput study's byte formulas, when it publishes them (bench.throughput.BYTE_FORMULAS)."""
    try:
        from bench.studies.throughput import ops as throughput
    except Exception:
        return []
    formulas = getattr(throughput, "BYTE_FORMULAS", None)
    if isinstance(formulas, dict):
        return [f"{op}: `{text}`" for op, text in formulas.items()]
    return []


# --- the report folder: what a render may write and delete --------------------------------------------------

MANIFEST = "softmax-bench-report.json"
# Every file a render writes matches one of these; a manifest entry that does not is never deleted.
_REPORT_FILE = re.compile(r"index\.md|index\.html|[^/]+\.png|data/[^/]+\.csv\.gz|runs/[^/]+/[^/]+")


def _default_out(bundle: T.Bundle) -> Path:
    # bundle.runs[0].name is the resolved folder's name: `RUN/sub/..` gives reports/RUN, never reports/..
    name = bundle.runs[0].name + (f"-and-{len(bundle.runs) - 1}-more" if len(bundle.runs) > 1 else "")
    return REPORTS_DIR / name


def _legacy_report(out: Path) -> set[str] | None:
    """The files a softmax-bench from before manifests wrote into `out`, recognised by its own index.md and
    index.html; None when `out` is not such a report. Archived runs/ are left out: they are never deleted."""
    md, page = out / "index.md", out / "index.html"
    if not (md.is_file() and page.is_file()):
        return None
    text = md.read_text(errors="replace")
    with open(page, errors="replace") as f:
        head = f.read(4096)
    if not text.startswith("# softmax-bench report: ") or "<title>softmax-bench report: " not in head:
        return None
    figures = re.findall(r"^!\[.*\]\(([^/()]+\.png)\)$", text, re.M)
    tables = [f"data/{t}.csv.gz" for t in T.TABLES if (out / "data" / f"{t}.csv.gz").is_file()]
    return {"index.md", "index.html", *figures, *tables}


def previous_report_files(out: Path | str, force: bool = False) -> set[str]:
    """The files (relative paths) an earlier render wrote into `out`: the only ones a new render may delete.

    An absent or empty folder holds none. A report folder is recognised by its manifest (MANIFEST), or, for a
    report written before manifests, by its own index.md and index.html. Any other non-empty folder holds a
    user's files: UserError unless `force`, which writes into it and deletes nothing of what was there.
    Call it before a long study too, so a bad --out is refused before anything is measured.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; give a folder for the report.")
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["files"]
            if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
                return set(listed)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
        if force:
            return set()
        raise UserError(f"{manifest} is damaged, so which files of {out} an earlier report wrote is unknown. "
                        "Delete the folder's old report files yourself, or pass --force to write into it "
                        "without deleting anything.")
    legacy = _legacy_report(out)
    if legacy is not None:
        return legacy
    if force:
        return set()
    shown = sorted(p.name for p in out.iterdir())
    raise UserError(f"--out {out} is not empty ({', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''}) and "
                    f"is not a softmax-bench report (it has no {MANIFEST}). A report replaces the files it wrote "
                    "before and nothing else, so it will not write into a folder of other files: give a new or "
                    "empty folder, or pass --force to write into this one (index.md, index.html, *.png and "
                    "data/*.csv.gz of the same names are overwritten; nothing else is touched).")


def _remove_stale(out: Path, stale: set[str], inputs: list[Path]) -> None:
    """Delete the files an earlier render wrote that this one did not rewrite (figures no longer drawn,
    tables no longer held), but never a file outside `out`, a link, or a file of a run being rendered."""
    root = out.resolve()
    for rel in sorted(stale):
        path = out / rel
        if not _REPORT_FILE.fullmatch(rel) or ".." in rel.split("/") or path.is_symlink() or not path.is_file():
            continue
        real = path.resolve()
        if not real.is_relative_to(root) or any(real.is_relative_to(run) for run in inputs):
            continue
        real.unlink()
        for parent in (real.parent, real.parent.parent):  # an emptied data/ or runs/<name>/ goes too
            if parent != root and parent.is_relative_to(root) and not any(parent.iterdir()):
                parent.rmdir()


def _write_tables(bundle: T.Bundle, out: Path) -> None:
    data = out / "data"
    data.mkdir(exist_ok=True)
    for table, df in bundle.tables.items():
        if not df.empty:  # gzipped: the stability table alone is 7 MB as text, 0.5 MB compressed
            df.to_csv(data / f"{table}.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})


def _archive_runs(runs: list[Path | str], stage: Path, out: Path) -> None:
    """Copy each run folder into stage/runs/<name>/ (unless it is rendered from out/runs/<name> itself)."""
    for path in runs:
        name = Path(path).resolve().name
        if (out / "runs" / name).resolve() == Path(path).resolve():
            continue  # rendering the archived copy itself: it stays as it is
        Run.open(path).archive(stage / "runs" / name)


def _overwritten(out: Path, new: set[str]) -> list[str]:
    """Files this render would write over that no earlier render wrote (a user's): none may be lost. An
    earlier archive of the same run (runs/<name>/ with its run.json) is the report's own and is replaced."""
    def own_archive(rel: str) -> bool:
        parts = rel.split("/")
        return parts[0] == "runs" and len(parts) == 3 and (out / "runs" / parts[1] / "run.json").is_file()

    return sorted(rel for rel in new if (out / rel).exists() and not own_archive(rel))


def _stage(bundle: T.Bundle, runs: list[Path | str], stage: Path, out: Path, keep_runs: bool) -> set[str]:
    """Write the whole report into `stage`; returns the relative paths written."""
    doc = build(bundle, stage)
    _write_tables(bundle, stage)
    if keep_runs:  # the run folders themselves, so the report can be rendered again from what is committed
        _archive_runs(runs, stage, out)
    (stage / "index.md").write_text(doc.markdown())
    (stage / "index.html").write_text(doc.html())  # reads the staged figures
    return {str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()}


def render(runs: list[Path | str], out: Path | str | None = None, keep_runs: bool = False,
           force: bool = False) -> Path:
    """Render run folders into `out` (default reports/<first run name>); returns the index.md path.

    Replaces only what an earlier render wrote there (see :func:`previous_report_files`) and never a file it
    did not write, unless `force`. The report is written aside first, so a refused or failed render leaves
    `out` as it was. The files written are listed in `out`/MANIFEST for the next render.
    """
    bundle = T.load(runs)
    out = Path(out) if out is not None else _default_out(bundle)
    previous = previous_report_files(out, force)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".softmax-bench-render-", dir=out) as tmp:
        written = _stage(bundle, runs, Path(tmp), out, keep_runs)
        clash = [] if force else _overwritten(out, written - previous)
        if clash:
            raise UserError(f"{out} holds {', '.join(clash[:5])}{', ...' if len(clash) > 5 else ''}, which this "
                            "report would write over, but no earlier report wrote it. Move it away, render into "
                            "another folder, or pass --force to overwrite it.")
        for rel in sorted(written):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / rel, out / rel)
    inputs = [Path(p).resolve() for p in runs]
    # archived runs this render reads from stay listed: they are still the report's own copies
    written |= {rel for rel in previous if any((out / rel).resolve().is_relative_to(run) for run in inputs)
                and (out / rel).is_file()}
    _remove_stale(out, previous - written, inputs)
    manifest = {"written_by": "softmax-bench report", "note": "the files this report wrote; the next render "
                "replaces or deletes these and nothing else", "files": sorted(written)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out / "index.md"


# --- the report command -------------------------------------------------------------------------------------

def add_arguments_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (results/<timestamp>-<host>)")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: reports/<first run name>)")
    parser.add_argument("--force", action="store_true",
                        help="write into DIR even when it holds files and is not a softmax-bench report (files of "
                             "the report's names are overwritten; nothing else is deleted)")
    parser.add_argument("--keep-runs", action="store_true",
                        help="also copy each run folder, gzipped, into DIR/runs/ (for a committed reference report: "
                             "`softmax-bench report DIR/runs/*` renders it again)")


def run_report(args: argparse.Namespace) -> int:
    index = render(args.runs, args.out, keep_runs=args.keep_runs, force=args.force)
    if "## What is missing or damaged" in index.read_text():
        print("softmax-bench report: some parts are missing or damaged; the report says which.", file=sys.stderr)
    print(f"report: {index} and {index.parent / 'index.html'}")
    return 0


# --- what a person sees: headless Chromium -------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser_check(report: Path | str, screenshot: Path | str | None = None, timeout: int = 120) -> int:
    """Open report/index.html in headless Chromium, dump the DOM and take a screenshot.

    Fails (returns 1) when the browser cannot load the page, or an <img> is missing, external, or not a
    decodable PNG, or the DOM lacks the report's sections. Run through `make check-report`.
    """
    import matplotlib.image as mpimg

    report = Path(report)
    page = report / "index.html" if report.is_dir() else report
    if not page.is_file():
        raise UserError(f"{page} does not exist; render a report first (softmax-bench report RUN).")
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise UserError("no Chromium found; `make check-report` installs Debian's chromium (as root).")
    shot = Path(screenshot) if screenshot else Path("results") / "check-report" / f"{page.parent.name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    expected = len(re.findall(r"!\[(?:\\.|[^\]\\])*\]\([^)]+\.png\)", (page.parent / "index.md").read_text())) \
        if (page.parent / "index.md").exists() else None
    with tempfile.TemporaryDirectory(prefix="softmax-bench-chromium-") as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--hide-scrollbars"]
        url = page.resolve().as_uri()
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout)
        snap = subprocess.run(flags + [f"--screenshot={shot.resolve()}", "--window-size=1400,2400", url],
                              capture_output=True, text=True, timeout=timeout)
    errors = []
    if dom.returncode != 0 or "<h1>" not in dom.stdout:
        errors.append(f"the page did not load (exit {dom.returncode}): {dom.stderr.strip()[-500:]}")
    images = re.findall(r"<img\b[^>]*>", dom.stdout)
    for i, tag in enumerate(images, 1):
        src = re.search(r'src="([^"]*)"', tag)
        if not src or not src.group(1).startswith("data:image/png;base64,"):
            errors.append(f"image {i} is not an inlined PNG: {tag[:120]}")
            continue
        try:
            import io

            pixels = mpimg.imread(io.BytesIO(base64.b64decode(src.group(1).split(",", 1)[1])), format="png")
            if pixels.shape[0] < 50 or pixels.shape[1] < 50:
                errors.append(f"image {i} is only {pixels.shape[1]}×{pixels.shape[0]} pixels")
        except Exception as exc:
            errors.append(f"image {i} does not decode as PNG: {exc}")
    if expected is not None and len(images) != expected:
        errors.append(f"index.md links {expected} figures but the page shows {len(images)}")
    if re.search(r'<(?:script|link|img)\b[^>]*(?:src|href)="(?:https?:)?//', dom.stdout):
        errors.append("the page refers to something outside itself")
    if snap.returncode != 0 or not shot.exists() or shot.stat().st_size == 0:
        errors.append(f"no screenshot was written (exit {snap.returncode}): {snap.stderr.strip()[-300:]}")
    for e in errors:
        print(f"check-report: {e}", file=sys.stderr)
    print(f"check-report: {page}: {len(images)} images, {'FAILED' if errors else 'OK'}; screenshot {shot}")
    return 1 if errors else 0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description="open a report in headless Chromium")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="load index.html in headless Chromium; non-zero if it or an image fails")
    p.add_argument("report", nargs="?", help="report folder (default: the most recently written under reports/)")
    p.add_argument("--screenshot", help="where to write the screenshot (default: results/check-report/NAME.png)")
    args = parser.parse_args(argv)
    try:
        report = args.report
        if not report:
            pages = sorted(REPORTS_DIR.glob("*/index.html"), key=lambda p: p.stat().st_mtime)
            if not pages:
                raise UserError("no report under reports/; render one with softmax-bench report RUN.")
            report = pages[-1].parent
        return browser_check(report, args.screenshot)
    except UserError as exc:
        print(f"check-report: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
