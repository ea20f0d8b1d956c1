"""softmax-bench compare as a CI gate: 0 on identical runs, 1 on a real slowdown / newly failed family /
newly diverging regime / missing or NaN figure, 2 on bad input. Regressions are real: the `slowed` plugin
(tests/plugin_fixtures.py) doing torch's work SLOWDOWN times over, a variant doing its work eight times, or
the chapter's naive code shipped under the name `logsumexp` (tests/_report_runs.py). The statistics are
checked against values worked out by hand."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from pathlib import Path

import _report_runs as R
import pytest
import torch

import softmax_impls
from bench import UserError
from bench.cli import main
from bench.measure.timer import TimerBudget
from bench.report.compare import parse_threshold
from bench.report.stats import fast_end, mann_whitney_greater, midranks
from bench.store.run import Run
from bench.studies.throughput.presets import SweepBlock, ThroughputPreset
from bench.studies.throughput.sweep import throughput_into

CPU = torch.device("cpu")
# four points a variant (the gate needs more than half of a variant's points to call it slower), ~1 s a run
TINY = ThroughputPreset("tiny", "compare tests", blocks=(SweepBlock(("softmax_fwd", "ce_fwd"), ((64, 100), (256, 10)),
                                                                    ("float32",)),),
                        timer=TimerBudget(warmup=1, min_reps=5, budget_s=0.01))


def _sweep(root: Path, names: list[str], *, slowdown: float = 1.0, monkeypatch: pytest.MonkeyPatch | None = None,
           swap: dict[str, softmax_impls.Variant] | None = None, preset: ThroughputPreset = TINY, threads: int = 1,
           **kwargs) -> Path:
    """A real throughput run of `names` (a name in `swap` runs that variant's code under the name)."""
    if monkeypatch is not None:
        monkeypatch.setenv("SLOWDOWN", str(slowdown))
    variants = [(swap or {}).get(n) or softmax_impls.get(n) for n in names]
    run = Run.create(root, ["softmax-bench", "test"], {})
    throughput_into(run, variants, CPU, preset, threads=threads, summary=False, **kwargs)
    return run.path


def _lines(out: str, variant: str) -> list[str]:
    return [line for line in out.splitlines() if line.split()[:1] == [variant]]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    run = R.make_run(root, R.variants(), parts=("throughput", "stability"))
    from bench.studies.training.sweep import train_into

    train_into(run, [v for v in R.variants() if v.name == "logsumexp"], ["standard", "raw-pixels"], CPU, epochs=1,
               dataset=R.small_dataset())
    return run.path


# --- statistics, against values worked out by hand ---------------------------------------------------------

def test_midranks_share_tied_ranks():
    assert midranks([3.0, 1.0, 2.0, 2.0]) == ([4.0, 1.0, 2.5, 2.5], [2])
    assert midranks([5.0, 5.0, 5.0]) == ([2.0, 2.0, 2.0], [3])
    assert midranks([]) == ([], [])


def test_mann_whitney_by_hand():
    # a = 1 2 3, b = 4 5 6: b's ranks 4+5+6 = 15, U = 15 - 3*4/2 = 9, mean 9/2, variance 3*3/12*7 = 5.25,
    # z = (9 - 4.5 - 0.5) / sqrt(5.25) = 1.745743; p = erfc(z / sqrt 2) / 2 = 0.0404278
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0404278, abs=1e-7)
    # the other way round: U = 0, z = (0 - 4.5 - 0.5) / sqrt(5.25) = -2.182179; p = 0.985452
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(0.985452, abs=1e-6)
    # ties: a = 1 2 2, b = 2 3 3; ranks 1 | 3 3 3 | 5.5 5.5, U = 3 + 5.5 + 5.5 - 6 = 8; tie groups of 3 and 2:
    # variance 9/12 * (7 - (24 + 6) / 30) = 4.5, z = (8 - 4.5 - 0.5) / sqrt(4.5) = sqrt(2), p = erfc(1) / 2
    assert mann_whitney_greater([1, 2, 2], [2, 3, 3]) == pytest.approx(math.erfc(1) / 2, rel=1e-12)
    assert mann_whitney_greater([1, 1], [1, 1]) == 1.0  # every value tied: no evidence either way
    assert mann_whitney_greater([], [1.0]) == 1.0


def test_fast_end_is_the_tenth_percentile():
    # position (10 - 1) * 0.1 = 0.9 between 1 and 2
    assert fast_end([10, 9, 8, 7, 6, 5, 4, 3, 2, 1]) == pytest.approx(1.9)
    assert fast_end([5.0]) == 5.0


