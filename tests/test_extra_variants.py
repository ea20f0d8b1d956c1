"""The variants beyond the chapter: online, accurate, compiled, triton, narrow, chunked.

Each against a float64 reference on ordinary and irregular shapes, forward and gradients, plus what each
one exists for: online's -inf prefix, accurate's tiny losses (against mpmath), chunked's memory bound,
narrow's two paths, triton's kernels under Triton's interpreter (in a subprocess: the interpreter is chosen
when the kernels are decorated, at import).

    .venv/bin/pytest -q tests/test_extra_variants.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mpmath
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import softmax_impls
from softmax_impls import accurate, chunked, narrow, online

CPU_VARIANTS = ["online", "accurate", "compiled", "narrow", "chunked"]
# (shape, dim): the chapter's, an irregular one, one row longer than online's block, a 3-D one on dim 0
SHAPES = [((256, 10), -1), ((37, 781), 1), ((3, 9001), -1), ((5, 4, 6), 0)]
TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14),
       torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}


def _logits(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


def _targets(n: int, c: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def test_all_six_are_registered() -> None:
    names = softmax_impls.names()
    for name in ["online", "accurate", "compiled", "triton", "narrow", "chunked"]:
        assert name in names, softmax_impls.broken().get(name)


@pytest.mark.parametrize("name", CPU_VARIANTS)
@pytest.mark.parametrize("shape,dim", SHAPES, ids=lambda s: str(s))
def test_softmax_and_log_softmax_match_float64(name: str, shape: tuple[int, ...], dim: int) -> None:
    v = softmax_impls.get(name)
    x = _logits(shape, torch.float32)
    ref = x.double()
    y = v.softmax(x, dim)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), torch.softmax(ref, dim), **TOL[torch.float32])
    ls = v.log_softmax(x, dim)
    torch.testing.assert_close(ls.double(), torch.log_softmax(ref, dim), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", CPU_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,c", [(256, 10), (37, 781)])
def test_cross_entropy_and_its_gradient_match_float64(name: str, dtype: torch.dtype, n: int, c: int) -> None:
    if name == "compiled" and dtype != torch.float32:
        pytest.skip("compiled: one dtype keeps the compile time of the suite small")
    v = softmax_impls.get(name)
    x = _logits((n, c), dtype).requires_grad_()
    t = _targets(n, c)
    w = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # a non-uniform grad_out
    loss = v.cross_entropy(x, t)
    assert loss.dtype == dtype and loss.shape == (n,)
    (loss.double() * w).sum().backward()
    xr = x.detach().double().requires_grad_()
    ref = F.cross_entropy(xr, t, reduction="none")
    (ref * w).sum().backward()
    torch.testing.assert_close(loss.detach().double(), ref.detach(), **TOL[dtype])
    torch.testing.assert_close(x.grad.double(), xr.grad, **TOL[dtype])


@pytest.mark.parametrize("name", ["online", "accurate", "narrow", "chunked"])
def test_softmax_gradient_matches_float64(name: str) -> None:
    v = softmax_impls.get(name)
    x = _logits((33, 10), torch.float32).requires_grad_()
    gy = _logits((33, 10), torch.float32, seed=5)
    v.softmax(x, -1).backward(gy)
    xr = x.detach().double().requires_grad_()
    torch.softmax(xr, -1).backward(gy.double())
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-6)
    z = x.detach().clone().requires_grad_()
    v.log_softmax(z, -1).backward(gy)
    zr = x.detach().double().requires_grad_()
    torch.log_softmax(zr, -1).backward(gy.double())
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-5, atol=1e-5)


# -- online ------------------------------------------------------------------------------------------------

def test_online_survives_a_leading_block_of_minus_inf() -> None:
    # the first two blocks are all -inf: the running max is -inf there, and exp(-inf - -inf) would be nan
    x = _logits((4, 2 * online.BLOCK + 50), torch.float32)
    x[:, : 2 * online.BLOCK + 10] = float("-inf")
    t = torch.full((4,), 2 * online.BLOCK + 20)
    y = online.softmax(x)
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), torch.softmax(x.double(), -1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(online.cross_entropy(x, t).double(),
                               F.cross_entropy(x.double(), t, reduction="none"), rtol=1e-5, atol=1e-6)
    shift, d = online.online_stats(x, block=7)  # many tiny blocks, most of them all -inf
    torch.testing.assert_close((shift + d.log()).squeeze(1).double(), torch.logsumexp(x.double(), -1))


def test_online_keeps_nan_for_a_fully_masked_row_only() -> None:
    x = _logits((3, 50), torch.float32)
    x[1] = float("-inf")
    y = online.softmax(x)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2]]).any()


# -- accurate ----------------------------------------------------------------------------------------------

def _mp_loss(row: torch.Tensor, t: int) -> float:
    """-log softmax(row)[t] with 50 digits, on the row's exact (already rounded) values."""
    with mpmath.workdps(50):
        vals = [mpmath.mpf(float(v)) for v in row.double()]
        return float(mpmath.log(sum(mpmath.exp(v - vals[t]) for v in vals)))


