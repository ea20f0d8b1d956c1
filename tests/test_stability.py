"""The stability study itself: reference, families, verdicts, thresholds, the run folder and the commands."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

import softmax_impls
from bench.cli import main
from bench.store.run import Run
from bench.studies.stability.families import FAMILIES, limits, round_to
from bench.studies.stability.judge import judge, measure
from bench.studies.stability.presets import StabilityPreset
from bench.studies.stability.reference import reference
from bench.studies.stability.sweep import format_summary, stability_into
from bench.studies.stability.thresholds import PROBES, _bits, _value, probe, threshold

CPU = torch.device("cpu")
SUM_FACTOR = math.log(sum(math.exp(-k) for k in range(10)))  # the probe [c, ..., c-9]: ln 1.582 = 0.4587


# -- reference --------------------------------------------------------------------------------------------

def test_reference_matches_brute_force_mpmath_on_distinct_values() -> None:
    rng = np.random.default_rng(1)
    x = round_to(rng.normal(0, 3, size=(2, 37)), torch.float32)
    t = np.array([3, 30])
    ref = reference(x, t)
    with mpmath.workdps(60):
        for r in range(2):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in x[r]))
            for i in (0, 5, t[r]):
                lp = mpmath.mpf(x[r, i]) - lse
                assert abs((ref.logp_hi[r, i] - lp) + ref.logp_lo[r, i]) <= abs(lp) * 1e-30 or \
                    abs(float(lp - ref.logp_hi[r, i]) - ref.logp_lo[r, i]) <= abs(float(lp)) * 1e-30
                assert abs(float(mpmath.exp(lp) - ref.p_hi[r, i]) - ref.p_lo[r, i]) <= float(mpmath.exp(lp)) * 1e-30
            assert abs(float(-(mpmath.mpf(x[r, t[r]]) - lse) - ref.loss_hi[r]) - ref.loss_lo[r]) < 1e-28


def test_reference_of_the_classic_cases() -> None:
    ref = reference(np.array([[1e8, 1e8]]), np.array([0]))
    assert ref.loss_hi[0] == math.log(2) and abs(ref.loss_lo[0]) < 1e-16
    # confident correct: loss = log1p(9 e^-700) survives in float64 although 1 + 9e^-700 == 1
    ref = reference(np.array([[700.0] + [0.0] * 9]), np.array([0]))
    assert ref.loss_hi[0] == pytest.approx(9 * math.exp(-700), rel=1e-14)
    assert ref.grad_hi[0, 0] == pytest.approx(-9 * math.exp(-700), rel=1e-14)
    # masks, nan, +inf, fully masked
    ref = reference(np.array([[0.0, -np.inf, 0.0], [np.nan, 1, 2], [1, np.inf, 2], [-np.inf] * 3]),
                    np.array([0, 0, 0, 0]))
    assert ref.p_hi[0].tolist() == [0.5, 0.0, 0.5] and ref.logp_hi[0, 1] == -np.inf
    assert ref.undefined.tolist() == [False, True, True, True]
    assert np.isnan(ref.p_hi[1:]).all() and np.isnan(ref.loss_hi[1:]).all()


# -- families ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_families_are_seeded_rounded_and_shaped(name: str) -> None:
    fam = FAMILIES[name]
    for dtype in (torch.float32, torch.float16):
        if str(dtype).removeprefix("torch.") not in fam.dtypes:
            continue
        param = fam.params(limits(dtype))[-1]
        n = fam.fixed_n or 50
        a, b = fam.make(dtype, param, n, 3, seed=7), fam.make(dtype, param, n, 3, seed=7)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.target, b.target)
        assert a.x.shape == (3, n) and a.target.shape == (3,) and a.target.dtype == np.int64
        finite = np.isfinite(a.x)
        np.testing.assert_array_equal(a.x[finite], round_to(a.x[finite], dtype))  # already in the dtype


def test_ordinary_rows_hold_their_max_twice_and_fills_turn_to_inf_in_float16() -> None:
    b = FAMILIES["translation"].make(torch.float32, 0.0, 1000, 4, seed=0)
    assert all((row == row.max()).sum() >= 2 for row in b.x)  # no probability above 1/2
    f16 = FAMILIES["mask_fill"].make(torch.float16, -1e9, 100, 3, seed=0)
    f32 = FAMILIES["mask_fill"].make(torch.float32, -1e9, 100, 3, seed=0)
    assert np.isneginf(f16.x[0]).all() and (f32.x[0] == -1e9).all()
    assert reference(f16.x, f16.target).undefined[0] and not reference(f32.x, f32.target).undefined[0]


def test_limits_are_the_documented_ones() -> None:
    f32, f16, f64 = limits(torch.float32), limits(torch.float16), limits(torch.float64)
    assert f32.overflow == pytest.approx(88.7228, abs=1e-4) and f16.overflow == pytest.approx(11.0899, abs=1e-4)
    assert f64.overflow == pytest.approx(709.7827, abs=1e-4)
    assert f32.underflow == pytest.approx(103.9721, abs=1e-4) and f16.underflow == pytest.approx(17.3287, abs=1e-4)
    assert f64.underflow == pytest.approx(745.1332, abs=1e-4)


# -- verdicts ---------------------------------------------------------------------------------------------

def test_a_hidden_nan_and_a_tiny_loss_rounded_to_zero_fail() -> None:
    lim = limits(torch.float32)
    x, t = np.array([[np.nan, 1.0, 2.0], [0.0, 1.0, 2.0]]), np.array([0, 2])
    ref = reference(x, t)
    good = ref.p_hi.copy()
    assert judge("softmax", good, ref, t, lim, 64).passed
    hidden = good.copy()
    hidden[0] = [0.0, 0.5, 0.5]  # a nan row returned as finite numbers
    r = judge("softmax", hidden, ref, t, lim, 64)
    assert not r.passed and "3 output(s) disagree" in r.message and r.metrics["nonfinite"] == 0
    x = round_to(np.array([[30.0] + [0.0] * 9]), torch.float32)
    ref = reference(x, np.array([0]))  # loss 9e^-30 = 8.4e-13, below float32's u
    assert not judge("cross_entropy", np.array([0.0]), ref, np.array([0]), lim, 64).passed
    assert judge("cross_entropy", np.array([ref.loss_hi[0] * (1 + 1e-7)]), ref, np.array([0]), lim, 64).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_torch_is_accurate_on_ordinary_rows(dtype: torch.dtype) -> None:
    b = FAMILIES["translation"].make(dtype, 0.0, 1000, 3, seed=0)
    ref = reference(b.x, b.target)
    v = softmax_impls.get("torch")
    for op in ("softmax", "log_softmax", "cross_entropy", "ce_grad"):
        r = measure(v, op, b, ref, dtype, CPU)
        assert r.passed, (op, r.message)
        assert r.metrics["max_rel_err_u"] < 64 or op in ("softmax", "ce_grad")
    r = measure(v, "softmax", b, ref, dtype, CPU)
    assert r.metrics["sum_err"] < 1000 * limits(dtype).u and 0 <= r.metrics["kl"] < 1e-3


def test_a_crashing_variant_is_an_error_result_not_a_crash() -> None:
    import dataclasses

    def boom(x, dim=-1):
        raise RuntimeError("kernel exploded")

    v = dataclasses.replace(softmax_impls.get("torch"), name="boom", softmax=boom)
    b = FAMILIES["translation"].make(torch.float32, 0.0, 10, 2, seed=0)
    r = measure(v, "softmax", b, reference(b.x, b.target), torch.float32, CPU)
    assert r.status == "error" and not r.passed and "kernel exploded" in r.message


# -- thresholds -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,limit", [(torch.float32, 88.72283905), (torch.float16, 11.08986649),
                                         (torch.bfloat16, 88.71892521), (torch.float64, 709.78271289)])
def test_naive_overflows_where_theory_says(dtype: torch.dtype, limit: float) -> None:
    # exp(c) * sum_k e^-k passes the dtype's max at c = ln(max) - ln(1.582)
    naive = softmax_impls.get("naive")
    theory = limit - SUM_FACTOR
    spacing = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(theory))  # the dtype's spacing there
    for op in ("softmax", "cross_entropy"):
        value, message = threshold(naive, op, "overflow", dtype, CPU)
        assert value is not None and abs(value - theory) <= 2 * spacing + 2e-3, (op, value, theory, message)
        nxt = _value(_bits(value, dtype) + 1, dtype)
        assert nxt > value and "at the next value" in message  # bisected down to neighbouring dtype values


@pytest.mark.parametrize("name", ["max_subtracted", "logsumexp", "torch"])
def test_shifted_variants_never_overflow_or_underflow(name: str) -> None:
    v = softmax_impls.get(name)
    for kind in ("overflow", "underflow"):
        value, message = threshold(v, "softmax", kind, torch.float32, CPU)
        assert value == math.inf, (kind, message)


def test_far_target_threshold_separates_fused_from_unfused_losses() -> None:
    unfused, _ = threshold(softmax_impls.get("max_subtracted"), "cross_entropy", "far_target", torch.float32, CPU)
    fused, _ = threshold(softmax_impls.get("logsumexp"), "cross_entropy", "far_target", torch.float32, CPU)
    assert unfused is not None and 80 < unfused < limits(torch.float32).underflow
    assert fused == math.inf


def test_probe_rows_are_the_stated_ones() -> None:
    assert probe("overflow", 100.0, torch.float32).x[0].tolist() == [100.0 - k for k in range(10)]
    assert probe("far_target", 50.0, torch.float32).x[0].tolist()[-1] == -50.0
    assert set(PROBES) == {"overflow", "underflow", "far_target"}


# -- the run folder and the commands ---------------------------------------------------------------------

TINY = StabilityPreset("tiny", "test", lengths=(10,), long_lengths=(10,), rows=2,
                       families=("translation", "nan_entries"))


def test_stability_into_writes_rows_and_resumes_without_duplicates(tmp_path) -> None:
    run = Run.create(tmp_path, ["test"], {})
    variants = [softmax_impls.get("naive"), softmax_impls.get("torch")]
    lines = stability_into(run, variants, CPU, TINY, dtypes=["float32"])
    df, th = run.read("stability"), run.read("thresholds")
    assert set(df.metric) >= {"nonfinite", "max_rel_err_u", "max_abs_err", "sum_err", "kl", "passed"}
    assert set(df.op) == {"softmax", "log_softmax", "cross_entropy", "ce_grad"}
    assert (df.status == "ok").all() and len(th) == 3 * (3 + 4)  # naive has no log_softmax
    naive_overflow = th[(th.variant == "naive") & (th.op == "softmax") & (th.kind == "overflow")].threshold.iloc[0]
    assert naive_overflow == pytest.approx(88.7228 - SUM_FACTOR, abs=0.01)
    assert (th[(th.variant == "torch") & (th.kind == "overflow")].threshold == math.inf).all()
    summary = {(ln.variant, ln.dtype): ln for ln in lines}
    assert summary["naive", "float32"].failed == ("translation",) and not summary["torch", "float32"].failed
    assert "naive" in format_summary(lines)
    again = stability_into(Run.open(run.path), variants, CPU, TINY, dtypes=["float32"])
    assert len(run.read("stability")) == len(df) and len(run.read("thresholds")) == len(th)
    assert again == lines


def test_skipped_variant_is_recorded(tmp_path) -> None:
    import dataclasses

    cuda_only = dataclasses.replace(softmax_impls.get("torch"), name="cuda_only", devices=("cuda",))
    run = Run.create(tmp_path, ["test"], {})
    lines = stability_into(run, [cuda_only], CPU, TINY, dtypes=["float32"])
    df = run.read("stability")
    assert list(df.status) == ["skipped"] and "cuda" in df.message.iloc[0]
    assert lines[0].status == "skipped"


def test_cli_check_unknown_variant_lists_names(capsys) -> None:
    assert main(["check", "no_such_variant"]) == 2
    err = capsys.readouterr().err
    assert "no_such_variant" in err and "naive" in err and "torch" in err


def test_cli_stability_rejects_unknown_family_and_dtype(tmp_path, capsys) -> None:
    assert main(["stability", "--family", "bogus", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "known families" in err and "wide_rows" in err
    assert main(["stability", "--dtype", "float8", "--results-dir", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []  # no run folder was created for a mistake


def test_cli_check_passes_for_torch_in_float32(capsys) -> None:
    assert main(["check", "torch", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "confident_correct" in out and "contract entries hold" in out


def test_accurate_is_strictly_more_accurate_than_torch_where_torch_loses_digits(tmp_path) -> None:
    # issue 6: on the confident-correct and far-target families the stability rows show accurate's loss
    # error strictly below torch's (torch rounds a tiny loss to 0: an error of the whole loss)
    from bench.studies.stability.sweep import stability_into

    run = Run.create(tmp_path)
    preset = StabilityPreset("t", "test", lengths=(10, 1000), long_lengths=(10,), rows=4,
                             families=("confident_correct", "far_target"), thresholds=False)
    stability_into(run, [softmax_impls.get("accurate"), softmax_impls.get("torch")], CPU, preset,
                   dtypes=["float32"])
    df = run.read("stability")
    err = df[(df["metric"] == "max_rel_err_u") & (df["op"] == "cross_entropy")]
    worst = err.groupby(["family", "variant"])["value"].max().unstack()
    assert set(worst.index) == {"confident_correct", "far_target"}, worst
    assert (worst["accurate"] < worst["torch"]).all(), worst
    assert worst.loc["confident_correct", "torch"] > 1e6  # the tiny loss came out 0: relative error 1/u
