"""The `native` kernels' narrow layout for rows of up to 2W columns (softmax_impls/native_kernels.c).

Rows of n <= 2W columns (W = 16 float lanes on the avx512 path, 8 on avx2) run W rows at a time, one row per
lane: one W x W transpose for n <= W, two for W < n <= 2W (columns 0 .. W-1 and the window n-W .. n-1). On
each ISA path this CPU can run, the row lengths around W and 2W of both paths (8 .. 10, 13, 16, 17, 24, 31, 32:
one half, two halves, or wide rows, depending on the path), with a ragged tail of rows (37 = 2 blocks of 16
+ 5, 69 = 4 blocks of 16 + 5 = 8 blocks of 8 + 5), in float32, bfloat16 and float16, every op against float64
(the tolerances of tests/test_native.py, whose helpers this file imports), then the special values: -inf
entries (in both column halves), a fully -inf row, +inf, nan, ties at the max, subnormal probabilities (the
exact exp's slow path), tiny and huge logits; the loss's out-of-range targets; and thread-count independence.

    .venv/bin/pytest -q tests/test_native_narrow.py
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_native import (  # noqa: F401 - isa is the fixture
    HALF,
    ISAS,
    T,
    _assert_within,
    _half,
    _logits,
    _prob_tol,
    assert_ops_match_float64,
    isa,
)

from softmax_impls import native

CPU = torch.device("cpu")
REASON = native.unavailable(CPU)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

COLS = [8, 9, 10, 13, 16, 17, 24, 31, 32]
ROWS = [37, 69]
DTYPES = [torch.float32, *HALF]


def _units(dtype: torch.dtype) -> tuple[float, float]:
    """(unit roundoff, half the smallest subnormal) of one rounding to dtype; nothing for float32."""
    return _half(dtype) if dtype in HALF else (0.0, 0.0)


def _lane_width(path: str) -> int:
    return 16 if path == "avx512" else 8


def test_the_cases_cover_both_layouts_on_every_path(isa: str) -> None:  # noqa: F811
    # one column half (n <= W), two halves (W < n <= 2W) and wide rows (n > 2W) all occur in COLS
    w = _lane_width(isa)
    assert any(n <= w for n in COLS) and any(w < n <= 2 * w for n in COLS)
    assert isa == "avx512" or any(n > 2 * w for n in COLS)
    assert 2 * w in COLS and w + 1 in COLS


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n", COLS)
def test_every_op_matches_float64(n: int, m: int, dtype: torch.dtype, isa: str) -> None:  # noqa: F811
    # the float64 reference on the same dtype-rounded inputs; the kernel may be off by its float32
    # computation (64 u of float32, scaled as the contract scales) plus one rounding to the dtype
    ud, sub = _units(dtype)
    x = _logits((m, n), seed=100 + n + m).to(dtype)
    t = torch.randint(0, n, (m,), generator=torch.Generator().manual_seed(n * m))
    t[:3] = torch.tensor([0, n - 1, min(16, n - 1)])  # the first and last columns, and one past the first half
    w = (torch.rand(m, generator=torch.Generator().manual_seed(m), dtype=torch.float64) + 0.5).to(dtype)
    dy = torch.randn((m, n), generator=torch.Generator().manual_seed(n + 7 * m), dtype=torch.float64).to(dtype)
    p = assert_ops_match_float64(x, t, w, dy, ud, sub, dx_extra_u=T)
    dyd = dy.double()

    # log-softmax backward from its own output: dx = dy - exp(y) sum dy; exp of the rounded y is off by
    # |y| ud relative, that is p |ln p| ud, times sum |dy|
    leaf = x.clone().requires_grad_()
    native.log_softmax(leaf, 1).backward(dy)
    total = dyd.sum(1, keepdim=True)
    want = dyd - p * total
    row = dyd.abs().sum(1, keepdim=True)
    tol = 4 * ((ud + T) * (p * (1 + p.clamp_min(1e-300).log().abs()) * row + want.abs()) + T * dyd.abs()) + sub
    _assert_within("log_softmax dx", leaf.grad, want, tol)


def _special_batch(m: int, n: int) -> tuple[torch.Tensor, dict[str, int]]:
    """Logits with one special row each, spread over the blocks of W rows and the ragged tail."""
    x = _logits((m, n), seed=200 + n, scale=2.0)
    rows = {"nan": 1, "+inf": 18, "masked": 5, "partly masked": 6, "masked high": 7, "ties": 20, "tiny": 21,
            "huge": 22, "spread": 23, "subnormal": m - 2, "tail nan": m - 1}
    x[rows["nan"], n - 1] = math.nan  # in the second column half where there is one
    x[rows["+inf"], n // 2] = math.inf
    x[rows["masked"]] = -math.inf
    x[rows["partly masked"], ::2] = -math.inf
    x[rows["masked high"], n // 2:] = -math.inf
    r = rows["ties"]
    x[r, [0, n // 2, n - 1]] = x[r].max() + 1.0  # three copies of the max, one of them in the last column
    x[rows["tiny"]] *= 1e-30
    x[rows["huge"]] += 3e4
    x[rows["spread"]] *= 1e3  # most probabilities underflow to 0
    # x - max between -87 and -104: subnormal float32 probabilities, the exact exp's slow path
    x[rows["subnormal"]] = -torch.linspace(0.0, 103.0, n)
    x[rows["tail nan"], 0] = math.nan
    return x, rows


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", COLS)
def test_special_values(n: int, dtype: torch.dtype, isa: str) -> None:  # noqa: F811
    m = 37
    x, rows = _special_batch(m, n)
    x = x.to(dtype)
    xd = x.double()
    poisoned = [rows["nan"], rows["+inf"], rows["masked"], rows["tail nan"]]
    ordinary = [r for r in range(m) if r not in poisoned]
    ud, sub = _units(dtype)

    y, ls = native.softmax(x, 1), native.log_softmax(x, 1)
    for name, out in (("softmax", y), ("log_softmax", ls)):
        assert torch.isnan(out[poisoned]).all(), f"{name}: nan, +inf and fully masked rows must come out nan"
        assert not torch.isnan(out[ordinary]).any(), f"{name}: nan leaked into other rows"
    p = torch.softmax(xd[ordinary], 1)
    _assert_within("softmax", y[ordinary], p, ud * p + _prob_tol(p) + sub)
    masked = torch.isneginf(xd)
    masked[poisoned] = False  # the -inf entries of the rows that are otherwise ordinary
    assert masked[:, n - 1].any() and masked[:, 0].any(), "masked entries in both column halves"
    assert (y[masked] == 0).all(), "masked entries must be exact zeros"
    assert torch.isneginf(ls[masked]).all(), "masked entries must be -inf in log_softmax"
    lref = torch.log_softmax(xd[ordinary], 1)
    finite = torch.isfinite(lref)
    got = ls[ordinary].double()
    excess = ((got - lref).abs() / ((ud + T) * lref.abs().clamp_min(1.0)))[finite]
    assert float(excess.max()) <= 1.0, f"log_softmax: error is {float(excess.max()):.3g}x the tolerance"
    r = rows["ties"]
    assert torch.equal(y[r, [0, n // 2, n - 1]], y[r, 0].expand(3)), "ties at the max must get equal shares"

    # cross-entropy: targets at a finite entry (the tied max for the ties row); nan exactly in the poisoned rows
    t = torch.full((m,), n - 1, dtype=torch.int64)
    t[rows["partly masked"]] = 1
    t[rows["masked high"]] = 0
    t[rows["subnormal"]] = n - 1  # p_t subnormal: the fused loss stays finite and exact
    leaf = x.clone().requires_grad_()
    loss = native.cross_entropy(leaf, t)
    g = torch.linspace(0.5, 1.5, m, dtype=torch.float64).to(dtype)
    loss.backward(g)
    assert torch.isnan(loss[poisoned]).all() and torch.isfinite(loss[ordinary]).all()
    assert torch.isnan(leaf.grad[poisoned]).all() and torch.isfinite(leaf.grad[ordinary]).all()
    assert (leaf.grad[masked] == 0).all(), "the gradient at masked entries must be exact zeros"
    ref = F.cross_entropy(xd[ordinary], t[ordinary], reduction="none")
    _assert_within("loss", loss[ordinary], ref, (ud + T) * ref.abs().clamp_min(1.0))
    onehot = F.one_hot(t[ordinary], n).double()
    gw = g.double()[ordinary, None]
    want = gw * (p - onehot)
    _assert_within("dlogits", leaf.grad[ordinary], want, ud * want.abs() + gw * (_prob_tol(p) + T * onehot) + sub)


@pytest.mark.parametrize("n", COLS)
def test_confident_rows_keep_tiny_losses_and_huge_shifts_cancel(n: int, isa: str) -> None:  # noqa: F811
    m = 37
    # the target 30 above the rest: loss = log1p((n - 1) e^-30) ~ 1e-12, which log(sum) would round to 0
    x = torch.zeros(m, n)
    x[:, n - 1] = 30.0
    t = torch.full((m,), n - 1, dtype=torch.int64)
    want = math.log1p((n - 1) * math.exp(-30.0))
    loss = native.cross_entropy(x, t).double()
    assert torch.allclose(loss, torch.full((m,), want, dtype=torch.float64), rtol=8 * 2.0**-24, atol=0)
    lp = native.log_softmax(x, 1)[:, n - 1].double()
    assert torch.allclose(lp, torch.full((m,), -want, dtype=torch.float64), rtol=8 * 2.0**-24, atol=0)
    # exp(x) over- or underflows at every entry; the shifted sums never do
    base = _logits((m, n), seed=300 + n, scale=1.0)
    ref = torch.softmax(base.double(), 1)
    for c in (1e4, -1e4, 3e4):
        _assert_within(f"softmax(x + {c:g})", native.softmax(base + c, 1), ref, _prob_tol(ref) * 200)
    # the target 200 below the max: p_t underflows, -log(p_t) would be inf; the fused loss stays finite
    far = base.clone()
    far[:, n - 1] = far.max(1).values - 200
    loss = native.cross_entropy(far, t)
    ref = F.cross_entropy(far.double(), t, reduction="none")
    _assert_within("far-target loss", loss, ref, T * ref.abs())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", COLS)
def test_out_of_range_targets_raise(n: int, dtype: torch.dtype, isa: str) -> None:  # noqa: F811
    for bad in (n, -1, n + 40):
        t = torch.randint(0, n, (69,), generator=torch.Generator().manual_seed(n))
        t[20] = bad  # one row inside a narrow block
        with pytest.raises(IndexError, match="outside"):
            native.cross_entropy(torch.randn(69, n).to(dtype), t)


@pytest.mark.parametrize("n", [10, 24, 32])
def test_results_do_not_depend_on_the_thread_count(n: int, isa: str) -> None:  # noqa: F811
    # 4096 rows: enough work for two threads; rows are split between threads in whole blocks of W
    x = _logits((4099, n), seed=400 + n)
    t = torch.randint(0, n, (4099,), generator=torch.Generator().manual_seed(n))
    before = torch.get_num_threads()
    outs = []
    try:
        for k in (1, 2):
            torch.set_num_threads(k)
            leaf = x.clone().requires_grad_()
            loss = native.cross_entropy(leaf, t)
            loss.sum().backward()
            outs.append([native.softmax(x, 1), native.log_softmax(x.bfloat16(), 1), loss, leaf.grad])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
