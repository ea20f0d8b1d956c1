"""What a user trusts the report with, on real run folders (real sweeps of real and misbehaving variants):

- it never deletes a file it did not write (a manifest lists what the last render wrote);
- every run reports, whatever subset of devices, dtypes, ops and statuses it holds;
- a wrong output or a timeout is shown with its message and never counted as a time;
- index.md quotes names and messages verbatim but inert (no broken table, no injected markup).

    .venv/bin/pytest -q tests/test_trust_report.py
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import _report_runs as R
import pandas as pd
import pytest
import torch

import softmax_impls
from bench.cli import main
from bench.measure.timer import TimerBudget
from bench.report import bundle as T
from bench.report import figures as F
from bench.report.build import MANIFEST, previous_report_files, render
from bench.report.render import md_escape
from bench.report.sections.stability import stability_cells, stability_table
from bench.report.sections.verdict import verdict_tables
from bench.store.rows import StabilityRow, ThroughputRow, TrainingRow
from bench.store.run import Run
from bench.store.targets import ThroughputTarget, target_lines
from bench.store.wide import measured
from bench.studies.throughput.presets import SweepBlock, ThroughputPreset
from bench.studies.throughput.summary import summary_table
from bench.studies.throughput.sweep import throughput_into

FAST = TimerBudget(warmup=1, warmup_s=0.01, min_reps=3, budget_s=0.01)
CPU = torch.device("cpu")
TORCH = softmax_impls.get("torch")


def _sweep(run: Run, variants: list, shapes=((256, 10),), dtypes=("float32",), ops=("softmax_fwd",),
           timeout: float | None = None) -> Run:
    """A real throughput sweep into `run`: one torch thread, a tiny timer budget."""
    preset = ThroughputPreset("t", "test", blocks=(SweepBlock(tuple(ops), tuple(shapes), tuple(dtypes)),), timer=FAST)
    throughput_into(run, variants, CPU, preset, summary=False, threads=1, timeout=timeout)
    return run


def _new_run(root: Path) -> Run:
    return Run.create(root, ["softmax-bench", "test"], {})


def _raise(message: str):
    def fail(*args, **kwargs):
        raise RuntimeError(message)
    return fail


def _liar(name: str = "liar") -> softmax_impls.Variant:
    """Fast and wrong: twice the probabilities (what the validation against float64 catches)."""
    return dataclasses.replace(TORCH, name=name, softmax=lambda x, dim=-1: torch.softmax(x, dim) * 2)


def _sleeper(name: str = "sleeper") -> softmax_impls.Variant:
    def slow(x, dim=-1):
        time.sleep(5)
        return torch.softmax(x, dim)
    return dataclasses.replace(TORCH, name=name, softmax=slow)


def _section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. the report never deletes a user's files ------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """torch and naive at one shape, and one variant's stability rows: a throughput and a stability figure."""
    run = _sweep(_new_run(tmp_path_factory.mktemp("runs")), [TORCH, softmax_impls.get("naive")])
    run.append(*R.stability_rows(R.variants()[-1:]))
    return run.path


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory) -> Path:
    """A triton-only run on this CPU: every unit skipped (hand-written Triton kernels need CUDA)."""
    return _sweep(_new_run(tmp_path_factory.mktemp("runs")), [softmax_impls.get("triton")]).path


