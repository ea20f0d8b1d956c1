"""The `native` variant: hand-written C kernels built on first use (softmax_impls/native.py).

Forward and gradients against float64 on ordinary and irregular shapes, in float32, bfloat16 and float16,
on every ISA path this CPU can run (avx512 and avx2 here: the `isa` fixture switches in-process, one test
forces the path through $SOFTMAX_BENCH_NATIVE_ISA in a subprocess), in both layouts of the kernels (wide
rows, and W narrow rows at a time), with 1 and 2 threads; the special values the stability study checks;
the throughput study's own output validation (bench/validate.py) on every op; the conversions against
torch's; the vector exp and log1p alone against float64 in units of float32 ulps; and that a build failure
leaves the variant registered with a reason. Skipped as a whole where the kernels cannot be built here.

    .venv/bin/pytest -q tests/test_native.py
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import softmax_impls
from softmax_impls import native

CPU = torch.device("cpu")
REASON = native.unavailable(CPU)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

U = 2.0**-24  # float32 unit roundoff
T = 64 * U  # the contract's tolerance
ISAS = native.supported_isas()
HALF = [torch.bfloat16, torch.float16]
# (shape, dim): wide rows, the chapter's narrow rows, a few very wide rows, the longest narrow rows with a
# ragged tail of rows (37 = 2 blocks of 16 + 5), the shortest wide rows, a 3-D tensor on dim 0, one column,
# rows of one 4096-block and a short one (the softmax pipeline's stages then see blocks of different lengths)
SHAPES = [((1823, 781), 1), ((65536, 10), -1), ((3, 131072), -1), ((37, 16), -1), ((37, 17), -1),
          ((5, 4, 6), 0), ((20, 1), -1), ((9, 4196), -1)]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test on one ISA path (every path this CPU supports), then back to the default."""
    native.select_isa(request.param)
    try:
        yield request.param
    finally:
        native.select_isa(None)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thread")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


def _logits(shape: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).float()


def _prob_tol(p: torch.Tensor) -> torch.Tensor:
    # as bench/stability.py: relative, with Blanchard-Higham-Higham's (1 + |ln p|) for the exp of x - max
    return T * p.clamp_min(torch.finfo(torch.float32).tiny) * (1 + p.clamp_min(1e-300).log().abs())


def _assert_within(what: str, got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor) -> None:
    got = got.detach().double()
    assert got.shape == want.shape, f"{what}: shape {list(got.shape)}, expected {list(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: {int((~torch.isfinite(got)).sum())} non-finite values"
    excess = float(((got - want).abs() / tol).max())
    assert excess <= 1.0, f"{what}: error is {excess:.3g}x the tolerance"


def test_registered_and_available() -> None:
    assert "native" in softmax_impls.names(), softmax_impls.broken().get("native")
    v = softmax_impls.get("native")
    assert v.skip_reason(CPU, torch.float32) is None
    assert "cuda" in (v.skip_reason(torch.device("cuda"), torch.float32) or "")


def test_shares_torchs_openmp_runtime() -> None:
    # linked against the very libgomp torch loaded: one OpenMP runtime in the process, not two
    lib = native.library()
    with open("/proc/self/maps") as maps:
        gomps = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(gomps) <= 1, gomps
    assert lib.native_openmp() == (1 if gomps else 0)


@pytest.mark.parametrize("shape,dim", SHAPES, ids=lambda s: str(s))
def test_forward_matches_float64(shape: tuple[int, ...], dim: int, threads: int, isa: str) -> None:
    x = _logits(shape)
    p_ref = torch.softmax(x.double(), dim)
    y = native.softmax(x, dim)
    assert y.dtype == torch.float32
    _assert_within("softmax", y, p_ref, _prob_tol(p_ref))
    ls_ref = torch.log_softmax(x.double(), dim)
    _assert_within("log_softmax", native.log_softmax(x, dim), ls_ref, T * ls_ref.abs().clamp_min(1.0))


@pytest.mark.parametrize("n,c", [(1823, 781), (65536, 10), (3, 131072), (37, 16), (37, 17), (5, 1)])
def test_cross_entropy_and_gradients_match_float64(n: int, c: int, threads: int, isa: str) -> None:
    x = _logits((n, c), seed=1).requires_grad_()
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(2))
    w = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5  # non-uniform
    loss = native.cross_entropy(x, t)
    (loss.double() * w).sum().backward()
    xr = x.detach().double().requires_grad_()
    ref = F.cross_entropy(xr, t, reduction="none")
    (ref * w).sum().backward()
    _assert_within("loss", loss, ref.detach(), T * ref.detach().abs().clamp_min(1.0))
    p = torch.softmax(xr.detach(), 1)
    onehot = F.one_hot(t, c).double()
    _assert_within("dlogits", x.grad, xr.grad, w[:, None] * (_prob_tol(p) + T * onehot))


