"""Ready for the first GPU, checked without one: the quick GPU presets and their time estimate, the CUDA paths
that can be exercised on the CPU, and bench/tools/gpu_check.sh's stages run offline in a fresh virtual
environment that sees a torch it did not install (as on a GPU machine with its own torch).

    .venv/bin/pytest -q tests/test_gpu_ready.py
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import softmax_impls
from bench.measure.timer import TimerBudget
from bench.studies.throughput.plan import Unit, estimate_seconds, plan
from bench.studies.throughput.presets import FULL, QUICK, THROUGHPUT_PRESETS

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["onnxruntime", "jax", "liger", "quack"]  # counted in the GPU estimates even where not installed


def _shapes_ops_dtypes(name: str) -> tuple[set, set, set]:
    units = plan(THROUGHPUT_PRESETS[name], ["torch"])
    return {(u.rows, u.cols) for u in units}, {u.op for u in units}, {u.dtype for u in units}


def test_quick_on_cuda_is_the_gpu_quick_preset_with_the_shapes_that_decide_the_targets() -> None:
    assert QUICK["cuda"]["throughput"] == "gpu-quick" and QUICK["cpu"]["throughput"] == "quick"
    assert FULL == {"cpu": "default", "cuda": "gpu"}
    shapes, ops, dtypes = _shapes_ops_dtypes("gpu-quick")
    assert {(4096, 4096), (1024, 131072), (4096, 262144), (65536, 10)} <= shapes
    assert ops == {"softmax_fwd", "ce_fwd_bwd"} and dtypes == {"float32", "bfloat16"}
    assert set(QUICK["cuda"]["stability_dtypes"]) == {"float32", "bfloat16"}


def test_gpu_presets_fit_their_time_by_their_own_estimate() -> None:
    names = softmax_impls.names() + PEERS
    cuda = torch.device("cuda")
    quick = estimate_seconds(plan(THROUGHPUT_PRESETS["gpu-quick"], names), cuda)
    full = estimate_seconds(plan(THROUGHPUT_PRESETS["gpu"], names), cuda)
    assert quick < 4 * 60  # leaves the 8-minute quick study room for compiles, stability and training
    assert full < 20 * 60


def test_estimate_by_hand() -> None:
    timer = TimerBudget(warmup_s=0.5, budget_s=0.3)
    units = [Unit("torch", "softmax_fwd", 8, 8, "float32", timer)] * 3
    # CUDA: variant + one copy, each 0.1 s of warm-up (capped) + 0.3 s of samples, + 0.05 s of checks
    assert estimate_seconds(units, torch.device("cuda")) == pytest.approx(3 * (2 * 0.4 + 0.05))
    # CPU: two copies (copy_ and the streaming copy)
    assert estimate_seconds(units, torch.device("cpu")) == pytest.approx(3 * (3 * 0.4 + 0.05))


def test_narrows_cuda_path_math_with_a_row_shift() -> None:
    """On CUDA narrow shifts each row by its own max, chosen on the device (no .item() sync); the same
    compiled lines must give softmax and the loss with an [M, 1] shift, masked and poisoned rows included."""
    from softmax_impls import narrow

    x = torch.randn(257, 10)
    x[3] = float("-inf")  # fully masked: nan, as the reference says
    x[4, 2] = float("inf")  # +inf entry: nan row
    x[5, :5] = float("-inf")  # partly masked
    t = torch.randint(0, 10, (257,))
    m = x.amax(1, keepdim=True)
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    e, s = narrow._exp_rows(x, shift)
    y = narrow._scale_rows(e, s)
    ref = torch.softmax(x.double(), 1)
    ok = torch.ones(257, dtype=torch.bool)
    ok[[3, 4]] = False
    assert torch.allclose(y[ok].double(), ref[ok], rtol=1e-6, atol=1e-12)
    assert y[3].isnan().all() and y[4].isnan().all()
    _, _, loss = narrow._ce_forward(x, t, shift)
    want = torch.nn.functional.cross_entropy(x.double(), t, reduction="none")
    assert loss.shape == (257,)
    assert torch.allclose(loss[ok].double(), want[ok], rtol=1e-6)


def _venv_with_the_host_torch(where: Path) -> Path:
    """A fresh venv with system site packages and no pip of its own, which sees this venv's packages (torch,
    pip, setuptools) through a .pth file: a machine whose torch was installed by someone else."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", "--system-site-packages", str(where)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    python = where / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    (Path(own_site) / "host_torch.pth").write_text(f"{site}\n")
    return python


@pytest.mark.slow
def test_gpu_check_script_stages_run_offline_with_the_machines_own_torch(tmp_path: Path) -> None:
    python = _venv_with_the_host_torch(tmp_path / "venv")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "bench/tools/gpu_check.sh"), "--device", "cpu", "--smoke",
                           "--out", str(out), "--python", str(python)],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"})
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary
    for stage in ("environment", "install", "tests", "check", "study", "report"):
        assert f"{stage}: ok" in summary
    # installed offline, in place, into the fresh venv; torch untouched
    probe = subprocess.run([str(python), "-c", "import bench, torch; print(bench.__file__, torch.__version__)"],
                           capture_output=True, text=True, check=True).stdout
    assert str(ROOT) in probe and torch.__version__ in probe
    (run,) = (out / "results").iterdir()
    assert (run / "throughput.csv").stat().st_size > 0 and (out / "report" / "index.html").exists()


def test_gpu_check_script_refuses_an_unknown_option(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "bench/tools/gpu_check.sh"), "--devcie", "cuda"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --devcie" in proc.stderr


def test_llm_presets_cover_todays_vocabularies_sized_to_the_device() -> None:
    from bench.studies.stability.presets import LLM_LENGTHS_DTYPES, STABILITY_PRESETS
    from bench.studies.throughput.presets import LLM, LLM_VOCABS

    assert LLM_VOCABS == (32000, 50257, 128256, 151936, 262144)
    cpu = plan(THROUGHPUT_PRESETS[LLM["cpu"][False]], ["torch"])
    assert {u.cols for u in cpu} == set(LLM_VOCABS) and {u.op for u in cpu} == {"ce_fwd_bwd", "softmax_fwd"}
    assert {u.dtype for u in cpu} == {"bfloat16", "float16", "float32"}
    sizes = {u.dtype: 2 if u.dtype != "float32" else 4 for u in cpu}
    assert all(u.rows * u.cols * sizes[u.dtype] <= 512 * 2**20 for u in cpu)  # one tensor of at most 512 MB
    everyone = softmax_impls.names() + PEERS
    assert estimate_seconds(plan(THROUGHPUT_PRESETS["llm"], everyone), torch.device("cpu")) < 10 * 60
    gpu = plan(THROUGHPUT_PRESETS[LLM["cuda"][False]], ["torch"])
    assert {u.rows for u in gpu} == {4096} and {u.cols for u in gpu} == set(LLM_VOCABS)
    assert set(STABILITY_PRESETS["llm"].lengths) == set(LLM_VOCABS)
    assert LLM_LENGTHS_DTYPES["llm"] == ("bfloat16", "float16", "float32")