def test_parse_threshold():
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold(" 2.5 % ") == pytest.approx(0.025)
    assert parse_threshold("0.10") == pytest.approx(0.10)
    assert parse_threshold("0") == 0
    assert parse_threshold("150%") == pytest.approx(1.5)
    for ambiguous in ("10", "1", "1.5"):
        with pytest.raises(UserError, match="ambiguous"):
            parse_threshold(ambiguous)
    for bad in ("ten", "-5%", "nan", "inf%", ""):
        with pytest.raises(UserError):
            parse_threshold(bad)


# --- the gate on real runs ---------------------------------------------------------------------------------

def _skip_peak(run: Path, variant: str) -> None:
    """Mark `variant`'s peak_bytes rows skipped, as the CPU sweep once stored every `compiled` unit's."""
    _edit_rows(run, lambda rows: [r | {"value": "", "status": "skipped", "message": "no peak under torch.compile"}
                                  if r["variant"] == variant and r["metric"] == "peak_bytes" else r for r in rows])


def test_a_slowdown_in_one_variant_is_caught_even_with_its_peak_bytes_skipped(misbehaving, tmp_path, monkeypatch,
                                                                              capsys):
    before = _sweep(tmp_path, ["torch", "logsumexp", "slowed"], monkeypatch=monkeypatch)
    after = _sweep(tmp_path, ["torch", "logsumexp", "slowed"], monkeypatch=monkeypatch, slowdown=3)
    for run in (before, after):
        _skip_peak(run, "slowed")  # the case that once hid every time of the unit
    assert main(["compare", str(before), str(after)]) == 1
    out = capsys.readouterr().out
    slower = [line for line in _lines(out, "slowed") if line.rstrip().endswith(" slower")]
    assert len(slower) >= 3, out  # a majority of its four points, each with both figures and its p-value
    for line in slower:
        fields = line.split()
        assert fields[fields.index("µs") + 3].startswith("+") and float(fields[fields.index("µs") + 4]) < 0.05


def test_a_run_of_one_variant_is_judged_on_its_own(misbehaving, tmp_path, monkeypatch, capsys):
    # a kernel project's CI sweeps its own variant alone; torch is then timed hidden, only for the speedup
    before = _sweep(tmp_path, ["slowed"], monkeypatch=monkeypatch)
    after = _sweep(tmp_path, ["slowed"], monkeypatch=monkeypatch, slowdown=3)
    assert main(["compare", str(before), str(after)]) == 1
    assert sum(line.rstrip().endswith(" slower") for line in _lines(capsys.readouterr().out, "slowed")) >= 3