@pytest.mark.parametrize("shape", [(1823, 781), (65536, 10), (3, 131072), (37, 17)], ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_gradients_match_float64(shape: tuple[int, int], log: bool, threads: int, isa: str) -> None:
    x = _logits(shape, seed=4).requires_grad_()
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # non-uniform
    fn, ref_fn = (native.log_softmax, torch.log_softmax) if log else (native.softmax, torch.softmax)
    (fn(x, -1).double() * dy).sum().backward()
    xr = x.detach().double().requires_grad_()
    (ref_fn(xr, -1) * dy).sum().backward()
    # dx = y (dy - sum dy y) (softmax) or dy - p sum dy (log): the row sum's rounding scales with |dy| n
    p = torch.softmax(xr.detach(), -1)
    row = (dy.abs() * (p if not log else torch.ones_like(p))).sum(-1, keepdim=True)
    tol = (_prob_tol(p) * (dy.abs() + row) + T * p * row) * 4 + (T * dy.abs() if log else 0)
    _assert_within("dx", x.grad, xr.grad, tol)


def test_results_do_not_depend_on_the_thread_count() -> None:
    # rows are split between threads, never a row: the same bits with 1 and 2 threads
    outs = []
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append([native.softmax(_logits(s).to(dt), -1) for s in ((65536, 10), (1823, 781), (64, 4096))
                         for dt in (torch.float32, torch.bfloat16)])
            # float64 narrow blocks, split between threads at block boundaries, with a ragged last block
            x64 = _logits((4099, 10)).double()
            t64 = torch.arange(4099) % 10
            outs[-1] += [native.log_softmax(x64, -1), native.cross_entropy(x64, t64)]
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


# -- bfloat16 and float16: read and written in their dtype, computed in float32 -------------------------------

def _half(dtype: torch.dtype) -> tuple[float, float]:
    """(unit roundoff, half the smallest subnormal): the most a correct rounding of the exact result is off."""
    fi = torch.finfo(dtype)
    return fi.eps / 2, fi.smallest_normal * fi.eps / 2


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("n,c", [(1823, 781), (37, 10), (5, 131072), (40, 16), (19, 33), (9, 4196)], ids=str)
def test_half_precision_matches_float64(dtype: torch.dtype, n: int, c: int, isa: str) -> None:
    # the float64 reference on the same dtype-rounded inputs; the kernel may be off by its float32
    # computation (64 u of float32, scaled as the contract scales) plus one rounding to the dtype
    ud, sub = _half(dtype)
    x = _logits((n, c), seed=11).to(dtype)
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(12))
    w = (torch.rand(n, generator=torch.Generator().manual_seed(13), dtype=torch.float64) + 0.5).to(dtype)
    dy = torch.randn((n, c), generator=torch.Generator().manual_seed(14), dtype=torch.float64).to(dtype)
    assert_ops_match_float64(x, t, w, dy, ud, sub)


def assert_ops_match_float64(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, ud: float,
                             sub: float, dx_extra_u: float = 0.0) -> torch.Tensor:
    """softmax, log_softmax, the loss with its gradient (under dloss w) and the softmax backward (under dy) of
    x against float64 on the same dtype-rounded inputs, within one rounding to the dtype (ud, sub) plus the
    float32 computation's T; `dx_extra_u` widens the softmax backward's. Returns the float64 probabilities."""
    n = x.shape[1]
    xd = x.double()
    p = torch.softmax(xd, 1)
    y = native.softmax(x, 1)
    assert y.dtype == x.dtype
    _assert_within("softmax", y, p, ud * p + _prob_tol(p) + sub)
    ls = torch.log_softmax(xd, 1)
    _assert_within("log_softmax", native.log_softmax(x, 1), ls, (ud + T) * ls.abs().clamp_min(1.0))
    # cross-entropy and its gradient, with a non-uniform dloss (itself rounded to the dtype)
    leaf = x.clone().requires_grad_()
    loss = native.cross_entropy(leaf, t)
    assert loss.dtype == x.dtype
    loss.backward(w)
    ref = F.cross_entropy(xd, t, reduction="none")
    _assert_within("loss", loss, ref, (ud + T) * ref.abs().clamp_min(1.0))
    onehot = F.one_hot(t, n).double()
    want = w.double()[:, None] * (p - onehot)
    tol = ud * want.abs() + w.double()[:, None] * (_prob_tol(p) + T * onehot) + sub
    _assert_within("dlogits", leaf.grad, want, tol)
    # softmax backward from the forward's own (rounded) output: dx = y (dy - sum dy y)
    leaf = x.clone().requires_grad_()
    native.softmax(leaf, 1).backward(dy)
    dyd = dy.double()
    want = p * (dyd - (p * dyd).sum(1, keepdim=True))
    spread = dyd.abs() + (p * dyd.abs()).sum(1, keepdim=True)
    scale = p * spread * (1 + p.clamp_min(1e-300).log().abs())
    # y's own rounding near the subnormal range is absolute (sub), and dx carries it times dy - sum dy y
    _assert_within("softmax dx", leaf.grad, want, 4 * (ud + dx_extra_u) * scale + sub * (spread + 1))
    return p


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_conversions_round_to_nearest_even_as_torch_does(dtype: torch.dtype, isa: str) -> None:
    lib = native.library()
    code = native.DTYPE_CODES[dtype]
    g = torch.Generator().manual_seed(15)
    bits = torch.randint(-2**31, 2**31 - 1, (200_003,), generator=g, dtype=torch.int64).to(torch.int32)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-40, 65504.0, 65520.0, 3.4e38,
                            1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11])  # ties
    x = torch.cat([bits.view(torch.float32), special, torch.randn(1000) * 1e-6, torch.randn(1001) * 1e-39])
    out = torch.empty(x.numel(), dtype=dtype)
    lib.native_convert(x.data_ptr(), out.data_ptr(), x.numel(), 0, code)
    want = x.to(dtype)
    same = (out.view(torch.int16) == want.view(torch.int16)) | (out.isnan() & want.isnan())
    assert bool(same.all()), f"{int((~same).sum())} conversions differ from torch's, e.g. {x[~same][:4].tolist()}"
    back = torch.empty(x.numel(), dtype=torch.float32)
    lib.native_convert(out.data_ptr(), back.data_ptr(), x.numel(), code, 0)
    assert torch.equal(back.nan_to_num(0.5), want.float().nan_to_num(0.5))


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_throughput_validation_accepts_every_op(dtype: torch.dtype, isa: str) -> None:
    # what `softmax-bench throughput` checks before it credits a time (bench/validate.py), on a wide and a
    # narrow shape with ragged tails
    from bench.studies.throughput.ops import OPS
    from bench.studies.throughput.validate import check_output

    v = softmax_impls.get("native")
    for m, n in ((67, 1000), (35, 10)):
        for name, op in OPS.items():
            torch.manual_seed(0)
            inputs = op.make_inputs(m, n, dtype, CPU)
            out = op.closure(v, inputs)()
            problem = check_output(name, out, inputs.x, inputs.target, inputs.dy, v.contract.ordinary_tolerance_ulps)
            assert problem is None, f"{name} {m}x{n} {dtype}: {problem}"


