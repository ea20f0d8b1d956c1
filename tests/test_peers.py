"""The public-kernel peers (softmax_impls/peers/): forward and gradients against float64, skipped with a reason
where their library, device or dtype is missing, never a broken plugin.

    .venv/bin/pytest -q tests/test_peers.py

Each peer runs here when its library is installed (`make setup` installs the `peers` extra): onnxruntime and
jax on the CPU; liger only under Triton's interpreter, so it is checked in a subprocess with TRITON_INTERPRET=1
at small shapes (the interpreter needs seconds per 1000 rows); quack only on an sm90+ GPU. Tolerances are the
contract's T (64) units of the dtype's roundoff u, scaled as tests/test_variants.py explains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import softmax_impls
from bench.measure.host import dtype_name
from softmax_impls.peers import jax_xla, liger, ort, quack_cute

PEERS = {"onnxruntime": ort, "jax": jax_xla, "liger": liger, "quack": quack_cute}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
SHAPES = [(1823, 781), (37, 10)]
CPU = torch.device("cpu")


def _runnable(name: str, device: torch.device, dtype: torch.dtype) -> softmax_impls.Variant:
    variant = softmax_impls.get(name)
    reason = variant.skip_reason(device, dtype)
    if reason:
        pytest.skip(reason)
    return variant


def _inputs(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, shape[1], (shape[0],), generator=gen)
    w = (torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.5).to(dtype)  # uneven upstream grads
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x.to(device), target.to(device), w.to(device), dy.to(device)


def _within(what: str, got: torch.Tensor, want: torch.Tensor, allowed: torch.Tensor) -> None:
    got = got.detach().double().cpu()
    assert torch.isfinite(got).all(), f"{what}: {int((~torch.isfinite(got)).sum())} non-finite values"
    excess = float(((got - want).abs() / allowed).max())
    assert excess <= 1.0, f"{what}: error {excess:.3g}x the tolerance"


def _prob_scale(p: torch.Tensor, tiny: float) -> torch.Tensor:
    return p.clamp_min(tiny) * (1.0 + p.clamp_min(1e-300).log().abs())


def _check_against_float64(variant: softmax_impls.Variant, shape: tuple[int, int], dtype: torch.dtype,
                           device: torch.device, softmax_grad: bool = True) -> None:
    """Forward (softmax, log_softmax, cross-entropy) and gradients (cross-entropy, softmax) against float64."""
    tol = variant.contract.ordinary_tolerance_ulps * UNIT_ROUNDOFF[dtype]
    tiny = torch.finfo(dtype).tiny
    x, target, w, dy = _inputs(shape, dtype, device)
    x64 = x.double().cpu().requires_grad_(True)
    label = f"{variant.name} {shape} {dtype_name(dtype)}"

    p_ref = torch.softmax(x64, -1)
    p = variant.softmax(x)
    assert p.dtype == dtype and p.shape == x.shape and p.device == x.device, label
    _within(f"{label} softmax", p, p_ref.detach(), tol * _prob_scale(p_ref.detach(), tiny))

    logp_ref = torch.log_softmax(x64, -1).detach()
    if variant.log_softmax is not None:
        logp = variant.log_softmax(x)
        assert logp.dtype == dtype and logp.shape == x.shape, label
        _within(f"{label} log_softmax", logp, logp_ref, tol * logp_ref.abs().clamp_min(1.0))

    loss_ref = -logp_ref.gather(1, target.cpu().unsqueeze(1)).squeeze(1)
    leaf = x.detach().clone().requires_grad_(True)
    loss = variant.cross_entropy(leaf, target)
    assert loss.shape == (shape[0],) and loss.is_floating_point(), label
    _within(f"{label} cross_entropy", loss, loss_ref, tol * loss_ref.abs().clamp_min(1.0))
    loss.backward(w.to(loss.dtype))
    assert torch.equal(leaf.detach(), x), f"{label}: cross_entropy wrote into its input"
    assert leaf.grad is not None and leaf.grad.dtype == dtype and leaf.grad.shape == x.shape, label
    w64 = w.double().cpu().unsqueeze(1)
    onehot = torch.nn.functional.one_hot(target.cpu(), shape[1]).double()
    at_max = torch.nn.functional.one_hot(x64.detach().argmax(1), shape[1]).double()
    p64 = p_ref.detach()
    _within(f"{label} d cross_entropy", leaf.grad, w64 * (p64 - onehot),
            tol * w64 * (_prob_scale(p64, tiny) + onehot + at_max))

    if not softmax_grad:
        return
    # softmax backward: dx = p * (dy - sum(dy * p)); the sum cancels, so the bound is relative to |dy| p
    leaf = x.detach().clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(variant.softmax(leaf), leaf, dy)
    (dx_ref,) = torch.autograd.grad(p_ref, x64, dy.double().cpu())
    assert dx.dtype == dtype and dx.shape == x.shape, label
    dy_scale = dy.double().cpu().abs().amax(1, keepdim=True)
    _within(f"{label} d softmax", dx, dx_ref, tol * dy_scale * 4 * _prob_scale(p64, tiny))


CASES = [pytest.param(name, dtype, id=f"{name}-{dtype_name(dtype)}")
         for name in ("onnxruntime", "jax") for dtype in DTYPES]


@pytest.mark.parametrize("name, dtype", CASES)
def test_peer_matches_float64(name: str, dtype: torch.dtype) -> None:
    variant = _runnable(name, CPU, dtype)
    for shape in SHAPES:
        _check_against_float64(variant, shape, dtype, CPU)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(PEERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_peer_matches_float64_on_cuda(name: str, dtype: torch.dtype) -> None:
    device = torch.device("cuda", 0)
    variant = _runnable(name, device, dtype)
    for shape in SHAPES:
        _check_against_float64(variant, shape, dtype, device)


def test_softmax_along_another_dim() -> None:
    for name in ("onnxruntime", "jax"):
        variant = _runnable(name, CPU, torch.float32)
        x = torch.randn(7, 10, 3)
        for dim in (0, 1, -1):
            assert torch.allclose(variant.softmax(x, dim=dim), torch.softmax(x, dim), rtol=1e-5, atol=1e-7)


def test_liger_under_the_triton_interpreter() -> None:
    """Liger runs on the CPU only under TRITON_INTERPRET=1, which must be set before Triton decorates its kernels:
    a subprocess, at shapes the interpreter does in a second (37x10, and 23 rows of the irregular 781)."""
    if liger.LIB.reason() is not None:
        pytest.skip(liger.LIB.reason())
    script = textwrap.dedent(f"""
        import sys, torch, softmax_impls
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_peers import _check_against_float64
        v = softmax_impls.get("liger")
        reason = v.skip_reason(torch.device("cpu"), torch.float32)
        assert reason is None, reason
        for dtype in v.dtypes:
            for shape in [(37, 10), (23, 781)]:
                # Triton 3.8's interpreter adds and multiplies two bfloat16 blocks as garbage (docs/peers.md), and
                # Liger's softmax backward does dy * y in the input dtype: not a Liger result, so not checked here
                _check_against_float64(v, shape, dtype, torch.device("cpu"), softmax_grad=dtype != torch.bfloat16)
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def test_liger_and_quack_say_why_they_cannot_run_here() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert "TRITON_INTERPRET=1" in (softmax_impls.get("liger").skip_reason(CPU, torch.float32) or "")
    assert "cuda" in (softmax_impls.get("quack").skip_reason(CPU, torch.float32) or "")
    assert softmax_impls.get("onnxruntime").skip_reason(CPU, torch.bfloat16)  # no bfloat16 Softmax on CPU
    assert softmax_impls.get("liger").skip_reason(CPU, torch.float64)