def test_identical_runs_pass(base: Path, tmp_path: Path, capsys):
    same = tmp_path / "same"
    shutil.copytree(base, same)
    assert main(["compare", str(base), str(same)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_missing_variant_points_and_figures_fail_unless_allowed(misbehaving, tmp_path, capsys):
    before = _sweep(tmp_path, ["torch", "logsumexp", "slowed"])
    after = _sweep(tmp_path, ["torch", "slowed"], shapes=[(64, 100)])  # logsumexp and a shape left out
    args = ["compare", str(before), str(after), "--threshold", "500%"]  # time is not what this test is about
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "variant logsumexp: missing from NEW" in out
    assert any("256×10" in line and "missing in NEW" in line for line in _lines(out, "torch")), out
    assert main([*args, "--allow-missing"]) == 0
    capsys.readouterr()
    # a figure gone from NEW (here: its copy bandwidth row) fails on its own
    _edit_rows(after, lambda rows: [r for r in rows if not (r["metric"] == "copy_gbps" and r["variant"] == "torch")])
    assert main(args[:3] + ["--threshold", "500%", "--allow-missing"]) == 0  # allowed
    assert main(args) == 1
    assert any("copy_gbps" in line and "missing in NEW" in line for line in _lines(capsys.readouterr().out, "torch"))


def _edit_rows(run: Path, edit) -> None:
    """Rewrite `run`'s throughput.csv as `edit(rows)` (a damaged or hand-edited run)."""
    path = run / "throughput.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fieldnames = list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(edit(rows))


def test_nan_and_newly_failing_points_fail(misbehaving, tmp_path, capsys):
    before = _sweep(tmp_path, ["torch", "slowed"])
    # the same name shipping code that returns NaN: the harness stores it as `wrong`, which newly fails
    broken = _sweep(tmp_path, ["torch", "slowed"], swap={"slowed": dataclasses.replace(
        softmax_impls.get("nan_everywhere"), name="slowed")})
    assert main(["compare", str(before), str(broken), "--threshold", "500%"]) == 1
    assert all("newly wrong" in line for line in _lines(capsys.readouterr().out, "slowed"))
    # a NaN median with status ok (a damaged or hand-edited run) fails too, never passes without a word
    damaged = tmp_path / "damaged"
    shutil.copytree(before, damaged)
    _edit_rows(damaged, lambda rows: [r | {"value": "nan"} if r["variant"] == "torch" and r["metric"] == "median_s"
                                      else r for r in rows])
    assert main(["compare", str(before), str(damaged)]) == 1
    assert all("NaN in NEW" in line for line in _lines(capsys.readouterr().out, "torch"))


def test_faster_is_a_stale_baseline_warning_unless_asked_to_fail(misbehaving, tmp_path, monkeypatch, capsys):
    before = _sweep(tmp_path, ["torch", "slowed"], monkeypatch=monkeypatch, slowdown=4)
    after = _sweep(tmp_path, ["torch", "slowed"], monkeypatch=monkeypatch, slowdown=1)
    args = ["compare", str(before), str(after), "--threshold", "100%"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert sum(line.rstrip().endswith(" faster") for line in _lines(out, "slowed")) >= 3, out
    assert main([*args, "--fail-on-faster"]) == 1


def test_threads_that_differ_are_judged_against_torch_beside_them(tmp_path, capsys):
    """A run picks its torch threads from the load: a variant is then judged by its time over torch's in each
    run; torch itself is not judged (a warning, not a failure), and the output says how to judge it too."""
    before = _sweep(tmp_path, ["torch", "logsumexp"], threads=1)
    after = _sweep(tmp_path, ["torch", "logsumexp"], threads=2)
    assert main(["compare", str(before), str(after), "--threshold", "500%", "--all"]) == 0
    out = capsys.readouterr().out
    assert all("threads differ (1 vs 2), not judged" in line for line in _lines(out, "torch"))
    assert not any("threads differ" in line for line in _lines(out, "logsumexp")) and "--threads N" in out


@pytest.mark.parametrize("kind", ["float64", "bfloat16", "oom", "stability", "training"])
def test_every_subset_of_a_study_compares(kind: str, tmp_path: Path, capsys):
    def run() -> Path:
        if kind in ("float64", "bfloat16"):
            return _sweep(tmp_path, ["torch", "naive"], dtypes=[kind])
        if kind == "oom":  # more memory than any machine: every unit an `oom` row, nothing timed
            return _sweep(tmp_path, ["torch", "naive"], shapes=[(1 << 20, 1 << 20)])
        r = R.make_run(tmp_path, [v for v in R.variants() if v.name in ("torch", "naive")],
                       parts=(kind,) if kind == "stability" else ())
        if kind == "training":
            from bench.studies.training.sweep import train_into

            train_into(r, [softmax_impls.get("naive")], ["standard"], CPU, epochs=1, dataset=R.small_dataset())
        return r.path

    first, second = run(), run()
    assert main(["compare", str(first), str(second), "--threshold", "500%"]) == 0
    assert "regression(s)" in capsys.readouterr().out


def test_old_runs_without_samples_are_judged_on_quantiles(base: Path, tmp_path: Path, capsys):
    slow = R.make_run(tmp_path, R.variants(slow=("logsumexp",)), parts=("throughput",), shapes=((1024, 1024),)).path
    assert main(["compare", str(base), str(slow), "--threshold", "10%", "--all", "--allow-missing"]) == 1
    out = capsys.readouterr().out
    flagged = [line for line in _lines(out, "logsumexp") if line.rstrip().endswith(" slower")]
    assert any("1024×1024" in line and "p20/p80" in line for line in flagged), out
    assert "rests on less evidence" in out


def test_newly_failed_family_and_divergence_fail(base: Path, tmp_path: Path, capsys):
    from bench.studies.training.sweep import train_into

    swapped = R.variants(swap={"logsumexp": "naive"})
    run = R.make_run(tmp_path, swapped, parts=("stability",))
    train_into(run, [v for v in swapped if v.name == "logsumexp"], ["standard", "raw-pixels"], CPU, epochs=1,
               dataset=R.small_dataset())
    assert main(["compare", str(base), str(run.path), "--allow-missing"]) == 1
    out = capsys.readouterr().out
    assert any("translation" in line and "newly fails" in line for line in _lines(out, "logsumexp")), out
    assert any("raw-pixels" in line and "newly diverges" in line for line in out.splitlines()), out
    # families torch passed before still pass: only the swapped variant is blamed
    assert not any("newly" in line for line in _lines(out, "torch"))


def test_bad_input_exits_2(base: Path, tmp_path: Path, capsys):
    assert main(["compare", str(base), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = R.make_run(tmp_path, [], parts=()).path  # a real run folder that measured nothing
    assert main(["compare", str(base), str(empty)]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["compare", str(base), str(base), "--threshold", "fast"]) == 2
    assert main(["compare", str(base), str(base), "--threshold", "10"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and "10%" in err and "0.1" in err