# -- special values, in both layouts: 64 rows of 10 (narrow, 16 rows at a time) and 4 rows of 5000 (wide) -----

def _special_batch(rows: int, cols: int) -> torch.Tensor:
    x = _logits((rows, cols), seed=6, scale=1.0)
    x[0, cols // 3] = float("nan")  # a nan row
    x[1, cols // 2] = float("inf")  # a +inf row
    x[2] = float("-inf")  # a fully masked row
    x[3, ::2] = float("-inf")  # a partially masked row
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,cols", [(64, 10), (4, 5000), (16, 16), (16, 17)])
def test_special_values(rows: int, cols: int, threads: int, isa: str, dtype: torch.dtype) -> None:
    x = _special_batch(rows, cols).to(dtype)
    ref = torch.softmax(x.double(), 1)  # nan for rows 0-2; zeros at the masked entries of row 3
    for name, out in [("softmax", native.softmax(x, 1)), ("log_softmax", native.log_softmax(x, 1))]:
        assert torch.isnan(out[:3]).all(), f"{name}: nan, +inf and fully masked rows must come out nan"
        assert not torch.isnan(out[3:]).any(), f"{name}: nan leaked into other rows"
    y = native.softmax(x, 1)
    assert (y[3, ::2] == 0).all(), "masked entries must be exact zeros"
    ud, sub = _half(dtype) if dtype in HALF else (0.0, 0.0)  # one rounding to a half dtype on top
    _assert_within("softmax ordinary rows", y[3:], ref[3:], ud * ref[3:] + _prob_tol(ref[3:]) + sub)
    assert torch.isneginf(native.log_softmax(x, 1)[3, ::2]).all()
    # cross-entropy and its gradient: nan exactly in the poisoned rows, exact zeros at masked entries
    t = torch.ones(rows, dtype=torch.int64)
    leaf = x.clone().requires_grad_()
    loss = native.cross_entropy(leaf, t)
    loss.sum().backward()
    assert torch.isnan(loss[:3]).all() and torch.isfinite(loss[3:]).all()
    assert torch.isnan(leaf.grad[:3]).all() and torch.isfinite(leaf.grad[3:]).all()
    assert (leaf.grad[3, ::2] == 0).all()


@pytest.mark.parametrize("rows,cols", [(32, 10), (2, 3000)])
def test_large_translations_and_far_targets(rows: int, cols: int, isa: str) -> None:
    x = _logits((rows, cols), seed=7, scale=1.0)
    ref = torch.softmax(x.double(), 1)
    for c in (1e4, -1e4, 3e4):  # exp(x) overflows or underflows; a shifted sum never does
        _assert_within(f"softmax(x + {c:g})", native.softmax(x + c, 1), ref, _prob_tol(ref) * 200)
    # the target 200 below the max: p_t underflows, -log(p_t) would be inf; the fused loss stays finite
    far = x.clone()
    far[:, 0] = far.max(1).values - 200
    t = torch.zeros(rows, dtype=torch.int64)
    loss = native.cross_entropy(far, t)
    want = F.cross_entropy(far.double(), t, reduction="none")
    _assert_within("far-target loss", loss, want, T * want.abs())


def test_narrow_layout_keeps_the_contract(isa: str) -> None:
    # the 'check' preset runs 3 rows per case, below the 16 rows the narrow layout needs: run every family
    # again on 32 rows of 8, 10 and 16 against the 50-digit reference
    from bench.studies.stability.contracts import check_variants, format_check
    from bench.studies.stability.presets import StabilityPreset

    preset = StabilityPreset("narrow", "test", lengths=(8, 10, 16), long_lengths=(16,), rows=32, long_rows=32,
                             thresholds=False)
    lines = check_variants([softmax_impls.get("native")], CPU, preset, ["float32", "bfloat16", "float16"],
                           progress=False)["native"]
    assert lines and all(ln.ok for ln in lines), "\n" + format_check(lines)


@pytest.mark.parametrize("path", [p for p in ISAS if p != ISAS[0]])
def test_every_other_isa_path_keeps_the_contract(path: str) -> None:
    # tests/test_contracts.py checks the default path (the widest) in every dtype; the same 'check' preset
    # (what `softmax-bench check native` runs) on the others
    from bench.studies.stability.contracts import check_variants, format_check
    from bench.studies.stability.presets import STABILITY_PRESETS

    native.select_isa(path)
    try:
        lines = check_variants([softmax_impls.get("native")], CPU, STABILITY_PRESETS["check"],
                               ["float64", "float32", "bfloat16", "float16"], progress=False)["native"]
    finally:
        native.select_isa(None)
    assert lines and all(ln.ok for ln in lines), "\n" + format_check(lines)


def test_cross_entropy_of_two_equal_huge_logits_is_log2(isa: str) -> None:
    for rows in (1, 32):
        x = torch.full((rows, 2), 1e8)
        loss = native.cross_entropy(x, torch.zeros(rows, dtype=torch.int64))
        assert torch.allclose(loss.double(), torch.full((rows,), math.log(2), dtype=torch.float64), rtol=2 * U)


@pytest.mark.parametrize("rows,cols", [(32, 10), (2, 1000)])
def test_confident_correct_keeps_tiny_losses(rows: int, cols: int, isa: str) -> None:
    # the target 30 above the rest: loss = log1p((n - 1) e^-30) ~ 1e-12, which log(sum) rounds to 0
    x = torch.zeros(rows, cols)
    x[:, 0] = 30.0
    loss = native.cross_entropy(x, torch.zeros(rows, dtype=torch.int64))
    want = math.log1p((cols - 1) * math.exp(-30.0))
    assert torch.allclose(loss.double(), torch.full((rows,), want, dtype=torch.float64), rtol=8 * U, atol=0)
    lp = native.log_softmax(x, 1)[:, 0].double()
    assert torch.allclose(lp, torch.full((rows,), -want, dtype=torch.float64), rtol=8 * U, atol=0)


# -- the vector exp and log1p alone -------------------------------------------------------------------------

def _ulps(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|got - ref| in units of the float32 spacing at ref (2^-149 below the normal range)."""
    r = ref.float().abs()
    spacing = (torch.nextafter(r, torch.tensor(math.inf)).double() - r.double()).clamp_min(2.0**-149)
    return (got.double() - ref).abs() / spacing


def _apply(fn, x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    fn(x.data_ptr(), y.data_ptr(), x.numel())
    return y


def test_exp_within_one_ulp_over_the_whole_range(isa: str) -> None:
    lib = native.library()
    x = torch.linspace(-110.0, 89.0, 2_000_003)  # subnormal results below -87.3, zeros below -103.97
    ref = torch.exp(x.double())
    finite = ref < float(torch.finfo(torch.float32).max)
    err = _ulps(_apply(lib.native_exp, x), ref)[finite]
    assert float(err.max()) <= 1.0, f"exp: {float(err.max()):.3f} ulp at x = {float(x[finite][err.argmax()])}"
    # the kernels' hot path, x <= 0: exponent-bit scaling, with the exact fallback below -86 and for nan
    xn = x[x <= 0]
    err = _ulps(_apply(lambda a, b, n: lib.native_exp_nonpos(a, b, n, 0), xn), torch.exp(xn.double()))
    assert float(err.max()) <= 1.0, f"exp (x <= 0): {float(err.max()):.3f} ulp"
    special = torch.tensor([-math.inf, math.nan, 0.0, -0.0, -104.0, -1e30, 89.0, 1e30, math.inf])
    got = _apply(lib.native_exp, special)
    assert torch.isnan(got[1]) and got.tolist()[2:] == [1.0, 1.0, 0.0, 0.0, math.inf, math.inf, math.inf]
    assert got[0] == 0
    for code in (0, 1):  # the float32 and the half-precision polynomial
        got = _apply(lambda a, b, n, c=code: lib.native_exp_nonpos(a, b, n, c), special[:6])
        assert torch.isnan(got[1]) and got.tolist()[2:] == [1.0, 1.0, 0.0, 0.0] and got[0] == 0


def test_half_precision_exp_is_far_below_a_half_rounding(isa: str) -> None:
    # the degree-4 polynomial of half-precision rows: 5.6e-6 relative (float16's unit roundoff is 4.9e-4)
    lib = native.library()
    x = torch.linspace(-86.0, 0.0, 1_000_003)
    ref = torch.exp(x.double())
    got = _apply(lambda a, b, n: lib.native_exp_nonpos(a, b, n, 1), x).double()
    rel = float(((got - ref).abs() / ref).max())
    assert rel <= 6e-6, f"half-precision exp: relative error {rel:.3g}"


def test_log1p_within_a_few_ulp(isa: str) -> None:
    lib = native.library()
    s = torch.logspace(-40, 6, 500_001, dtype=torch.float64).float()  # the s' of a row: tiny to n
    err = _ulps(_apply(lib.native_log1p, s), torch.log1p(s.double()))
    assert float(err.max()) <= 4.0, f"log1p: {float(err.max()):.2f} ulp"
    special = _apply(lib.native_log1p, torch.tensor([0.0, -1.0, math.nan, math.inf]))
    assert special[0] == 0 and special[1] == -math.inf and torch.isnan(special[2]) and special[3] == math.inf


# -- dtypes, layouts, errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_dtypes(dtype: torch.dtype, isa: str) -> None:
    x = _logits((40, 30), seed=8).to(dtype)
    t = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(9))
    y, ls, loss = native.softmax(x, 1), native.log_softmax(x, 1), native.cross_entropy(x, t)
    assert y.dtype == ls.dtype == loss.dtype == dtype
    # half inputs run in float32 and are rounded once at the end: at most one ulp from the rounded truth;
    # float64 runs in float64, a few ulp from torch's
    want = torch.softmax(x.double(), 1).to(dtype)
    eps = torch.finfo(dtype).eps
    tol = dict(rtol=16 * eps, atol=0) if dtype == torch.float64 else dict(rtol=eps, atol=1e-7)
    torch.testing.assert_close(y, want, **tol)
    torch.testing.assert_close(loss, F.cross_entropy(x.double(), t, reduction="none").to(dtype), **tol)
    leaf = x.clone().requires_grad_()
    native.cross_entropy(leaf, t).sum().backward()
    assert leaf.grad.dtype == dtype and torch.isfinite(leaf.grad).all()


U64 = 2.0**-53  # float64 unit roundoff


# float64 rows of up to 32 run 8 rows at a time (4 on avx2), one row per lane, for the ops where that is
# faster; the last m % 8 rows one at a time: the chapter's 256x10 and 60000x10, a ragged 37x10, the longest
# narrow rows of each op with a remainder (13x12, 13x32), exactly one block of 16, rows of 7 and 3
@pytest.mark.parametrize("n,c", [(1823, 781), (60000, 10), (5, 131072), (37, 3), (256, 10), (37, 10), (8, 16),
                                 (13, 12), (13, 32), (45, 7)], ids=str)
def test_float64_matches_a_float64_reference(n: int, c: int, isa: str) -> None:
    # torch's float64 kernels as the reference: both are a few u of float64 off the truth, far inside the
    # contract's 64 u (with the (1 + |ln p|) scaling of the exp of x - max)
    t64 = 64 * U64
    x = torch.randn((n, c), generator=torch.Generator().manual_seed(16), dtype=torch.float64) * 3
    p = torch.softmax(x, 1)
    ptol = t64 * p * (1 + p.clamp_min(1e-300).log().abs()) + 1e-300
    _assert_within("softmax", native.softmax(x, 1), p, ptol)
    ls = torch.log_softmax(x, 1)
    _assert_within("log_softmax", native.log_softmax(x, 1), ls, t64 * ls.abs().clamp_min(1.0))
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(17))
    leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.rand(n, generator=torch.Generator().manual_seed(18), dtype=torch.float64) + 0.5
    loss, ref = native.cross_entropy(leaf, t), F.cross_entropy(ref_leaf, t, reduction="none")
    (loss * w).sum().backward()
    (ref * w).sum().backward()
    _assert_within("loss", loss, ref.detach(), t64 * ref.detach().abs().clamp_min(1.0))
    _assert_within("dlogits", leaf.grad, ref_leaf.grad, w[:, None] * (ptol + t64 * F.one_hot(t, c)))
    dy = torch.randn((n, c), generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    native.softmax(leaf, 1).backward(dy)
    torch.softmax(ref_leaf, 1).backward(dy)
    row = (dy.abs() * p).sum(1, keepdim=True)
    _assert_within("softmax dx", leaf.grad, ref_leaf.grad, 4 * (ptol * (dy.abs() + row) + t64 * p * row) + 1e-300)


def test_float64_exp_within_one_ulp_of_libm(isa: str) -> None:
    lib = native.library()
    x = torch.linspace(-800.0, 720.0, 1_000_003, dtype=torch.float64)  # subnormal results below -708.4
    got = torch.empty_like(x)
    lib.native_exp64(x.data_ptr(), got.data_ptr(), x.numel(), 1)
    ref = torch.exp(x)  # glibc's exp: correctly rounded in practice
    assert torch.equal(ref == 0, got == 0) and torch.equal(ref.isinf(), got.isinf())
    spacing = (torch.nextafter(ref, torch.tensor(math.inf, dtype=torch.float64)) - ref).clamp_min(2.0**-1074)
    ok = torch.isfinite(ref)
    err = float(((got - ref).abs() / spacing)[ok].max())
    assert err <= 1.0, f"float64 exp: {err:.3f} ulp"
    xn = x[x <= 0]  # the hot path gives the same bits where it applies
    fast = torch.empty_like(xn)
    lib.native_exp64(xn.data_ptr(), fast.data_ptr(), xn.numel(), 0)
    assert torch.equal(fast, got[x <= 0])
    special = torch.tensor([-math.inf, math.nan, 0.0, math.inf], dtype=torch.float64)
    out = torch.empty_like(special)
    lib.native_exp64(special.data_ptr(), out.data_ptr(), 4, 1)
    assert out[0] == 0 and out[1].isnan() and out[2] == 1 and out[3] == math.inf


def _f64_special_batch(rows: int, cols: int) -> torch.Tensor:
    # every kind of row the float64 kernels single out, spread over the lanes of a block and the remainder
    x = torch.randn((rows, cols), generator=torch.Generator().manual_seed(20), dtype=torch.float64) * 3
    x[1, cols // 3] = math.nan                        # a nan row
    x[2, cols // 2] = math.inf                        # a +inf row
    x[3] = -math.inf                                  # a fully masked row
    x[4, ::2] = -math.inf                             # a partially masked row
    x[5] = 2.5                                        # all ties
    x[6, :3] = 7.0                                    # three copies of the max
    x[7, 1:] = x[7, 0] - 730.0                        # exps of x - max far below the normal range: subnormal
    x[8, 1:] = x[8, 0] - 40.0                         # a confident row: s' ~ 1e-17, the loss kept by log1p
    x[9] = 1e300                                      # huge equal logits
    x[10, 0] = math.nan                               # nan at the target column
    x[rows - 1, cols - 1] = math.inf                  # a +inf row in the remainder
    x[rows - 2] = -math.inf                           # a fully masked row in the remainder
    return x


def _f64_ops(lib, x: torch.Tensor, t: torch.Tensor, dy: torch.Tensor, g: torch.Tensor, rows: int | None = None):
    """Every float64 op on x's first `rows` rows (all of them by default), through the raw kernels."""
    m, n = x.shape if rows is None else (rows, x.shape[1])
    out = {}
    for log in (0, 1):
        y = torch.full_like(x, 123.0)
        assert lib.native_softmax_fwd(x.data_ptr(), y.data_ptr(), m, n, log, 3, 1) == 0
        out["log_softmax" if log else "softmax"] = y
        dx = torch.full_like(x, 123.0)
        assert lib.native_softmax_bwd(y.data_ptr(), dy.data_ptr(), dx.data_ptr(), m, n, log, 3, 1) == 0
        out["log_softmax_bwd" if log else "softmax_bwd"] = dx
    loss = torch.full((x.shape[0],), 123.0, dtype=torch.float64)
    stats = torch.zeros(2 * x.shape[0], dtype=torch.float64)
    s, lt = stats.data_ptr(), stats.data_ptr() + 8 * x.shape[0]
    out["bad"] = lib.native_ce_fwd(x.data_ptr(), t.data_ptr(), loss.data_ptr(), s, lt, m, n, 3, 1)
    out["loss"], out["shift"], out["lse_tail"] = loss, stats[: x.shape[0]], stats[x.shape[0]:]
    dx = torch.full_like(x, 123.0)
    assert lib.native_ce_bwd(x.data_ptr(), t.data_ptr(), s, lt, g.data_ptr(), dx.data_ptr(), m, n, 3, 1) == 0
    out["ce_bwd"] = dx
    return out


@pytest.mark.parametrize("rows,cols", [(37, 10), (16, 10), (21, 7), (45, 12), (13, 16), (19, 32), (11, 3)], ids=str)
def test_float64_narrow_blocks_match_the_row_kernels(rows: int, cols: int, isa: str) -> None:
    # the same rows through the block kernels (all rows at once) and through the one-row kernels (one call per
    # row: m = 1 is below a block): the same special values, and the same numbers up to the order of a row's
    # sums (a few ulp); a bad target gives a nan loss and is counted
    lib = native.library()
    x = _f64_special_batch(rows, cols)
    t = torch.randint(0, cols, (rows,), generator=torch.Generator().manual_seed(21))
    t[5], t[9], t[10] = -1, cols, 0  # two bad targets; nan at the target
    t[4], t[7], t[8] = 1, 0, 0  # an unmasked target; the max as the target of the far and confident rows
    dy = torch.randn((rows, cols), generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    g = torch.rand(rows, generator=torch.Generator().manual_seed(23), dtype=torch.float64) + 0.5
    got = _f64_ops(lib, x, t, dy, g)
    assert got["bad"] == 2
    want: dict[str, list[torch.Tensor]] = {}
    for r in range(rows):
        one = _f64_ops(lib, x[r:r + 1].clone(), t[r:r + 1].clone(), dy[r:r + 1].clone(), g[r:r + 1].clone())
        for k, v in one.items():
            want.setdefault(k, []).append(v if k != "bad" else torch.tensor([float(v)]))
    ulp = 2.0**-52
    for k, parts in want.items():
        if k == "bad":
            continue
        a, b = got[k], torch.cat(parts)
        if k == "shift":  # a nan row's shift is some entry of it (max ignores nan one way or another)
            a, b = a[~x.isnan().any(1)], b[~x.isnan().any(1)]
        differ = sorted(set((a.isnan() ^ b.isnan()).nonzero()[:, 0].tolist()))
        assert torch.equal(a.isnan(), b.isnan()), f"{k}: nan in rows {differ}"
        assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), f"{k}: inf differ"
        fin = torch.isfinite(a)
        # a few ulp of the larger operand in each formula (the row sums' order), absolute 2^-1074 below normal
        scale = (b.abs() + (1 if k in ("log_softmax", "loss", "log_softmax_bwd", "softmax_bwd", "ce_bwd") else 0))
        tol = 8 * ulp * scale * (cols if k.endswith("bwd") else 1) + 2.0**-1074
        excess = ((a - b).abs() / tol)[fin]
        assert float(excess.max()) <= 1.0, f"{k}: {float(excess.max()):.3g}x the tolerance"
    assert got["loss"][5].isnan() and got["loss"][9].isnan() and got["loss"][10].isnan()
    assert torch.isfinite(got["loss"][[0, 4, 6, 7, 8]]).all()
    assert got["loss"][8] > 0 and float(got["loss"][8]) == pytest.approx((cols - 1) * math.exp(-40.0), rel=1e-14)
    assert 0 < float(got["loss"][7]) < 2.0**-1022  # log1p of a subnormal s'
    assert (got["softmax"][4, ::2] == 0).all() and (got["ce_bwd"][4, ::2] == 0).all()
    sub = got["softmax"][7, 1:]
    assert ((sub > 0) & (sub < 2.0**-1022)).all(), "exp(-730) / S must come out subnormal, not 0"
    assert float(got["softmax"][5, 0]) == pytest.approx(1 / cols, rel=1e-15)


def test_float64_log1p_within_one_ulp(isa: str) -> None:
    # the vector log1p of the narrow float64 rows, against glibc's (itself below 1 ulp) on s' from tiny to
    # the row length, around the reduction's boundaries (sqrt2 - 1, 1, 2 sqrt2 - 1) and the specials
    lib = native.library()
    fn = lib.native_log1p64
    g = torch.Generator().manual_seed(24)
    x = torch.cat([torch.logspace(-320, 1.6, 100_001, dtype=torch.float64),
                   torch.rand(100_000, generator=g, dtype=torch.float64) * 40,
                   torch.linspace(0.41, 0.42, 20_001, dtype=torch.float64),
                   torch.linspace(0.99, 1.01, 20_001, dtype=torch.float64),
                   torch.linspace(1.82, 1.83, 20_001, dtype=torch.float64),
                   -torch.rand(20_000, generator=g, dtype=torch.float64) * 0.999])
    y = torch.empty_like(x)
    fn(x.data_ptr(), y.data_ptr(), x.numel())
    ref = torch.tensor([math.log1p(v) for v in x.tolist()], dtype=torch.float64)
    up = torch.nextafter(ref.abs(), torch.tensor(math.inf, dtype=torch.float64))
    spacing = (up - ref.abs()).clamp_min(2.0**-1074)
    err = ((y - ref).abs() / spacing).max()
    assert float(err) <= 1.0, f"float64 log1p: {float(err):.3f} ulp"
    special = torch.tensor([0.0, -0.0, -1.0, -2.0, math.nan, math.inf], dtype=torch.float64)
    out = torch.empty_like(special)
    fn(special.data_ptr(), out.data_ptr(), special.numel())
    assert out[0] == 0 and out[1] == 0 and math.copysign(1, float(out[1])) == -1 and out[2] == -math.inf
    assert out[3].isnan() and out[4].isnan() and out[5] == math.inf


def test_non_contiguous_and_other_dims() -> None:
    x = _logits((30, 50), seed=10)
    for view, dim in [(x.t(), 0), (x.t(), 1), (x[:, ::2], 1), (x.view(5, 6, 50), 1)]:
        torch.testing.assert_close(native.softmax(view, dim).double(), torch.softmax(view.double(), dim),
                                   rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(native.cross_entropy(x.t().contiguous().t(), torch.zeros(30, dtype=torch.int64)),
                               F.cross_entropy(x, torch.zeros(30, dtype=torch.int64), reduction="none"),
                               rtol=1e-5, atol=1e-6)
    assert native.softmax(torch.empty(0, 7)).shape == (0, 7)


@pytest.mark.parametrize("rows", [5, 32])
def test_out_of_range_targets_raise(rows: int, isa: str) -> None:
    with pytest.raises(IndexError, match="outside"):
        native.cross_entropy(torch.randn(rows, 10), torch.full((rows,), 10, dtype=torch.int64))
    with pytest.raises(IndexError, match="outside"):
        native.cross_entropy(torch.randn(rows, 10), torch.full((rows,), -1, dtype=torch.int64))


# -- building ------------------------------------------------------------------------------------------------

def test_build_is_cached_by_content(tmp_path: Path) -> None:
    first = native.build(out_dir=tmp_path)
    assert first.exists() and native.build(out_dir=tmp_path) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")], "temporary build folder left"


def test_build_failures_are_reasons(tmp_path: Path) -> None:
    with pytest.raises(native.BuildError, match="no C compiler"):
        native.build(cc=[str(tmp_path / "missing-cc")], out_dir=tmp_path)
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                      "echo 'x.c:1:1: error: no such luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(native.BuildError, match="compiling native_kernels.c failed: .*no such luck"):
        native.build(cc=[str(broken)], out_dir=tmp_path)


def test_missing_compiler_keeps_the_variant_registered(tmp_path: Path) -> None:
    # a fresh process: the build happens once per process, on first use
    code = textwrap.dedent("""
        import torch, softmax_impls
        assert "native" in softmax_impls.names(), softmax_impls.broken()
        print(softmax_impls.get("native").skip_reason(torch.device("cpu"), torch.float32))
    """)
    env = {**os.environ, native.CC_ENV: str(tmp_path / "no-such-cc"), native.CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "native kernels unavailable: no C compiler" in done.stdout


def test_the_isa_path_can_be_forced_from_the_environment(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import torch, softmax_impls
        from softmax_impls import native
        from bench.measure.host import machine_info
        v = softmax_impls.get("native")
        print(native.isa(), native.library().native_isa().decode(), machine_info()["native_isa"], sep="|")
        print(v.summary)
        print(v.softmax(torch.randn(3, 40, dtype=torch.bfloat16)).dtype)
    """)
    env = {**os.environ, native.ISA_ENV: "avx2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    first, summary, dtype = done.stdout.strip().splitlines()[-3:]
    assert first == "avx2|avx2|avx2 (forced by $SOFTMAX_BENCH_NATIVE_ISA)"
    assert "avx2 path" in summary and dtype == "torch.bfloat16"
    bad = {**os.environ, native.ISA_ENV: "sse9", native.CACHE_ENV: str(tmp_path)}
    code = ("import torch, softmax_impls; "
            "print(softmax_impls.get('native').skip_reason(torch.device('cpu'), torch.float32))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=bad, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SOFTMAX_BENCH_NATIVE_ISA='sse9' is not an ISA path" in done.stdout


def test_isa_paths_follow_the_cpu_flags() -> None:
    assert native.supported_isas({"avx2", "fma", "f16c"}) == ["avx2"]
    assert native.supported_isas({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}) == \
        ["avx512", "avx2"]
    assert native.supported_isas({"avx512f", "avx2", "fma"}) == []  # no F16C, no AVX-512 BW/VL/DQ
    with pytest.raises(ValueError, match="unknown ISA"):
        native.select_isa("neon")


# -- the streaming copy (the throughput harness's CPU roofline) ---------------------------------------------

@pytest.mark.parametrize("nbytes", [4 * 1000, (8 << 20) + 4 * 13, 3 * (8 << 20) + 4 * 7],
                         ids=["in-cache-memcpy", "streamed", "streamed-3x"])
@pytest.mark.parametrize("offset", [0, 3], ids=["aligned", "misaligned"])
def test_stream_copy_copies_every_byte(threads: int, nbytes: int, offset: int) -> None:
    n = nbytes // 4
    g = torch.Generator().manual_seed(nbytes + offset)
    src_buf = torch.randn(n + offset, generator=g)
    dst_buf = torch.full((n + offset + 1,), float("nan"))
    src, dst = src_buf[offset:], dst_buf[offset:offset + n]  # unaligned starts for the streamed head/tail
    native.stream_copy(dst, src)
    assert torch.equal(dst, src)
    assert dst_buf[offset + n].isnan() and (offset == 0 or dst_buf[:offset].isnan().all())  # nothing past it


def test_stream_copy_refuses_buffers_it_cannot_copy() -> None:
    with pytest.raises(ValueError, match="bytes into"):
        native.stream_copy(torch.empty(10), torch.empty(11))
    with pytest.raises(ValueError, match="contiguous"):
        native.stream_copy(torch.empty(10, 2).t(), torch.empty(2, 10))


# -- streamed outputs whose rows start off a cache line ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_streamed_rows_off_the_cache_lines(dtype: torch.dtype, isa: str) -> None:
    # outputs from 16 MiB up are streamed; with an odd row length each row of the output starts at another
    # offset in its cache line, so every row kernel stores a short head normally and streams the rest (the
    # softmax pipeline runs its scaling stage ahead by that head): heads, block ends and tails must all hold
    m, n = 167, 50257
    x = _logits((m, n), seed=5, scale=3.0).to(dtype)
    x[1, 5] = -1e4  # in the head of row 1: the exp underflows, and the exact redo must cover the head too
    x[2] -= 100.0
    assert x.numel() * x.element_size() >= 16 << 20  # streamed (STREAM_MIN_BYTES)
    ud, sub = _half(dtype)  # one rounding to the dtype: float32's too (its p of x[1, 5] is 0, exactly)
    t = torch.randint(0, n, (m,), generator=torch.Generator().manual_seed(6))
    w = (torch.rand(m, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5).to(dtype)
    dy = torch.randn((m, n), generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    assert_ops_match_float64(x, t, w, dy, ud, sub, dx_extra_u=T)  # float32's computation, as the narrow tests


def test_a_second_differentiation_raises_instead_of_returning_a_wrong_gradient() -> None:
    # the backward has a short path without grad mode; under create_graph it must still refuse to be
    # differentiated again (the kernels' backward is not itself differentiable)
    x = _logits((4, 10), seed=3).double().requires_grad_()
    target = torch.tensor([0, 3, 9, 5])
    for out in (native.softmax(x, 1) ** 2, native.log_softmax(x, 1) ** 2, native.cross_entropy(x, target)):
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        torch.testing.assert_close(gx.detach(), torch.autograd.grad(out.sum(), x, retain_graph=True)[0])
        with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):
            gx.sum().backward()
