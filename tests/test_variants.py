"""Every registered variant against float64 references on ordinary inputs: forward and gradients.

Parametrized over ``softmax_impls.names()``, so a variant added later (or installed from another package)
is tested here without editing this file; a variant that cannot run on a (device, dtype) says why through
``skip_reason`` and is skipped with that reason.

Tolerance: the variant's own ``contract.ordinary_tolerance_ulps`` T (default 64) in units of the dtype's
unit roundoff u, so float64 is held to ~1e-14, float32 to ~4e-6, float16 to ~3e-2, bfloat16 to ~0.25
(relative), measured as bench/studies/stability/ measures it:

* probabilities  |p_hat - p| <= T u max(p, tiny) (1 + |ln p|)
* log-probabilities, losses  |y_hat - y| <= T u max(|y|, 1): relative, but absolute below 1, because
  x - max - log(sum) is a difference of O(1) terms and carries their rounding even when it is near 0
  (a dominant class: loss ~1e-3). How small losses fare is the stability study's confident_correct family.
* gradients of sum_i w_i loss_i  |g_hat - g| <= T u |w| (max(p, tiny) (1 + |ln p|) + onehot + at_max),
  g = w (p - onehot): absolute at the target, where p_t - 1 cancels, and at the row's max, where the
  max shift's gradient deposits the rounding of 1 - sum(p) (onehot and at_max are 1 there, 0 elsewhere)

The reference is computed in float64 from the inputs *after* rounding to the dtype, so only the variant's
own arithmetic is measured. Ordinary inputs are N(0, 1) logits: rows of up to 20011 classes keep the naive
softmax's float16 sum (n e^(1/2)) below float16's 65504, so every variant is expected to pass them.
"""

from __future__ import annotations

import pytest
import torch

import softmax_impls
from bench.measure.host import dtype_name, dtype_skip_reason

NAMES = softmax_impls.names()
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11,
                 torch.bfloat16: 2.0**-8}
# Irregular on purpose: not powers of two, a single class, a single row, a row past 16384.
SHAPES = [(1823, 781), (7, 10), (1, 1000), (5, 1), (3, 20011)]
GRAD_SHAPES = [(1823, 781), (7, 10), (5, 1), (2, 20011)]


def _variant(name: str, device: torch.device, dtype: torch.dtype) -> softmax_impls.Variant:
    variant = softmax_impls.get(name)
    reason = variant.skip_reason(device, dtype) or dtype_skip_reason(device, dtype)
    if reason:
        pytest.skip(reason)
    return variant


def _inputs(shape: tuple[int, int], dtype: torch.dtype, device: torch.device, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 7919 + shape[0] * 31 + shape[1])
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, shape[1], (shape[0],), generator=gen)
    return x.to(device), target.to(device)


def _limits(dtype: torch.dtype, variant: softmax_impls.Variant) -> tuple[float, float]:
    return variant.contract.ordinary_tolerance_ulps * UNIT_ROUNDOFF[dtype], torch.finfo(dtype).tiny


def _assert_within(what: str, got: torch.Tensor, want: torch.Tensor, allowed: torch.Tensor) -> None:
    got = got.detach().double().cpu()
    assert torch.isfinite(got).all(), f"{what}: {int((~torch.isfinite(got)).sum())} non-finite values"
    excess = (got - want).abs() / allowed
    worst = int(excess.argmax())
    assert float(excess.max()) <= 1.0, (f"{what}: error {float((got - want).abs().flatten()[worst]):.3g} at "
                                        f"flat index {worst} (reference {float(want.flatten()[worst]):.6g}) is "
                                        f"{float(excess.max()):.3g}x the tolerance")