def test_folder_of_other_files_is_refused_unless_force(small_run: Path, tmp_path: Path, capsys):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "photo.png").write_bytes(b"\x89PNG my holiday")
    (mine / "data" / "accounts.csv.gz").write_bytes(b"my data")
    (mine / "notes.txt").write_text("mine")
    before = _files(mine)
    assert main(["report", str(small_run), "--out", str(mine)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a softmax-bench report" in err and "--force" in err and "Traceback" not in err
    assert _files(mine) == before  # nothing written, nothing deleted

    assert main(["report", str(small_run), "--out", str(mine), "--force"]) == 0
    after = _files(mine)
    assert all(after[name] == data for name, data in before.items())  # every file of the user's, unchanged
    listed = json.loads((mine / MANIFEST).read_text())["files"]
    assert {"index.md", "index.html", "data/throughput.csv.gz"} <= set(listed)
    assert not set(listed) & set(before)
    # now a report folder: a second render needs no --force, and still leaves the user's files alone
    assert main(["report", str(small_run), "--out", str(mine)]) == 0
    assert all(_files(mine)[name] == data for name, data in before.items())


def test_rerender_replaces_only_what_it_wrote(small_run: Path, triton_run: Path, tmp_path: Path):
    out = tmp_path / "report"
    render([small_run], out)
    figures = {p.name for p in out.glob("*.png")}
    assert any(n.startswith("bandwidth-") for n in figures) and any(n.startswith("stability-") for n in figures)
    (out / "mine.png").write_bytes(b"mine")
    (out / "data" / "mine.csv.gz").write_bytes(b"mine")
    render([triton_run], out)  # nothing measured: no figure, no stability table
    left = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not any(n.startswith(("bandwidth-", "stability-")) for n in left)  # stale figures of the old render
    assert "data/stability.csv.gz" not in left and "data/throughput.csv.gz" in left
    assert {"mine.png", "data/mine.csv.gz"} <= left
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == left - {"mine.png", "data/mine.csv.gz", MANIFEST}


def test_a_users_file_in_a_report_folder_is_never_written_over(small_run: Path, triton_run: Path,
                                                               tmp_path: Path, capsys):
    figure = next(render([small_run], tmp_path / "scratch").parent.glob("stability-*.png")).name
    out = tmp_path / "report"
    render([triton_run], out)  # a report that draws no figure
    (out / figure).write_bytes(b"the user's own picture")
    before = _files(out)
    assert main(["report", str(small_run), "--out", str(out)]) == 2  # it would draw that very name
    assert figure in " ".join(capsys.readouterr().err.split())
    assert _files(out) == before  # refused before anything was written: the old report is intact
    assert main(["report", str(small_run), "--out", str(out), "--force"]) == 0
    assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_unresolved_run_path_names_the_report_after_the_run(small_run: Path, tmp_path: Path, monkeypatch):
    shutil.copytree(small_run, tmp_path / "results" / "the-run")
    (tmp_path / "results" / "the-run" / "sub").mkdir()
    (tmp_path / "keep.png").write_bytes(b"the user's")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "results/the-run/sub/.."]) == 0
    assert (tmp_path / "reports" / "the-run" / "index.md").is_file()
    assert (tmp_path / "keep.png").read_bytes() == b"the user's" and not (tmp_path / "index.md").exists()


def test_manifest_entries_never_reach_outside_the_report(small_run: Path, tmp_path: Path):
    out = tmp_path / "report"
    render([small_run], out)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"outside")
    (out / "link.png").symlink_to(outside)
    (out / "notes.txt").write_text("mine")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] += ["../outside.png", str(outside), "link.png", "notes.txt", "data/../../outside.png"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    render([small_run], out)
    assert outside.read_bytes() == b"outside" and (out / "link.png").is_symlink()
    assert (out / "notes.txt").read_text() == "mine"


def test_damaged_manifest_is_refused_unless_force(small_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    render([small_run], out)
    (out / MANIFEST).write_text("{not json")
    assert main(["report", str(small_run), "--out", str(out)]) == 2
    assert "is damaged" in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(small_run), "--out", str(out), "--force"]) == 0


def test_reports_from_before_manifests_still_render(small_run: Path, tmp_path: Path):
    # The committed reference report was written before manifests: recognised by its own index.md/index.html.
    for committed in Path(__file__).resolve().parents[1].glob("reports/*/index.md"):
        files = previous_report_files(committed.parent)
        assert {"index.md", "index.html"} <= files and any(f.endswith(".png") for f in files)
        assert not any(f.startswith("runs/") for f in files)  # the archived runs are never deleted
    old = tmp_path / "old"
    render([small_run], old, keep_runs=True)
    (old / MANIFEST).unlink()  # as an earlier softmax-bench left it
    (old / "mine.png").write_bytes(b"mine")  # not linked from index.md: not the report's
    stale = next(old.glob("stability-*.png"))
    archived = old / "runs" / small_run.name
    shutil.rmtree(archived)
    shutil.copytree(small_run, archived)
    (archived / "stability.csv").unlink()  # the re-render draws no stability figure
    assert main(["report", str(archived), "--out", str(old)]) == 0  # as `make bench` re-renders one
    assert not stale.exists() and (old / "mine.png").read_bytes() == b"mine"
    assert (archived / "throughput.csv").is_file()  # the run it was rendered from is never touched


