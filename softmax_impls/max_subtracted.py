"""Softmax with the row max subtracted before exp; the loss is still -log(softmax).

Shifting by the max makes every exponent <= 0, so exp never overflows and the largest term is exactly 1
(the sum is >= 1, never 0). The loss is still computed from the rounded probability, so a target far
below the max gives p = 0 and -log p = +inf, and a confidently correct sample gives p = 1 and loss 0.
"""

import torch

from softmax_impls import Variant
from softmax_impls.contract import ALL_DTYPES, Contract


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # The shift cancels out of the result, so no gradient may flow through it: through amax, the rounded
    # (1 - sum p) lands on the max entry as an absolute error of a few u (796 u of its p at 32768 columns).
    shifted = x - x.amax(dim, keepdim=True).detach()
    x_exp = torch.exp(shifted)
    return x_exp / x_exp.sum(dim, keepdim=True)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = softmax(logits, dim=1)
    return -torch.log(p.gather(1, target.unsqueeze(1)).squeeze(1))


variant = Variant(
    name="max_subtracted",
    summary="exp(x - max) / sum exp(x - max); loss still -log(p[target])",
    softmax=softmax,
    cross_entropy=cross_entropy,
    contract=Contract(
        expected_failures={
            "far_target": ALL_DTYPES,  # p_target underflows to 0: -log 0 = inf
            "confident_correct": ALL_DTYPES,  # p_target rounds to 1: loss 0
            "wide_rows": ("float16",),  # the float16 sum of 131072 terms e^0 = 1 overflows to inf
            # float16, measured: the autograd gradient of the unfused -log(e_t / s) goes through 1/p_t and
            # e_t / s^2; on rows of 16384, s^2 passes 65504 and p_t goes subnormal: ce_grad errs by ~1000 u
            # ties_large (16384 tied maxima, s = 16384) joined when the shift was detached: the gradient through
            # amax had spread the rounding residual evenly over the tied maxima and hidden the same breakdown
            **{fam: ("float16",) for fam in ("translation", "underflow_shift", "mask_partial", "mask_prefix",
                                             "mask_full", "mask_fill", "posinf_entries", "nan_entries",
                                             "ties_large")},
        },
        notes="never overflows; the unfused -log(p) loses far-target and confident-correct losses",
    ),
)
