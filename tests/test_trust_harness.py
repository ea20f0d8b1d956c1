"""The harness against hostile plugins: a variant that exits, returns NaN or the wrong shape, writes into its
input, hangs, or allocates past the machine's memory never ends a study, never earns a figure and never
changes another variant's result. Every plugin here is a real installed distribution
(tests/plugin_fixtures.py).

    .venv/bin/pytest -q tests/test_trust_harness.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import softmax_impls
from bench.cli import main
from bench.measure.memory import memory_ceiling
from bench.measure.sandbox import UnitTimeout, deadline
from bench.measure.timer import TimerBudget
from bench.store.run import Run
from bench.studies.stability.contracts import check_variants
from bench.studies.stability.presets import STABILITY_PRESETS
from bench.studies.stability.sweep import stability_into
from bench.studies.throughput.presets import SweepBlock, ThroughputPreset
from bench.studies.throughput.sweep import throughput_into
from bench.studies.throughput.validate import check_output

CPU = torch.device("cpu")
FAST = TimerBudget(warmup=1, min_reps=3, budget_s=0.01)
OPS = ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd")


def _preset(ops=OPS, shapes=((64, 100),), dtypes=("float32",)) -> ThroughputPreset:
    return ThroughputPreset("test", "tiny", blocks=(SweepBlock(tuple(ops), tuple(shapes), tuple(dtypes)),),
                            timer=FAST)


def _sweep(tmp_path: Path, names: list[str], **kwargs) -> Run:
    run = Run.create(tmp_path / "results", ["test"], {})
    throughput_into(run, [softmax_impls.get(n) for n in names], CPU, kwargs.pop("preset", _preset()),
                    summary=False, threads=1, **kwargs)
    return run


def _status(run: Run, variant: str) -> dict[str, tuple[str, str]]:
    df = run.read("throughput")
    df = df[(df.variant == variant) & (df.metric == "median_s")]
    return {r.op: (r.status, r.message) for r in df.itertuples()}


def test_a_plugin_that_exits_is_an_error_row_and_the_sweep_goes_on(misbehaving, tmp_path: Path) -> None:
    run = _sweep(tmp_path, ["torch", "exits", "logsumexp"])
    assert {s for s, _ in _status(run, "exits").values()} == {"error"}
    assert all("SystemExit" in m for _, m in _status(run, "exits").values())
    assert {s for s, _ in _status(run, "logsumexp").values()} == {"ok"}  # measured after it


@pytest.mark.parametrize("name, reason", [("nan_everywhere", "nan or inf"), ("wrong_shape", "shape")])
def test_wrong_results_earn_no_figure(misbehaving, tmp_path: Path, name: str, reason: str) -> None:
    run = _sweep(tmp_path, ["torch", name])
    statuses = _status(run, name)
    # forward ops return a wrong tensor; a backward through it may fail in autograd itself (an error row)
    assert statuses["softmax_fwd"][0] == statuses["ce_fwd"][0] == "wrong"
    assert reason in statuses["softmax_fwd"][1] and reason in statuses["ce_fwd"][1]
    assert {s for s, _ in statuses.values()} <= {"wrong", "error"}
    df = run.read("throughput")
    assert set(df[df.variant == name].metric) == {"median_s"}  # no gbps, roofline or speedup row
    assert run.read("samples").query("variant == @name").empty


def test_a_variant_that_writes_into_its_input_is_caught(misbehaving, tmp_path: Path) -> None:
    run = _sweep(tmp_path, ["torch", "mutates_input"])
    statuses = _status(run, "mutates_input")
    assert {s for s, _ in statuses.values()} == {"error"}
    assert all("wrote into its input" in m for _, m in statuses.values())


def test_stability_inputs_belong_to_the_harness(misbehaving, tmp_path: Path) -> None:
    """float64 on CPU: the batch's own memory once went to the variant, so its writes reached torch's turn."""
    preset = STABILITY_PRESETS["quick"]
    alone = check_variants([softmax_impls.get("torch")], CPU, preset, ["float64"], progress=False)["torch"]
    beside = check_variants([softmax_impls.get("mutates_input"), softmax_impls.get("torch")], CPU, preset,
                            ["float64"], progress=False)
    assert [(ln.family, ln.measured) for ln in beside["torch"]] == [(ln.family, ln.measured) for ln in alone]
    assert any("wrote into its input" in ln.detail for ln in beside["mutates_input"])


def test_a_hanging_variant_times_out_and_bigger_shapes_are_not_tried(misbehaving, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEPY_SECONDS", "0.5")
    preset = _preset(ops=("softmax_fwd",), shapes=((8, 10), (64, 100)))
    run = _sweep(tmp_path, ["sleepy", "torch"], preset=preset, timeout=1.0)
    df = run.read("throughput").query("variant == 'sleepy' and metric == 'median_s'")
    assert list(df.status) == ["timeout", "timeout"]
    assert "time limit" in df.message.iloc[0] and "smaller shape" in df.message.iloc[1]
    assert set(_status(run, "torch").values()) and {s for s, _ in _status(run, "torch").values()} == {"ok"}


def test_deadline_interrupts_a_sleep_and_is_not_swallowed_by_except_exception() -> None:
    import time

    start = time.perf_counter()
    with pytest.raises(UnitTimeout):
        with deadline(0.2):
            try:
                time.sleep(5)
            except Exception:  # what a careless plugin writes  # noqa: BLE001
                pass
    assert time.perf_counter() - start < 2


def test_memory_ceiling_turns_a_huge_allocation_into_an_error_not_a_kill() -> None:
    with memory_ceiling(0.5):
        with pytest.raises(RuntimeError, match="allocate"):
            torch.ones(2**40, dtype=torch.uint8)  # 1 TiB: past any ceiling, touched, so no overcommit luck
    torch.ones(2**20)  # the limit is lifted afterwards


def test_check_exits_nonzero_for_a_plugin_that_exits(misbehaving, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "exits", "--dtype", "float32"]) == 1
    assert "BREACH" in capsys.readouterr().out


def test_stability_records_a_plugin_that_exits(misbehaving, tmp_path: Path) -> None:
    run = Run.create(tmp_path / "results", ["test"], {})
    stability_into(run, [softmax_impls.get("exits")], CPU, STABILITY_PRESETS["quick"], ["float32"], ["translation"])
    df = run.read("stability")
    assert not df.empty and set(df.status) == {"error"} and df.message.str.contains("SystemExit").all()


def test_exclude_and_timeout_options(misbehaving, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["throughput", "--results-dir", str(tmp_path / "results"), "--shape", "8x10", "--op", "softmax_fwd",
            "--dtype", "float32", "--variant", "torch", "--variant", "exits", "--exclude", "exits"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "results").iterdir()
    assert set(Run.open(run_dir).read("throughput").variant) == {"torch"}
    assert main([*argv[:-1], "no_such_variant"]) == 2
    assert "not a registered variant" in capsys.readouterr().err
    assert main([*argv, "--timeout", "-1"]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_validation_accepts_the_builtin_and_rejects_a_perturbed_result(dtype: torch.dtype) -> None:
    x = torch.randn(37, 781).to(dtype)
    y = torch.softmax(x, -1)
    assert check_output("softmax_fwd", y, x, None, None, 64.0) is None
    bumped = y.clone()
    bumped[5, 7] *= 16  # past 64 u even in bfloat16 (u = 2^-8)
    assert "reference" in check_output("softmax_fwd", bumped, x, None, None, 64.0)
    t = torch.randint(0, 781, (37,))
    loss = torch.nn.functional.cross_entropy(x, t, reduction="none")
    assert check_output("ce_fwd", loss, x, t, None, 64.0) is None
    xg = x.clone().requires_grad_(True)
    dy = torch.randn(37, 781).to(dtype)
    dx = torch.autograd.grad(torch.softmax(xg, -1), xg, dy)[0]
    assert check_output("softmax_fwd_bwd", dx, x, None, dy, 64.0) is None
    assert "gradient" in check_output("softmax_fwd_bwd", -dx, x, None, dy, 64.0)


@pytest.mark.parametrize("name", softmax_impls.names())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_every_variant_passes_the_throughput_validation(name: str, dtype: torch.dtype) -> None:
    """Validation gates every figure, so a correct variant must pass it, gradients included, on wide rows
    (it caught logsumexp's and max_subtracted's CE gradient through amax: 796 u at 32768 columns)."""
    v = softmax_impls.get(name)
    if v.skip_reason(CPU, dtype) or name == "triton":  # triton: interpreter only, covered by its own tests
        pytest.skip(v.skip_reason(CPU, dtype) or "Triton's interpreter is too slow at 32768 columns")
    torch.manual_seed(1)
    m, n = 24, 32768
    x = torch.randn(m, n).to(dtype).requires_grad_(True)
    t = torch.randint(0, n, (m,))
    dy = torch.randn(m, n).to(dtype)
    tol = v.contract.ordinary_tolerance_ulps
    assert check_output("softmax_fwd", v.softmax(x.detach(), dim=-1), x.detach(), None, None, tol) is None
    assert check_output("ce_fwd", v.cross_entropy(x.detach(), t), x.detach(), t, None, tol) is None
    dx = torch.autograd.grad(v.softmax(x, dim=-1), x, dy)[0]
    assert check_output("softmax_fwd_bwd", dx, x.detach(), None, dy, tol) is None
    dlogits = torch.autograd.grad(v.cross_entropy(x, t), x, torch.ones(m, dtype=dtype))[0]
    assert check_output("ce_fwd_bwd", dlogits, x.detach(), t, None, tol) is None