# --- 2. every run reports, whatever it holds -------------------------------------------------------------

def _subset_run(kind: str, root: Path, fashion) -> Run:
    run = _new_run(root)
    if kind == "float64-only":
        return _sweep(run, [TORCH, softmax_impls.get("naive")], dtypes=("float64",), ops=("softmax_fwd", "ce_fwd"))
    if kind == "bfloat16-only":
        return _sweep(run, [TORCH, softmax_impls.get("logsumexp")], dtypes=("bfloat16",))
    if kind == "triton-only":
        return _sweep(run, [softmax_impls.get("triton")], dtypes=("float32", "bfloat16"))
    if kind == "oom-only":  # 4 TiB inputs: the study refuses them before the OOM killer would
        return _sweep(run, [TORCH], shapes=((1 << 20, 1 << 20),))
    # error-only: a variant that raises everywhere, in all three studies
    from bench.studies.stability.presets import StabilityPreset
    from bench.studies.stability.sweep import stability_into
    from bench.studies.training.sweep import train_into

    boom = dataclasses.replace(TORCH, name="exploding", softmax=_raise("kernel exploded"),
                               cross_entropy=_raise("kernel exploded"), log_softmax=None)
    _sweep(run, [boom])
    stability_into(run, [boom], CPU, StabilityPreset("t", "test", lengths=(10,), long_lengths=(10,),
                                                     families=("translation",), thresholds=False), dtypes=["float32"])
    small = dataclasses.replace(fashion, train_images=fashion.train_images[:256],
                                train_labels=fashion.train_labels[:256])
    train_into(run, [boom], ["standard"], CPU, epochs=1, dataset=small)
    return run


SUBSETS = ("float64-only", "bfloat16-only", "triton-only", "oom-only", "error-only")


@pytest.mark.parametrize("kind", SUBSETS)
def test_every_subset_of_a_run_summarises_and_reports(kind: str, tmp_path: Path, fashion):
    run = _subset_run(kind, tmp_path / "runs", fashion)
    rows = run.read("throughput")
    statuses = set(rows["status"])
    assert ("ok" in statuses) == kind.startswith(("float64", "bfloat16"))
    text = summary_table(rows)
    for variant in set(rows["variant"]):
        assert variant in text
    target_lines(rows)  # no KeyError, whatever the rows hold
    md = render([run.path], tmp_path / "report").read_text()
    verdict = _section(md, "Verdict")
    for variant in set(rows["variant"]):
        assert re.search(rf"^\| {variant} \|", verdict, re.M), variant
    throughput = _section(md, "Throughput")
    if "ok" in statuses:
        dtype = kind.split("-")[0]
        assert f"*{dtype} softmax_fwd: GB/s" in throughput and "bandwidth-" in throughput
    else:
        assert "No throughput row holds a bandwidth" in throughput and "Points that could not be measured" in md
        message = {"triton-only": "need CUDA", "oom-only": "not attempted", "error-only": "kernel exploded"}[kind]
        assert message in throughput
    if kind == "error-only":
        assert "kernel exploded" in _section(md, "Stability") and "kernel exploded" in _section(md, "Training")


# --- 3. wrong outputs and timeouts -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory) -> Run:
    """Real sweeps: torch, naive, a variant whose output is wrong and one past the time limit; then, at a
    second shape, a `torch` whose output is wrong (the baseline itself) beside an honest naive."""
    run = _new_run(tmp_path_factory.mktemp("runs"))
    _sweep(run, [TORCH, softmax_impls.get("naive"), _liar(), _sleeper()], timeout=0.5)
    _sweep(run, [_liar("torch"), softmax_impls.get("naive")], shapes=((128, 10),))
    return run