@pytest.mark.parametrize("d", [20.0, 40.0, 80.0])
def test_accurate_keeps_tiny_confident_losses(d: float) -> None:
    n = 10
    x = (torch.randn(6, n, generator=torch.Generator().manual_seed(3)) * 0.25).float()
    t = _targets(6, n)
    x[torch.arange(6), t] = x.max(1).values + d
    loss = accurate.cross_entropy(x, t)
    expected = torch.tensor([_mp_loss(x[i], int(t[i])) for i in range(6)], dtype=torch.float64)
    assert (expected > 0).all() and (expected < 1e-7).all()  # about (n-1)e^-d, far below float32's u
    ulp = torch.finfo(torch.float32).eps * expected
    assert ((loss.double() - expected).abs() <= 4 * ulp).all(), (loss, expected)
    assert (F.cross_entropy(x, t, reduction="none") == 0).all()  # what the builtin returns there


def _mp_grad(row: torch.Tensor, t: int) -> list[float]:
    """softmax(row) - onehot(t) with 50 digits."""
    with mpmath.workdps(50):
        vals = [mpmath.mpf(float(v)) for v in row.double()]
        total = sum(mpmath.exp(v) for v in vals)
        return [float(mpmath.exp(v) / total - (1 if i == t else 0)) for i, v in enumerate(vals)]


def test_accurate_tiny_loss_gradient_and_non_argmax_target() -> None:
    x = torch.tensor([[40.0, 0.0, 0.0, 0.0], [0.0, 40.0, 1.0, -3.0]], requires_grad=True)
    t = torch.tensor([0, 2])  # row 0: confident and correct; row 1: target not the argmax
    loss = accurate.cross_entropy(x, t)
    loss.sum().backward()
    rows = x.detach()
    ref_loss = torch.tensor([_mp_loss(rows[i], int(t[i])) for i in range(2)], dtype=torch.float64)
    ref_grad = torch.tensor([_mp_grad(rows[i], int(t[i])) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=4e-7, atol=0)
    # the target's gradient p_t - 1 = -3e^-40: float32 p_t - 1 rounds it to 0, accurate keeps it
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=4e-7, atol=0)
    assert x.grad[0, 0] < 0


def test_accurate_logsumexp_never_overflows_and_masks_give_minus_inf() -> None:
    x = torch.tensor([[1e30, 1e30, 0.0], [float("-inf")] * 3, [1.0, 2.0, 3.0]])
    lse = accurate.logsumexp(x)
    assert lse[0] == 1e30 and lse[1] == float("-inf")
    torch.testing.assert_close(lse[2].double(), torch.logsumexp(x[2].double(), 0))


# -- narrow ------------------------------------------------------------------------------------------------