def _prob_scale(p: torch.Tensor, tiny: float) -> torch.Tensor:
    return p.clamp_min(tiny) * (1.0 + p.clamp_min(1e-300).log().abs())


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_float64(name: str, dtype: torch.dtype, device: torch.device) -> None:
    variant = _variant(name, device, dtype)
    tol, tiny = _limits(dtype, variant)
    for shape in SHAPES:
        x, target = _inputs(shape, dtype, device)
        x64 = x.double().cpu()
        p_ref, logp_ref = torch.softmax(x64, -1), torch.log_softmax(x64, -1)

        p = variant.softmax(x)
        assert p.dtype == dtype and p.shape == x.shape and p.device == x.device
        _assert_within(f"{name} softmax {shape} {dtype_name(dtype)}", p, p_ref, tol * _prob_scale(p_ref, tiny))

        loss = variant.cross_entropy(x, target)
        assert loss.shape == (shape[0],) and loss.is_floating_point()
        loss_ref = -logp_ref.gather(1, target.cpu().unsqueeze(1)).squeeze(1)
        _assert_within(f"{name} cross_entropy {shape} {dtype_name(dtype)}", loss, loss_ref,
                       tol * loss_ref.abs().clamp_min(1.0))

        if variant.log_softmax is not None:
            logp = variant.log_softmax(x)
            assert logp.dtype == dtype and logp.shape == x.shape
            _assert_within(f"{name} log_softmax {shape} {dtype_name(dtype)}", logp, logp_ref,
                           tol * logp_ref.abs().clamp_min(1.0))


@pytest.mark.parametrize("name", NAMES)
def test_softmax_along_another_dim(name: str, device: torch.device) -> None:
    variant = _variant(name, device, torch.float32)
    tol, tiny = _limits(torch.float32, variant)
    x, _ = _inputs((7, 10), torch.float32, device, seed=1)
    for dim in (0, 1, -1):
        ref = torch.softmax(x.double().cpu(), dim)
        got = variant.softmax(x, dim=dim)
        assert got.shape == x.shape
        _assert_within(f"{name} softmax dim={dim}", got, ref, tol * _prob_scale(ref, tiny))


# Breakdowns on ordinary inputs that the study documents (strict: a fix shows up as XPASS, i.e. a failure,
# so this table must be updated with it). The unfused -log(p[target]) differentiates through 1/p_t with p_t
# rounded to float16, near or below its smallest normal 6.1e-5: the rounding of p_t does not cancel in the
# chain rule, and the gradient of ordinary N(0, 1) logits comes out 6x the tolerance off (33% on a 781-class
# row, 90x on a 20011-class one). The fused formulations (logsumexp, torch) stay within 1.05x.
KNOWN_GRADIENT_BREAKDOWNS = {
    ("naive", torch.float16): "unfused -log(p) gradient in float16: 1/p_t of a rounded, near-subnormal p_t",
}
# (max_subtracted float16 left the table when its shift was detached: the error had ridden on the gradient
# through amax, which spread the rounded 1 - sum(p) onto the max entry.)


def _gradient_cases() -> list:
    return [pytest.param(name, dtype, id=f"{name}-{dtype_name(dtype)}") for name in NAMES for dtype in DTYPES]


@pytest.mark.parametrize("name, dtype", _gradient_cases())
def test_cross_entropy_gradient_is_softmax_minus_onehot(name: str, dtype: torch.dtype, device: torch.device,
                                                        request: pytest.FixtureRequest) -> None:
    """d/dx of sum_i w_i CE(x_i, t_i) = w_i (softmax(x_i) - onehot(t_i)), through the variant's autograd."""
    reason = KNOWN_GRADIENT_BREAKDOWNS.get((name, dtype))
    if reason:
        # measured on the CPU (strict there); on a GPU the float16 rounding may differ, so only expected
        request.applymarker(pytest.mark.xfail(reason=reason, strict=device.type == "cpu"))
    variant = _variant(name, device, dtype)
    tol, tiny = _limits(dtype, variant)
    for shape in GRAD_SHAPES:
        x, target = _inputs(shape, dtype, device, seed=2)
        x.requires_grad_(True)
        gen = torch.Generator().manual_seed(shape[0])
        # Uneven upstream weights: a variant that ignored grad_output (assumed a plain sum) would fail.
        w = (torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.5).to(dtype)
        variant.cross_entropy(x, target).backward(w.to(device))
        assert x.grad is not None and x.grad.dtype == dtype and x.grad.shape == x.shape

        x64, w64 = x.detach().double().cpu(), w.double().unsqueeze(1)
        p = torch.softmax(x64, -1)
        onehot = torch.nn.functional.one_hot(target.cpu(), shape[1]).double()
        at_max = torch.nn.functional.one_hot(x64.argmax(1), shape[1]).double()
        ref = w64 * (p - onehot)
        _assert_within(f"{name} d cross_entropy {shape} {dtype_name(dtype)}", x.grad, ref,
                       tol * w64 * (_prob_scale(p, tiny) + onehot + at_max))