def test_wrong_and_timeout_rows_are_what_the_study_writes(flagged_run: Run):
    rows = flagged_run.read("throughput")
    status = rows[rows["metric"] == "median_s"].set_index(["variant", "rows"])["status"]
    assert status[("liar", 256)] == "wrong" and status[("sleeper", 256)] == "timeout"
    assert status[("torch", 128)] == "wrong" and status[("naive", 128)] == "ok"
    assert len(rows[rows["variant"].isin(["liar", "sleeper"])]) == 2  # one row each, no value
    assert rows.loc[rows["variant"].isin(["liar", "sleeper"]), "value"].isna().all()


def test_wrong_and_timeout_never_enter_numbers_targets_or_figures(flagged_run: Run, tmp_path: Path, monkeypatch):
    bundle = T.load([flagged_run.path])
    wide = T.throughput_wide(bundle)
    assert not set(wide["variant"]) & {"liar", "sleeper"}
    assert wide[(wide["variant"] == "torch") & (wide["rows"] == 128)].empty
    assert wide.loc[wide["rows"] == 128, "speedup_vs_torch"].isna().all()  # no ratio against a wrong torch
    target = ThroughputTarget("liar at 90%", "cpu", ("softmax_fwd",), ("float32",), "roofline_frac", 0.0,
                              variant="liar", shapes=((256, 10),))
    assert target_lines(bundle.tables["throughput"], (target,)) == ["not measured: liar at 90%"]
    drawn: list[pd.DataFrame] = []
    for name in ("bandwidth", "speedup"):
        original = getattr(F, name)
        monkeypatch.setattr(F, name, lambda wide, *a, f=original: (drawn.append(wide), f(wide, *a))[1])
    md = render([flagged_run.path], tmp_path / "report").read_text()
    assert drawn and not any(set(d["variant"]) & {"liar", "sleeper"} for d in drawn)
    verdict = _section(md, "Verdict")
    liar = next(line for line in verdict.splitlines() if line.startswith("| liar |"))
    assert "| 1 wrong |" in liar and "%" not in liar and "×" not in liar
    assert "| 1 timeout |" in next(line for line in verdict.splitlines() if line.startswith("| sleeper |"))
    tables = _section(md, "Throughput").split("*float32 softmax_fwd: GB/s", 1)[1]
    header = next(line for line in tables.splitlines() if line.startswith("| host |"))
    assert "liar" not in header and "sleeper" not in header


def test_wrong_and_timeout_are_shown_with_their_message(flagged_run: Run, tmp_path: Path):
    index = render([flagged_run.path], tmp_path / "report")
    md, page = index.read_text(), (index.parent / "index.html").read_text()
    listed = _section(md, "Verdict").split("### Wrong outputs and timeouts", 1)[1]
    assert re.search(r"^- liar: softmax_fwd 256×10 float32 on .*: wrong \(the output failed validation against "
                     r"the float64 reference\): not timed: disagrees with the float64 reference", listed, re.M)
    assert re.search(r"^- sleeper: .*: timeout \(ran past the per-unit time limit\): .*ran past its time limit",
                     listed, re.M)
    assert re.search(r"^- torch: softmax_fwd 128×10 .*: wrong", listed, re.M)
    assert "Points that could not be measured: 2 wrong" in md and "1 timeout" in md
    assert "Wrong outputs and timeouts" in page and "disagrees with the float64 reference" in page
    text = summary_table(flagged_run.read("throughput"))
    assert "wrong: liar softmax_fwd 256x10 float32 on cpu: not timed: disagrees" in text
    assert "timeout: sleeper softmax_fwd 256x10 float32 on cpu: " in text
    liar = next(line for line in text.splitlines() if line.startswith("liar "))
    assert liar.split()[-1] == "wrong" and "%" not in liar  # its cell says wrong, never a GB/s


