"""Fused log-softmax, x - max - log(sum exp(x - max)), and the NLL read straight from it.

The loss never passes through a rounded probability: -log_softmax(x)[t] = max + log(sum) - x[t], which
stays finite however far x[t] lies below the max. Softmax is exp(log_softmax).
"""

import torch

from softmax_impls import Variant, shift_of
from softmax_impls.contract import ALL_DTYPES, Contract


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # detached: the shift cancels out, and a gradient through amax would put the rounded (1 - sum p) on the
    # max entry (796 u of its probability at 32768 columns, caught by the throughput study's validation)
    row_max = shift_of(x.amax(dim, keepdim=True).detach())  # an all -inf row: the log of a zero sum
    shifted = x - row_max
    return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.exp(log_softmax(x, dim))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


variant = Variant(
    name="logsumexp",
    summary="fused log-softmax x - max - log sum exp(x - max); loss -log_softmax[target]",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    contract=Contract(
        expected_failures={
            "confident_correct": ALL_DTYPES,  # -log(1 + tiny) rounds to 0 without log1p
            "wide_rows": ("float16",),  # the float16 sum of 131072 ones is inf: log-probs -inf
        },
        notes="never overflows; tiny losses log1p((n-1)e^-d) round to 0; float16 sums overflow past 65504",
    ),
)
