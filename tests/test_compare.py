"""softmax-bench compare as a CI gate: 0 on identical runs, 1 on a real slowdown / newly failed family /
newly diverging regime, 2 on bad input. Regressions are real: a variant doing its work eight times, or the
chapter's naive code shipped under the name `logsumexp` (tests/_report_runs.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import _report_runs as R
import pytest

from bench import UserError
from bench.cli import main
from bench.report import judge_speed, parse_threshold


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    run = R.make_run(root, R.variants(), parts=("throughput", "stability"))
    import torch

    from bench.training import train_into

    train_into(run, [v for v in R.variants() if v.name == "logsumexp"], ["standard", "raw-pixels"],
               torch.device("cpu"), epochs=1, dataset=R.small_dataset())
    return run.path


def test_identical_runs_pass(base: Path, tmp_path: Path, capsys):
    same = tmp_path / "same"
    shutil.copytree(base, same)
    assert main(["compare", str(base), str(same)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_real_slowdown_fails(base: Path, tmp_path: Path, capsys):
    slow = R.make_run(tmp_path, R.variants(slow=("logsumexp",)), parts=("throughput",),
                      shapes=((1024, 1024),)).path
    assert main(["compare", str(base), str(slow), "--threshold", "10%", "--all"]) == 1
    out = capsys.readouterr().out
    flagged = [line for line in out.splitlines() if line.rstrip().endswith(" slower")]
    assert any(line.split()[0] == "logsumexp" and "1024×1024" in line for line in flagged), out


def test_newly_failed_family_and_divergence_fail(base: Path, tmp_path: Path, capsys):
    import torch

    from bench.training import train_into

    swapped = R.variants(swap={"logsumexp": "naive"})
    run = R.make_run(tmp_path, swapped, parts=("stability",))
    train_into(run, [v for v in swapped if v.name == "logsumexp"], ["standard", "raw-pixels"], torch.device("cpu"),
               epochs=1, dataset=R.small_dataset())
    assert main(["compare", str(base), str(run.path)]) == 1
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["logsumexp"] and "translation" in line and "newly fails" in line
               for line in out.splitlines()), out
    assert any("raw-pixels" in line and "newly diverges" in line for line in out.splitlines()), out
    # families torch passed before still pass: only the swapped variant is blamed
    assert not any(line.split()[:1] == ["torch"] and "newly" in line for line in out.splitlines())


def test_bad_input_exits_2(base: Path, tmp_path: Path, capsys):
    assert main(["compare", str(base), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = R.make_run(tmp_path, [], parts=()).path  # a real run folder that measured nothing
    assert main(["compare", str(base), str(empty)]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["compare", str(base), str(base), "--threshold", "fast"]) == 2


def test_judge_speed_needs_both_the_median_and_the_spreads():
    base = {"median_s": 1.0, "p20_s": 0.9, "p80_s": 1.1}
    assert judge_speed(base, {"median_s": 1.3, "p20_s": 1.2, "p80_s": 1.4}, 0.1) == "slower"
    # median 30% up but NEW's p20 (1.05) lies inside BASE's spread (up to 1.1): not a claim we can make
    assert judge_speed(base, {"median_s": 1.3, "p20_s": 1.05, "p80_s": 1.4}, 0.1) == "same"
    assert judge_speed(base, {"median_s": 1.05, "p20_s": 1.02, "p80_s": 1.08}, 0.1) == "same"
    assert judge_speed(base, {"median_s": 0.5, "p20_s": 0.45, "p80_s": 0.55}, 0.1) == "faster"
    assert judge_speed({"median_s": 1.0}, {"median_s": 1.2}, 0.1) == "slower (median only)"
    assert judge_speed({"median_s": math.nan}, {"median_s": 1.2}, 0.1) == "n/a"


def test_parse_threshold():
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold("0.25") == pytest.approx(0.25)
    assert parse_threshold("5") == pytest.approx(0.05)
    with pytest.raises(UserError):
        parse_threshold("ten")
