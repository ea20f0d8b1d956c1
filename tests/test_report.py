"""softmax-bench report on real (small) run folders: files, images, self-contained HTML, merged machines,
partial and damaged runs. The run folders hold real measurements (see tests/_report_runs.py)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import _report_runs as R
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.report.build import render

VARIANTS = ("naive", "max_subtracted", "logsumexp", "torch")


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return R.make_run(root, R.variants(), dataset=R.small_dataset()).path


@pytest.fixture(scope="session")
def report(base_run, tmp_path_factory) -> Path:
    return render([base_run], tmp_path_factory.mktemp("report") / "base")


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_report_files_images_and_tables(report: Path):
    md = report.read_text()
    page = (report.parent / "index.html").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"training.png", "predictions.png", "thresholds.png"} <= set(links)
    assert any(name.startswith("bandwidth-") for name in links) and any(n.startswith("stability-") for n in links)
    for name in links:  # relative links that GitHub resolves next to index.md
        assert "/" not in name and (report.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one self-contained file: every image inlined and decodable, nothing fetched from elsewhere
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) == len(links)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert not re.search(r'(?:src|href)="(?!data:)', page)
    verdict = _section(md, "Verdict")
    for v in VARIANTS:
        assert re.search(rf"^\| {v} \|", verdict, re.M), v  # one row per variant
        assert v in _section(md, "Throughput") and v in _section(md, "Stability") and v in _section(md, "Training")
    assert "% roofline" in verdict and "× torch" in verdict and "overflow float32" in verdict
    # readings come from the numbers: naive diverges under raw pixels and fails the translation family
    # the verdict's narrow tables (speed, stability, training), one row per variant in each
    naive_row = " ".join(line for line in verdict.splitlines() if line.startswith("| naive |"))
    assert "raw-pixels" in naive_row and "translation" in naive_row
    assert "torch passes all" in md and "naive fails" in md
    assert "diverged to a non-finite loss: " in md
    # the promised figures are checked against the rows; this small run holds none of their shapes
    assert "- not measured: CPU: narrow >= 10x torch on the chapter's shape" in _section(md, "Throughput")
    data = pd.read_csv(report.parent / "data" / "throughput.csv.gz")  # the tidy rows beside the report
    assert {"run", "host", "variant", "metric", "value"} <= set(data.columns) and len(data) > 0


def _copy(run: Path, to: Path, keep: tuple[str, ...] = ("training", "predictions")) -> Path:
    """A copy of `run` holding only the `keep` tables (fewer figures to draw: a faster test)."""
    shutil.copytree(run, to)
    for csv in to.glob("*.csv"):
        if csv.stem not in keep:
            csv.unlink()
    return to


def test_two_machines_merge(base_run: Path, tmp_path: Path):
    first = _copy(base_run, tmp_path / "first-run")
    other = _copy(base_run, tmp_path / "other-run")
    info = json.loads((other / "run.json").read_text())
    info["machine"]["host"] = "second-box"
    info["machine"]["cpu"] = "Other CPU 9000"
    (other / "run.json").write_text(json.dumps(info))
    index = render([first, other], tmp_path / "merged")
    md = index.read_text()
    assert "second-box" in _section(md, "Machines and versions")
    training = _section(md, "Training")
    assert "| second-box | Other CPU 9000 | standard |" in training  # rows keep their host and device
    verdict = _section(md, "Verdict")
    header = next(line for line in verdict.splitlines() if line.startswith("| variant |"))
    assert "Other CPU 9000" in header  # per-device columns once two devices are merged


def test_partial_run_says_what_is_missing(base_run: Path, tmp_path: Path):
    part = _copy(base_run, tmp_path / "partial")
    md = render([part], tmp_path / "out").read_text()
    assert "No run holds throughput.csv" in md and "No run holds stability.csv" in md
    assert "has no throughput.csv" in _section(md, "What is missing or damaged")
    assert "training.png" in md


def test_truncated_csv_is_reported_not_fatal(base_run: Path, tmp_path: Path, capsys):
    cut = _copy(base_run, tmp_path / "cut", keep=("training",))
    data = (cut / "training.csv").read_bytes()
    (cut / "training.csv").write_bytes(data[: len(data) - 7])  # a kill mid-write leaves half a line
    assert main(["report", str(cut), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "index.md").read_text()
    assert "training.csv: the last line is truncated" in _section(md, "What is missing or damaged")
    assert "missing or damaged" in capsys.readouterr().err


def test_bad_input_gives_one_message(base_run: Path, tmp_path: Path, capsys):
    old = tmp_path / "old-schema"
    shutil.copytree(base_run, old)
    text = (old / "stability.csv").read_text().replace("max_rel_err_u", "max_rel_err", 1)
    header, rest = text.split("\n", 1)
    (old / "stability.csv").write_text(header.replace(",n,", ",length,") + "\n" + rest)
    assert main(["report", str(old), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    flat = " ".join(err.split())  # the CLI wraps its one paragraph at 100 columns
    assert "stability.csv has columns" in flat and "schema version" in flat and "Traceback" not in err

    info = json.loads((old / "run.json").read_text())
    info["schema"] = 0
    (old / "run.json").write_text(json.dumps(info))
    assert main(["report", str(old)]) == 2
    assert "schema 0" in " ".join(capsys.readouterr().err.split())

    assert main(["report", str(tmp_path)]) == 2  # a folder, but not a run
    assert "not a run folder" in capsys.readouterr().err


def test_roofline_paragraph_says_which_copy_the_runs_measured(base_run: Path, tmp_path: Path):
    # base_run's rows hold copy_ alone (as runs made before the streaming copy do): the report warns that a
    # streaming kernel can pass 100%. A real sweep now writes both copies into every CPU copy_gbps row.
    import softmax_impls
    from bench.measure.timer import TimerBudget
    from bench.store.run import Run
    from bench.studies.throughput.presets import SweepBlock, ThroughputPreset
    from bench.studies.throughput.sweep import throughput_into

    old = _section(render([_copy(base_run, tmp_path / "old", ("throughput",))], tmp_path / "r_old").read_text(),
                   "Throughput")
    assert "can pass 100%" in old and "better of `copy_` and a streaming copy" not in old
    if softmax_impls.get("native").unavailable("cpu") is not None:
        pytest.skip("the native kernels (and so the streaming copy) cannot be built here")
    run = Run.create(tmp_path / "runs")
    preset = ThroughputPreset("t", "test", blocks=(SweepBlock(("softmax_fwd",), ((256, 10),), ("float32",)),),
                              timer=TimerBudget(warmup=1, min_reps=3, budget_s=0.01))
    throughput_into(run, [softmax_impls.get("torch")], torch.device("cpu"), preset, summary=False)
    new = _section(render([run.path], tmp_path / "r_new").read_text(), "Throughput")
    assert "better of `copy_` and a streaming copy" in new and "can pass 100%" not in new
