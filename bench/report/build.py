"""Run folders -> a readable report, written into a folder with its manifest (the regression gate between two
runs is `softmax-bench compare`).

    softmax-bench report results/<run>                       # -> reports/<run>/index.md and index.html
    softmax-bench report results/<cpu-run> results/<gpu-run> --out reports/cpu-and-h100
    softmax-bench report results/<run> --out my-folder --force   # write into a folder that is not a report
    python -m bench.report check reports/<name>              # open index.html in headless Chromium

The report reads only stored rows and run.json (bench.store), so any report can be regenerated and runs from
several machines merge into one: every row keeps its run, host and device name. index.md (GitHub: pipe
tables, relative PNG links) and index.html (one self-contained file, PNGs inlined as data: URIs) are
written from the same document (bench.report.render), whose blocks the sections (bench.report.sections)
build from the bundle (bench.report.bundle); index.md quotes every name and message through one escaping
helper (bench.report.render.md_escape).

A render writes the list of files it wrote into DIR/softmax-bench-report.json, and the next render of DIR
replaces or deletes those and nothing else. A non-empty DIR that is not a report (no such list, and no
index.md + index.html of an earlier softmax-bench) is refused unless --force, which deletes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from bench import UserError
from bench.report import figures as F
from bench.report.browser import browser_check
from bench.report.bundle import Bundle, load, variants_in
from bench.report.render import Doc
from bench.report.sections import findings, overview, stability, throughput, training, verdict
from bench.store.rows import TABLES
from bench.store.run import Run

# --- building the report ----------------------------------------------------------------------------------

# The report's sections, in the order a reader meets them.
SECTIONS = (findings, overview, verdict, throughput, stability, training)


def build(bundle: Bundle, out: Path) -> Doc:
    """Write the figures into `out` and return the document that refers to them: the sections in order,
    each reading only the bundle."""
    doc = Doc(f"softmax-bench report: {', '.join(r.name for r in bundle.runs)}")
    palette = F._palette(variants_in(bundle))
    for section in SECTIONS:
        section.add(doc, bundle, out, palette)
    return doc



REPORTS_DIR = Path("reports")


# --- the report folder: what a render may write and delete --------------------------------------------------

MANIFEST = "softmax-bench-report.json"
# Every file a render writes matches one of these; a manifest entry that does not is never deleted.
_REPORT_FILE = re.compile(r"index\.md|index\.html|[^/]+\.png|data/[^/]+\.csv\.gz|runs/[^/]+/[^/]+")


def _default_out(bundle: Bundle) -> Path:
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
    tables = [f"data/{t}.csv.gz" for t in TABLES if (out / "data" / f"{t}.csv.gz").is_file()]
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
                # archived runs (--keep-runs) are measurements, not renderings: a later render without
                # --keep-runs must never delete them, so they are never among the deletable files
                return {f for f in listed if not f.startswith("runs/")}
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


def _write_tables(bundle: Bundle, out: Path) -> None:
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


def _stage(bundle: Bundle, runs: list[Path | str], stage: Path, out: Path, keep_runs: bool) -> set[str]:
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
    bundle = load(runs)
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