@pytest.mark.parametrize("name, module_name", [("onnxruntime", "onnxruntime"), ("jax", "jax"),
                                               ("liger", "liger_kernel"), ("quack", "quack")])
def test_missing_library_is_skipped_with_a_reason(name: str, module_name: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer whose library cannot be imported is `skipped` with the reason, never a broken plugin."""
    peer = PEERS[name]
    monkeypatch.setitem(sys.modules, module_name, None)  # `import module_name` now raises ImportError
    if name == "liger":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    peer.LIB.reset()
    softmax_impls.reload()
    try:
        assert name in softmax_impls.names() and name not in softmax_impls.broken()
        if name == "quack" and not torch.cuda.is_available():
            reason = peer.LIB.reason()  # on a CPU-only machine quack's first reason is the missing GPU
        else:
            device = torch.device("cuda") if name == "quack" else CPU
            reason = softmax_impls.get(name).skip_reason(device, torch.float32)
        assert reason and "not installed" in reason and "pip install" in reason, reason
        with pytest.raises(RuntimeError, match="not installed"):
            softmax_impls.get(name).softmax(torch.randn(2, 3))
    finally:
        peer.LIB.reset()
        softmax_impls.reload()


def test_a_library_that_fails_to_load_is_a_reason_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise OSError("libfoo.so: cannot open shared object file")

    lib = type(ort.LIB)("onnxruntime", boom)
    assert "failed to import: OSError: libfoo.so" in lib.reason()


def test_cli_list_shows_the_peers(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    main(["list"])
    listed = capsys.readouterr().out
    for name in PEERS:
        assert f"\n{name} " in "\n" + listed, f"{name} missing from softmax-bench list:\n{listed}"


def test_jax_exchanges_tensors_without_copies() -> None:
    if jax_xla.unavailable(CPU):
        pytest.skip(jax_xla.unavailable(CPU))
    x = torch.randn(37, 10)
    assert jax_xla._to_jax(x).unsafe_buffer_pointer() == x.data_ptr()
    y = jax_xla._call("fwd", "softmax", x)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_throughput_validation_accepts_the_peers() -> None:
    """bench/studies/throughput/validate.py checks every throughput output against float64 before timing it."""
    from bench.studies.throughput.validate import check_output

    for name in ("onnxruntime", "jax"):
        variant = _runnable(name, CPU, torch.float32)
        x, target, _, _ = _inputs((37, 10), torch.float32, CPU)
        tol = variant.contract.ordinary_tolerance_ulps
        assert check_output("softmax_fwd", variant.softmax(x, dim=-1), x, None, None, tol) is None, name
        assert check_output("ce_fwd", variant.cross_entropy(x, target), x, target, None, tol) is None, name