def test_narrow_takes_its_path_for_the_chapter_shape_and_torch_elsewhere() -> None:
    x = _logits((4096, 10), torch.float32)
    assert narrow.narrow_shift(x) is not None
    assert narrow.narrow_shift(x + 1e4) is not None  # translated: one shared shift, still safe
    far = x.clone()
    far[0, 0] = -500.0  # span > 80: a shared shift would underflow row 0, so the general path
    assert narrow.narrow_shift(far) is None
    assert narrow.narrow_shift(_logits((8, 200), torch.float32)) is None  # wide rows
    t = _targets(4096, 10)
    for inp in (x, x + 1e4, far):
        torch.testing.assert_close(narrow.softmax(inp).double(), torch.softmax(inp.double(), -1),
                                   rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(narrow.cross_entropy(inp, t).double(),
                                   F.cross_entropy(inp.double(), t, reduction="none"), rtol=2e-6, atol=1e-6)


def _narrow_step(x: torch.Tensor, t: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """softmax, its gradient, the loss and its gradient of narrow on x."""
    xs = x.clone().requires_grad_()
    y = narrow.softmax(xs)
    y.backward(dy)
    xc = x.clone().requires_grad_()
    loss = narrow.cross_entropy(xc, t)
    loss.backward(dy[:, 0])
    return y.detach(), xs.grad, loss.detach(), xc.grad


@pytest.mark.parametrize("shift", [0.0, 1e4], ids=["in-window", "shared-shift"])
def test_narrow_compiled_and_eager_paths_agree_with_float64(monkeypatch: pytest.MonkeyPatch, shift: float) -> None:
    # The batches of the chapter (256, the last of 96, the 10000 test images): after the first change the
    # batch turns symbolic in the compiled kernel; each batch, both paths, against float64.
    for n in (256, 96, 10000):
        x = _logits((n, 10), torch.float32, seed=n) + shift
        t = _targets(n, 10, seed=n)
        dy = torch.randn(n, 10, generator=torch.Generator().manual_seed(n + 1))
        xr = x.double().requires_grad_()
        yr = torch.softmax(xr, -1)
        yr.backward(dy.double())
        xr2 = x.double().requires_grad_()
        lr = F.cross_entropy(xr2, t, reduction="none")
        lr.backward(dy[:, 0].double())
        compiled_path = _narrow_step(x, t, dy)
        with monkeypatch.context() as m:  # no torch.compile: the same lines, eagerly
            m.setattr(narrow.inductor, "unavailable", lambda device: "no compiler (test)")
            eager_path = _narrow_step(x, t, dy)
        for got in (compiled_path, eager_path):
            y, gx, loss, gl = (v.double() for v in got)
            torch.testing.assert_close(y, yr.detach(), rtol=2e-5, atol=1e-7)
            torch.testing.assert_close(gx, xr.grad, rtol=2e-5, atol=1e-6)
            torch.testing.assert_close(loss, lr.detach(), rtol=2e-6, atol=1e-6)
            torch.testing.assert_close(gl, xr2.grad, rtol=2e-5, atol=1e-6)


def test_compiled_kernels_peak_memory_is_observed_from_outside() -> None:
    # The harness watches malloc from a second thread instead of hooking ops, so compiled kernels (narrow,
    # compiled), whose buffers no op-level hook sees, are measured as they run in the timed region.
    from bench.measure.memory import cpu_memory_unsupported, peak_memory

    if cpu_memory_unsupported():
        pytest.skip(cpu_memory_unsupported())
    x = _logits((4096, 10), torch.float32)
    for name in ("narrow", "compiled"):
        variant = softmax_impls.get(name)
        variant.softmax(x)  # compiled once before, as in the harness: compiling allocates tens of MB
        peak = peak_memory(lambda v=variant: v.softmax(x), torch.device("cpu"))
        assert x.numel() * 4 <= peak <= 8 * x.numel() * 4, name  # the output, and a few temporaries at most


# -- chunked -----------------------------------------------------------------------------------------------

class _LargestAllocation(TorchDispatchMode):
    """Records, per aten op, the largest float tensor it produced (the allocator's view of working memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views, detach and in-place ops reuse an input's storage and allocate nothing; only fresh storage counts
        flat = tree_flatten((args, kwargs))[0]
        inputs = {a.untyped_storage().data_ptr() for a in flat if isinstance(a, torch.Tensor)}
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.untyped_storage().data_ptr() not in inputs:
                name = str(func.overloadpacket)
                self.largest[name] = max(self.largest.get(name, 0), o.numel())
        return out


def _allocations(fn, n: int, c: int) -> dict[str, int]:
    x = _logits((n, c), torch.float32).requires_grad_()
    t = _targets(n, c)
    with _LargestAllocation() as mode:
        fn(x, t).sum().backward()
    return mode.largest


def test_chunked_never_allocates_more_than_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    n, c = 64, 1000
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 8 * c)  # 8 rows per chunk, 8 chunks
    largest = _allocations(chunked.cross_entropy, n, c)
    # the only full-size allocation is the gradient the backward must return
    big = {op: numel for op, numel in largest.items() if numel > 8 * c}
    assert set(big) == {"aten.empty_like"}, largest
    # the same accounting catches the builtin, which saves an [N, C] float32 log-softmax
    builtin = _allocations(lambda a, b: F.cross_entropy(a, b, reduction="none"), n, c)
    assert any(numel >= n * c for op, numel in builtin.items() if op != "aten.empty_like")


def test_chunked_matches_float64_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * 97)  # 3 rows per chunk, last chunk partial
    x = _logits((10, 97), torch.float32).requires_grad_()
    t = _targets(10, 97)
    chunked.cross_entropy(x, t).sum().backward()
    xr = x.detach().double().requires_grad_()
    F.cross_entropy(xr, t, reduction="none").sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked.softmax(x.detach(), 0).double(), torch.softmax(xr.detach(), 0))


# -- compiled ----------------------------------------------------------------------------------------------

def test_compiled_reports_itself_usable_here() -> None:
    # gcc is on this machine: the probe must succeed, and a missing compiler must read as a reason
    assert softmax_impls.get("compiled").skip_reason(torch.device("cpu"), torch.float32) is None


# -- triton ------------------------------------------------------------------------------------------------

def test_triton_is_skipped_on_cpu_without_the_interpreter() -> None:
    v = softmax_impls.get("triton")
    from softmax_impls import triton_kernels

    if triton_kernels.INTERPRET:
        pytest.skip("this process runs under TRITON_INTERPRET=1")
    reason = v.skip_reason(torch.device("cpu"), torch.float32)
    assert reason is not None and "TRITON_INTERPRET=1" in reason


_TRITON_SCRIPT = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from softmax_impls import triton_kernels as tk
    assert tk.variant.skip_reason(torch.device("cpu"), torch.float32) is None
    for max_fused in (tk.MAX_FUSED_BLOCK, 8):  # one block per row, then the looped kernels (blocks of 8)
        tk.MAX_FUSED_BLOCK, tk.LOOP_BLOCK = max_fused, min(tk.LOOP_BLOCK, max_fused)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            tol = dict(rtol=2e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
            g = torch.Generator().manual_seed(0)
            x64 = torch.randn(5, 37, generator=g, dtype=torch.float64) * 3
            x64[0, :20] = float("-inf")  # a -inf prefix longer than two blocks
            t = torch.tensor([25, 3, 36, 0, 17])
            w = torch.rand(5, generator=g, dtype=torch.float64)
            x = x64.to(dtype).requires_grad_()
            (tk.cross_entropy(x, t).double() * w).sum().backward()
            xr = x.detach().double().requires_grad_()
            (F.cross_entropy(xr, t, reduction="none") * w).sum().backward()
            torch.testing.assert_close(tk.cross_entropy(x.detach(), t).double(),
                                       F.cross_entropy(xr.detach(), t, reduction="none"), **tol)
            torch.testing.assert_close(x.grad.double(), xr.grad, **tol)
            gy = torch.randn(5, 37, generator=g, dtype=torch.float64)
            for fn, ref in ((tk.softmax, torch.softmax), (tk.log_softmax, torch.log_softmax)):
                y = x.detach().clone().requires_grad_()
                out = fn(y, 1)
                keep = torch.isfinite(out.detach())
                torch.testing.assert_close(out.detach().double(), ref(xr.detach(), 1), **tol)
                out.backward(torch.where(keep, gy.to(dtype), 0))
                yr = xr.detach().clone().requires_grad_()
                ref(yr, 1).backward(torch.where(keep, gy, 0))
                torch.testing.assert_close(y.grad.double(), yr.grad, **tol)
            x3 = torch.randn(3, 4, 6, generator=g).to(dtype)  # softmax over dim 0 of a 3-D tensor
            torch.testing.assert_close(tk.softmax(x3, 0).double(), torch.softmax(x3.double(), 0), **tol)
    print("triton interpreter ok")
""")


def test_triton_kernels_under_the_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton interpreter ok" in proc.stdout
