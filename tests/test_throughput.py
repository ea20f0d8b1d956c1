"""bench.studies.throughput: byte formulas, the plan, oom/error/skipped rows from fake variants, the summary, the
command's user errors, and resume after a real interruption (a killed subprocess).

    .venv/bin/pytest -q tests/test_throughput.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import softmax_impls
from bench.cli import main
from bench.measure.host import busy_cores_of_other_jobs, choose_threads
from bench.measure.timer import TimerBudget
from bench.store.rows import THROUGHPUT_OPS
from bench.store.run import Run
from bench.studies.throughput.ops import BYTE_FORMULAS, METRICS, OPS, ROW_KEY, UNIT_KEY, expected_metrics
from bench.studies.throughput.plan import plan
from bench.studies.throughput.presets import THROUGHPUT_PRESETS, RepeatCheck, SweepBlock, ThroughputPreset
from bench.studies.throughput.summary import summary_table
from bench.studies.throughput.sweep import throughput_into
from softmax_impls import Variant

CPU = torch.device("cpu")
FAST = TimerBudget(warmup=1, min_reps=3, budget_s=0.01)
ROOT = Path(__file__).resolve().parents[1]


def _preset(ops=("softmax_fwd",), shapes=((64, 100),), dtypes=("float32",), repeats=()) -> ThroughputPreset:
    return ThroughputPreset("test", "tiny", blocks=(SweepBlock(tuple(ops), tuple(shapes), tuple(dtypes)),),
                            timer=FAST, repeats=repeats)


# --- byte formulas -----------------------------------------------------------------------------------

def test_byte_formulas_by_hand():
    m, n = 4096, 32768
    assert OPS["softmax_fwd"].min_bytes(m, n, 4) == 2 * 4096 * 32768 * 4 == 1_073_741_824
    assert OPS["softmax_fwd_bwd"].min_bytes(m, n, 2) == 5 * 4096 * 32768 * 2
    # cross-entropy: logits once, int64 targets (8 B), one loss per row
    assert OPS["ce_fwd"].min_bytes(256, 10, 4) == 256 * 10 * 4 + 256 * 8 + 256 * 4 == 13_312
    assert OPS["ce_fwd_bwd"].min_bytes(256, 10, 4) == 3 * 256 * 10 * 4 + 256 * (16 + 8) == 36_864
    assert tuple(BYTE_FORMULAS) == THROUGHPUT_OPS
    assert BYTE_FORMULAS["softmax_fwd"].startswith("2·M·N·e")
    assert all(f.strip() for f in BYTE_FORMULAS.values())


@pytest.mark.parametrize("op", THROUGHPUT_OPS)
def test_each_op_runs_every_chapter_variant_and_matches_torch(op):
    spec = OPS[op]
    torch.manual_seed(0)
    inputs = spec.make_inputs(37, 11, torch.float64, CPU)
    want = spec.closure(softmax_impls.get("torch"), inputs)()
    for name in ("naive", "max_subtracted", "logsumexp"):
        got = spec.closure(softmax_impls.get(name), inputs)()
        torch.testing.assert_close(got, want)  # the timed closure computes what the op's name says


# --- the plan ----------------------------------------------------------------------------------------

def test_plan_puts_torch_first_and_applies_overrides():
    preset = THROUGHPUT_PRESETS["quick"]
    units = plan(preset, ["naive", "torch", "logsumexp"])
    assert units[0].variant == "torch" and units[1].variant in ("naive", "logsumexp")
    assert len(units) == len({(u.variant, u.op, u.rows, u.cols, u.dtype) for u in units})
    repeated = [u for u in units if u.repeat]
    assert [(u.variant, u.op, u.rows, u.cols, u.dtype) for u in repeated] == [
        ("torch", "softmax_fwd", 4096, 4096, "float32")]
    small = plan(preset, ["naive"], ops=["ce_fwd"], dtypes=["float64"], shapes=[(7, 3)])
    assert {(u.op, u.rows, u.cols, u.dtype) for u in small} == {("ce_fwd", 7, 3, "float64")}


def test_presets_cover_the_issue_shapes():
    def shapes(name):
        return {s for b in THROUGHPUT_PRESETS[name].blocks for s in b.shapes}
    assert {(256, 10), (60000, 10), (4096, 32768), (1024, 131072)} <= shapes("default")
    assert {(256, 10), (60000, 10), (4096, 4096)} <= shapes("quick")
    assert max(r * c for r, c in shapes("gpu")) > 4096 * 32768
    assert {"float32", "float16", "bfloat16", "float64"} <= {d for b in THROUGHPUT_PRESETS["gpu"].blocks
                                                            for d in b.dtypes}


# --- failing variants become rows -----------------------------------------------------------------------

def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")


def _raise_value(*args, **kwargs):
    raise ValueError("this kernel does not handle 100 columns")


FAKES = [
    Variant("fake_oom", "always out of memory", softmax=_raise_oom, cross_entropy=_raise_oom),
    Variant("fake_error", "always raises", softmax=_raise_value, cross_entropy=_raise_value),
    Variant("fake_cuda_only", "GPU kernel", softmax=_raise_value, cross_entropy=_raise_value, devices=("cuda",)),
    Variant("fake_f16_only", "half only", softmax=_raise_value, cross_entropy=_raise_value,
            dtypes=(torch.float16,)),
    Variant("fake_no_dep", "needs a missing package", softmax=_raise_value, cross_entropy=_raise_value,
            unavailable=lambda device: "needs the package 'quack', not installed"),
]


def test_fake_variants_give_oom_error_skipped_rows_and_the_sweep_goes_on(tmp_path, capsys):
    run = Run.create(tmp_path)
    variants = [*FAKES, softmax_impls.get("torch"), softmax_impls.get("naive")]
    written = throughput_into(run, variants, CPU, _preset(), summary=True)
    df = run.read("throughput")
    assert len(df) == len(written)
    status = {r.variant: (r.status, r.message) for r in df[df["metric"] == "median_s"].itertuples()}
    assert status["fake_oom"][0] == "oom" and "out of memory" in status["fake_oom"][1]
    assert status["fake_error"] == ("error", "ValueError: this kernel does not handle 100 columns")
    assert status["fake_cuda_only"][0] == "skipped" and "cuda" in status["fake_cuda_only"][1]
    assert status["fake_f16_only"][0] == "skipped" and "float32" in status["fake_f16_only"][1]
    assert status["fake_no_dep"] == ("skipped", "needs the package 'quack', not installed")
    for name in [v.name for v in FAKES]:
        assert (df["variant"] == name).sum() == 1  # one row per failed unit, value empty
    # the real variants after the failures were measured completely
    for name in ("torch", "naive"):
        got = df[df["variant"] == name]
        assert list(got["metric"]) == list(METRICS) and set(got["status"]) == {"ok"}
        value = dict(zip(got["metric"], got["value"], strict=True))
        assert value["gbps"] == pytest.approx(2 * 64 * 100 * 4 / value["median_s"] / 1e9)
        assert value["roofline_frac"] == pytest.approx(value["gbps"] / value["copy_gbps"])
        # the CPU roofline is the better of copy_ and the streaming copy, and says so with both figures
        copy_msg = got[got["metric"] == "copy_gbps"]["message"].item()
        if softmax_impls.get("native").unavailable(CPU) is None:
            both = [float(v) for v in re.findall(r"copy_? ([0-9.e+]+)(?: and| GB/s)", copy_msg)]
            assert len(both) == 2 and value["copy_gbps"] == pytest.approx(max(both), rel=1e-2), copy_msg
        else:
            assert copy_msg.startswith("copy_ only:"), copy_msg
        assert value["p20_s"] <= value["median_s"] <= value["p80_s"] and value["peak_bytes"] > 0
        assert 1 <= value["threads"] <= torch.get_num_threads() and value["overhead_s"] < 20e-6
    torch_median = df[(df["variant"] == "torch") & (df["metric"] == "median_s")]["value"].item()
    naive = df[df["variant"] == "naive"].set_index("metric")["value"]
    assert naive["speedup_vs_torch"] == pytest.approx(torch_median / naive["median_s"])
    out = capsys.readouterr().out
    assert "fake_oom" in out and "oom" in out and "not measured: " in out


def test_speedup_without_torch_selected_uses_a_hidden_baseline(tmp_path):
    run = Run.create(tmp_path)
    throughput_into(run, [softmax_impls.get("naive")], CPU, _preset(ops=("ce_fwd",)), summary=False)
    df = run.read("throughput")
    assert set(df["variant"]) == {"naive"}  # the baseline's own rows are not stored
    speedup = df[df["metric"] == "speedup_vs_torch"]
    assert speedup["status"].item() == "ok" and speedup["value"].item() > 0


def test_repeat_rows_and_summary(tmp_path, capsys):
    repeats = (RepeatCheck("torch", "softmax_fwd", 64, 100, "float32"),)
    run = Run.create(tmp_path)
    throughput_into(run, [softmax_impls.get("torch")], CPU, _preset(repeats=repeats))
    df = run.read("throughput")
    assert list(df["metric"]) == expected_metrics(True)
    text = summary_table(df, "cpu")
    assert "repeat: torch softmax_fwd 64x100 float32" in text and "timer overhead:" in text
    assert "softmax_fwd" in capsys.readouterr().out


# --- the command --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--shape", "4096by10"], "is not ROWSxCOLS"),
    (["--op", "softmax_bwd"], "unknown op 'softmax_bwd'"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--quick", "--preset", "default"], "--quick asks for the quick preset"),
    (["--preset", "huge"], "unknown throughput preset"),
    (["--variant", "nope"], "unknown variant 'nope'"),
    (["--threads", "0"], "positive number of threads"),
    (["--resume", "/nonexistent/run"], "is not a folder"),
])
def test_user_mistakes_are_one_paragraph_exit_2(argv, message, tmp_path, capsys):
    assert main(["throughput", "--results-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err


# --- resume after a real interruption --------------------------------------------------------------------

def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    """Start `softmax-bench throughput --quick` (narrowed to small shapes), SIGKILL it once rows exist,
    resume it with --resume, and check that every unit is there exactly once."""
    exe = ROOT / ".venv" / "bin" / "softmax-bench"
    if not exe.exists():
        pytest.skip("needs the installed console script (make setup)")
    narrow = ["--quick", "--shape", "256x10", "--variant", "torch", "--variant", "naive",
              "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(exe), "throughput", "--results-dir", str(tmp_path), *narrow], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        csv = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(tmp_path.glob("*/throughput.csv"))
            if found and found[0].read_bytes().count(b"\n") > 40:  # header + a few units
                csv = found[0]
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        assert csv is not None, "no rows appeared in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = csv.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]  # a kill mid-write may leave half a line; the rest must survive
    run_dir = csv.parent
    done = subprocess.run([str(exe), "throughput", "--resume", str(run_dir), *narrow], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = csv.read_bytes()
    assert after.startswith(kept)
    df = Run.open(run_dir).read("throughput")
    assert df.attrs["problems"] == []
    assert not df.duplicated(list(ROW_KEY)).any()
    units = plan(THROUGHPUT_PRESETS["quick"], ["torch", "naive"], shapes=[(256, 10)])
    for u in units:
        got = df[(df["variant"] == u.variant) & (df["op"] == u.op) & (df["rows"] == u.rows)
                 & (df["cols"] == u.cols) & (df["dtype"] == u.dtype)]
        if len(got) == 1:
            assert got["status"].item() != "ok"
        else:
            assert sorted(got["metric"]) == sorted(expected_metrics(u.repeat)), u
    assert df.groupby(list(UNIT_KEY)).ngroups == len(units)
    assert len(Run.open(run_dir).info["commands"]) == 2
    assert "units to measure" in done.stderr and f"of {len(units)} units" in done.stderr


def test_thread_choice_and_restore(tmp_path, monkeypatch):
    assert choose_threads(CPU, 3) == (3, "asked for with --threads")
    n, why = choose_threads(CPU)
    assert 1 <= n <= torch.get_num_threads() and why
    cores = float(os.cpu_count() or 1)
    assert choose_threads(CPU, busy=lambda: cores)[0] == 1  # every core busy
    assert choose_threads(CPU, busy=lambda: 0.0)[0] == torch.get_num_threads()  # an idle machine
    monkeypatch.setattr(os, "getloadavg", lambda: (cores, 0.0, 0.0))  # no /proc/stat: the load average decides
    assert choose_threads(CPU, busy=lambda: None)[0] == 1
    held = busy_cores_of_other_jobs(0.05)
    assert held is None or 0.0 <= held <= cores + 1e-9
    before = torch.get_num_threads()
    run = Run.create(tmp_path)
    throughput_into(run, [softmax_impls.get("torch")], CPU, _preset(), threads=1, summary=False)
    threads = run.read("throughput").set_index("metric")["value"]["threads"]
    assert threads == 1 and torch.get_num_threads() == before  # recorded in the row, restored afterwards
    assert run.info["throughput"]["cpu"]["threads"].startswith("1 (asked for")


def test_roofline_probe_times_every_piece_and_rejects_bad_options(capsys):
    from bench.tools import roofline_probe

    results = dict(roofline_probe.probe(64, 1000, ["naive"]))
    pieces = {"copy_", "exp", "exp2", "softmax", "naive"}
    if softmax_impls.get("native").unavailable(CPU) is None:
        pieces.add("stream_copy")
    assert set(results) == pieces and min(results.values()) > 0
    assert roofline_probe.main(["--shape", "64x1000", "--variant", "naive"]) == 0
    assert "% of copy_" in capsys.readouterr().out
    assert roofline_probe.main(["--shape", "64by1000"]) == 2
    assert roofline_probe.main(["--variant", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def _target_rows(points: list[tuple[str, str, str, int, int, str, float]]) -> pd.DataFrame:
    """Tidy throughput rows (variant, device, op, rows, cols, metric, value), as a sweep stores them."""
    return pd.DataFrame([dict(variant=v, device=d, dtype="float32", op=op, rows=r, cols=c, metric=m, value=x,
                              unit="ratio", status="ok", message="") for v, d, op, r, c, m, x in points])


def test_targets_say_met_not_met_and_not_measured_per_device() -> None:
    from bench.store.targets import ThroughputTarget, target_lines

    roof = ThroughputTarget("roof", "cpu", ("softmax_fwd",), ("float32",), "roofline_frac", 0.9,
                            shapes=((4096, 4096), (1024, 131072)))
    fast = ThroughputTarget("fast", "cpu", ("softmax_fwd",), ("float32",), "speedup_vs_torch", 1.0,
                            min_cols=65536, strictly=True)
    gpu = ThroughputTarget("gpu", "cuda", ("softmax_fwd",), ("float32",), "roofline_frac", 0.9)
    rows = _target_rows([
        ("torch", "cpu", "softmax_fwd", 4096, 4096, "roofline_frac", 0.95),   # the best may be torch itself
        ("native", "cpu", "softmax_fwd", 4096, 4096, "roofline_frac", 0.80),
        ("native", "cpu", "softmax_fwd", 1024, 131072, "roofline_frac", 0.91),
        ("torch", "cpu", "softmax_fwd", 1024, 131072, "speedup_vs_torch", 1.0),  # never counts for a speedup
        ("native", "cpu", "softmax_fwd", 1024, 131072, "speedup_vs_torch", 1.0),  # not strictly faster
        ("native", "cpu", "softmax_fwd", 512, 1000, "roofline_frac", 0.10),   # outside both targets
    ])
    lines = target_lines(rows, [roof, fast, gpu])
    assert lines[0] == ("met: roof: softmax_fwd 4096x4096 float32 torch 95%, "
                        "softmax_fwd 1024x131072 float32 native 91%")
    assert lines[1] == "NOT met at 1 of 1 points: fast: softmax_fwd 1024x131072 float32 native 1.0x"
    assert len(lines) == 2  # no cuda rows: the GPU target is not this run's business
    worse = rows.assign(value=rows["value"].where(rows["variant"] != "native", 0.5))
    assert target_lines(worse, [roof])[0].startswith("NOT met at 1 of 2 points")
    assert target_lines(rows[rows["cols"] == 1000], [roof]) == ["not measured: roof"]


def test_a_target_over_many_points_names_its_misses_or_its_lowest_point() -> None:
    from bench.store.targets import MAX_FIGURES, ThroughputTarget, target_lines

    every = ThroughputTarget("every", "cpu", ("softmax_fwd",), ("float32",), "speedup_vs_torch", 1.0)
    widths = range(10, 10 + MAX_FIGURES + 4)
    speed = {n: 2.0 + n / 100 for n in widths}
    speed[12] = 1.0  # at the threshold: met, and the lowest
    rows = _target_rows([("native", "cpu", "softmax_fwd", 64, n, "speedup_vs_torch", s) for n, s in speed.items()]
                        + [("torch", "cpu", "softmax_fwd", 64, n, "speedup_vs_torch", 1.0) for n in widths])
    assert target_lines(rows, [every]) == [
        f"met: every: all {len(widths)} points, lowest softmax_fwd 64x12 float32 native 1.0x"]
    slower = rows.assign(value=rows["value"].where((rows["cols"] != 15) | (rows["variant"] != "native"), 0.8))
    assert target_lines(slower, [every]) == [
        f"NOT met at 1 of {len(widths)} points: every: missed at softmax_fwd 64x15 float32 native 0.8x"]


def test_summary_prints_the_targets_of_its_device(tmp_path) -> None:
    run = Run.create(tmp_path)
    preset = ThroughputPreset("t", "test", blocks=(SweepBlock(("softmax_fwd",), ((65536, 10),), ("float32",)),),
                              timer=TimerBudget(warmup=1, min_reps=3, budget_s=0.01))
    throughput_into(run, [softmax_impls.get("torch"), softmax_impls.get("narrow")], CPU, preset, summary=False)
    text = summary_table(run.read("throughput"), "cpu")
    line = next(line for line in text.splitlines() if "narrow >= 10x torch" in line)
    assert "softmax_fwd 65536x10 float32 narrow" in line and line.strip().startswith(("met:", "NOT met"))
    assert "not measured: CPU: the best softmax" in text and "GPU" not in text


def test_big_cpu_units_time_the_variant_and_the_copies_in_turns(tmp_path) -> None:
    # the threshold lowered so a small shape counts as DRAM-sized: its roofline message says the copies were
    # sampled in turns with the variant; the shape below the threshold keeps the copy measured before it
    block = SweepBlock(("softmax_fwd",), ((64, 1000), (8, 10)), ("float32",))
    preset = ThroughputPreset("t", "test", blocks=(block,), timer=TimerBudget(warmup=1, min_reps=3, budget_s=0.01),
                              cpu_interleave_bytes=64 * 1000 * 4)
    run = Run.create(tmp_path)
    throughput_into(run, [softmax_impls.get("naive")], CPU, preset, summary=False)
    df = run.read("throughput")
    copy = df[df["metric"] == "copy_gbps"].set_index("cols")
    reps = df[df["metric"] == "reps"].set_index("cols")
    assert "sampled in turns with the variant" in copy.loc[1000, "message"] or \
        copy.loc[1000, "message"].startswith("copy_ only:")
    assert "interleaved" in reps.loc[1000, "message"] and "interleaved" not in reps.loc[10, "message"]
    assert "in turns" not in copy.loc[10, "message"] and copy["value"].gt(0).all()


def test_a_peak_below_the_calls_own_output_is_not_credited(tmp_path):
    # a call whose buffers live outside the watched allocators (here: an anonymous mmap, as XLA's and
    # onnxruntime's own arenas) must not be credited with ~0 bytes: its peak row says it was not measurable
    import mmap

    def mmap_softmax(x, dim=-1):
        buf = mmap.mmap(-1, x.numel() * x.element_size())  # neither malloc nor an aten op allocates it
        y = torch.frombuffer(buf, dtype=x.dtype).view(x.shape)  # (frombuffer keeps buf alive)
        torch.exp(x, out=y)
        return y.div_(y.sum(dim, keepdim=True))  # only the row sums come from malloc

    hidden = Variant(name="hidden_alloc", summary="allocates its output where the harness does not look",
                     softmax=mmap_softmax,
                     cross_entropy=lambda x, t: torch.nn.functional.cross_entropy(x, t, reduction="none"))
    run = Run.create(tmp_path)
    throughput_into(run, [softmax_impls.get("torch"), hidden], CPU, _preset(shapes=((512, 2000),)), summary=False)
    rows = run.read("throughput")
    timed = rows[rows["metric"] == "median_s"].set_index("variant")
    assert timed.loc["hidden_alloc", "status"] == "ok"  # right and timed: only its memory figure is refused
    peak = rows[rows["metric"] == "peak_bytes"].set_index("variant")
    assert peak.loc["torch", "status"] == "ok" and peak.loc["torch", "value"] >= 512 * 2000 * 4
    assert peak.loc["hidden_alloc", "status"] == "skipped"
    assert "below its own output" in peak.loc["hidden_alloc", "message"]
