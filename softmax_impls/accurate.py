"""Accurate log-sum-exp and cross-entropy, Blanchard, Higham & Higham (2021), "Accurately computing the
log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4).

    lse(x) = m + log1p(s),   m = max x = x[a],   s = sum_{i != a} exp(x_i - m)

The argmax term exp(0) = 1 is left out of the sum and added back exactly by log1p, so a row whose other
terms are tiny keeps them: for the confident-correct row (target above the rest by d) the loss is
log1p((n-1)e^-d), about (n-1)e^-d, where the fused log-softmax computes log(1 + tiny) = log(1) = 0.

The loss is assembled as (m - x[t]) + log1p(s): no cancellation whether t is the argmax (first term exactly
0) or not (both terms >= 0), and never lse - x[t] with lse rounded first, which loses the digits of a
small loss behind a large max. Softmax is the shifted division exp(x - m) / sum exp(x - m) the paper
recommends. Nothing overflows: every exponent is <= 0. The backward of the loss writes the target's
gradient as -(sum over i != t of p_i) rather than p_t - 1, which would round to 0 in the same rows.

    >>> import softmax_impls; v = softmax_impls.get("accurate")
    >>> v.cross_entropy(logits, target)   # per-sample loss, accurate down to the tiny ones
"""

from __future__ import annotations

import torch
from torch import Tensor

from softmax_impls import Variant, along_rows, shift_of
from softmax_impls.contract import Contract


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Every narrower dtype computes in float64: x_i - m is then exact for float32 inputs, where in float32 it
    # rounds with an error of u * |x_i - m| in the exponent (40u at d = 40), the term Blanchard et al.'s
    # bound carries. float64 inputs run in float64 and carry that term.
    return torch.float64


def _stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a 2-D tensor in the accumulation dtype: (m, e, s): m [R, 1] the row max, e [R, C] = exp(x - shift),
    s [R, 1] the sum of e over every column but the argmax.

    shift = m, except 0 for a fully masked row (m = -inf), which must not become -inf - -inf = nan; there
    e = s = 0 and m + log1p(s) = -inf as it should. A +inf or nan max makes that row's s nan, so every output
    of the row is nan, as the reference says.
    """
    m, a = x.max(1, keepdim=True)
    e = torch.exp(x - shift_of(m))
    s = e.scatter(1, a, 0.0).sum(1, keepdim=True)
    # A +inf max is left out of s with its argmax, so s alone would not see it: make the row nan explicitly.
    s = torch.where(m == float("inf"), torch.full_like(s, float("nan")), s)
    return m, e, s


def _softmax_rows(x: Tensor) -> Tensor:
    xf = x.to(_acc_dtype(x.dtype))
    _, e, _ = _stats(xf)
    return (e / e.sum(1, keepdim=True)).to(x.dtype)


def _log_softmax_rows(x: Tensor) -> Tensor:
    xf = x.to(_acc_dtype(x.dtype))
    m, _, s = _stats(xf)
    # (x - m) is exact for the entries near the max (Sterbenz), and log1p(s) is small and accurate.
    return ((xf - m) - torch.log1p(s)).to(x.dtype)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        acc = _acc_dtype(logits.dtype)
        xf = logits.to(acc)
        m, e, s = _stats(xf)
        t = target.unsqueeze(1)
        loss = ((m - xf.gather(1, t)) + torch.log1p(s)).squeeze(1)
        ctx.save_for_backward(e, t)
        ctx.out_dtype = logits.dtype
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        e, t = ctx.saved_tensors
        total = e.sum(1, keepdim=True)
        grad = e / total
        # p_t - 1 = -(sum over i != t of p_i): summed directly it keeps the tiny gradient of a confident row.
        rest = e.scatter(1, t, 0.0).sum(1, keepdim=True)
        grad.scatter_(1, t, -rest / total)
        return (grad * g.to(grad.dtype).unsqueeze(1)).to(ctx.out_dtype), None


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = _softmax_rows(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        acc = _acc_dtype(y.dtype)
        yf, gf = y.to(acc), g.to(acc)
        return (yf * (gf - (gf * yf).sum(1, keepdim=True))).to(y.dtype)


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = _log_softmax_rows(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        acc = _acc_dtype(out.dtype)
        gf = g.to(acc)
        return (gf - torch.exp(out.to(acc)) * gf.sum(1, keepdim=True)).to(out.dtype)


def logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """Row log-sum-exp m + log1p(s) in x's dtype (not differentiable; for reference and the tests)."""
    moved = x.movedim(dim, -1)
    m, _, s = _stats(moved.reshape(-1, moved.shape[-1]).to(_acc_dtype(x.dtype)))
    return (m + torch.log1p(s)).reshape(moved.shape[:-1]).to(x.dtype)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return along_rows(_Softmax.apply, x, dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return along_rows(_LogSoftmax.apply, x, dim)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return _CrossEntropy.apply(logits, target)


variant = Variant(
    name="accurate",
    summary="lse = max + log1p(sum_{i != argmax} exp(x_i - max)), Blanchard-Higham-Higham 2021; tiny losses kept",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    contract=Contract(
        notes="never overflows; keeps tiny confident-correct losses (log1p) and small losses behind a large max",
    ),
)