def test_measured_drops_stored_speedups_against_a_failed_baseline():
    unit = ("cpu", "float32", "softmax_fwd", 64, 10)
    rows = pd.DataFrame([dataclasses.asdict(r) for r in (
        ThroughputRow("torch", *unit, "median_s", None, "s", "wrong", "NaN in the output"),
        ThroughputRow("naive", *unit, "median_s", 1e-6, "s"),
        ThroughputRow("naive", *unit, "speedup_vs_torch", 3.0, "ratio"),  # against the wrong torch
        ThroughputRow("naive", *unit, "peak_bytes", None, "B", "skipped", "no tracker"),  # one metric alone
    )])
    kept = measured(rows)
    assert list(kept["variant"]) == ["naive"] and list(kept["metric"]) == ["median_s"]


def test_stability_and_training_timeouts_are_not_results(small_run: Path, tmp_path: Path):
    run = _new_run(tmp_path / "runs")
    run.append(StabilityRow("naive", "cpu", "float32", "softmax", "translation", 0.0, 10, "passed", 1.0, "bool"),
               StabilityRow("naive", "cpu", "float32", "softmax", "translation", 100.0, 10, "passed", None, "bool",
                            "timeout", "the unit ran past its time limit of 60 s"),
               TrainingRow("naive", "standard", "cpu", "float32", 0, 1, "test_acc", 0.61, "ratio"),
               TrainingRow("naive", "standard", "cpu", "float32", 0, None, "seconds", None, "s", "timeout",
                           "training run ran past its time limit of 600 s"))
    bundle = T.load([run.path])
    assert stability_table(stability_cells(bundle))["translation"].tolist() == ["TIMEOUT"]
    verdict = dict(verdict_tables(bundle))["Training"]
    assert verdict.loc[0, "test acc standard"] == "timeout"  # a partial accuracy is no result
    md = render([run.path], tmp_path / "report").read_text()
    assert "timeout: training run ran past its time limit" in _section(md, "Training")


# --- 4. index.md quotes names and messages inert ----------------------------------------------------------

NASTY = "bad | *input* _x_ `code` <script>alert(1)</script>\n# injected heading\n| fake | row |"


def test_md_escape_exact():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("max_subtracted *x* _y_") == "max_subtracted \\*x\\* \\_y\\_"
    assert md_escape("<script>") == "\\<script>"
    assert md_escape("one\n# two\r\nthree") == "one # two three"
    assert md_escape("run `softmax-bench x|y` now `", block=True) == "run `softmax-bench x|y` now \\`"
    assert md_escape("# not a heading", block=True) == "\\# not a heading"
    assert md_escape("3.11.7") == "3.11.7"
    assert md_escape("[x](y) $a$ ~b~ &amp;") == "\\[x\\](y) \\$a\\$ \\~b\\~ \\&amp;"


def test_names_and_messages_cannot_break_index_md(tmp_path: Path):
    run = _new_run(tmp_path / "runs")
    _sweep(run, [TORCH, dataclasses.replace(TORCH, name="a|b_<i>"),
                 dataclasses.replace(TORCH, name="c*d", softmax=_raise(NASTY))])
    # the study keeps a message's first line; a row from elsewhere may hold all of them
    run.append(ThroughputRow("e_f", "cpu", "float32", "softmax_fwd", 256, 10, "median_s", None, "s", "wrong", NASTY))
    index = render([run.path], tmp_path / "report")
    md, page = index.read_text(), (index.parent / "index.html").read_text()
    assert "a\\|b\\_\\<i>" in md and "c\\*d" in md
    quoted = "bad \\| \\*input\\* \\_x\\_ \\`code\\` \\<script>alert(1)\\</script>"
    assert f"| error | RuntimeError: {quoted} |" in md  # a table cell
    assert "- e_f: softmax_fwd 256×10 float32 on" in md  # a list item, whose message keeps every line ...
    assert f"{quoted} # injected heading \\| fake \\| row \\|" in md  # ... on one line
    assert not re.search(r"(?<!\\)<", md)  # no raw HTML at all
    assert "\n# injected" not in md and "\n| fake" not in md
    for table in re.findall(r"(?:^\|.*\|$\n?)+", md, re.M):  # every row of a table has the header's cells
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in table.strip().splitlines()}
        assert len(counts) == 1, table[:300]
    assert "<script>" not in page and "&lt;script&gt;alert(1)" in page and "a|b_&lt;i&gt;" in page
