"""The chapter's softmax, exactly: exp, row sum, divide; cross-entropy = -log of the gathered probability.

"Mathematically correct, but the implementation is too sloppy": exp overflows to inf once a logit passes
the dtype's exp limit (float32 ~88.72), and underflows to 0 below ~-103.97, after which the division gives
NaN and -log gives +inf. The study keeps it as the baseline that shows why.
"""

import torch

from softmax_impls import Variant
from softmax_impls.contract import ALL_DTYPES, Contract


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x_exp = torch.exp(x)
    partition = x_exp.sum(dim, keepdim=True)
    return x_exp / partition  # broadcasting, as in the chapter


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    y_hat = softmax(logits, dim=1)
    return -torch.log(y_hat[range(len(y_hat)), target])  # the chapter's integer-array indexing


variant = Variant(
    name="naive",
    summary="the chapter's softmax: exp(x) / sum exp(x); loss -log(p[target])",
    softmax=softmax,
    cross_entropy=cross_entropy,
    contract=Contract(
        expected_failures={
            "translation": ALL_DTYPES,
            "underflow_shift": ALL_DTYPES,
            "far_target": ALL_DTYPES,
            "confident_correct": ALL_DTYPES,
            "ties_large": ALL_DTYPES,
            "ce_1e8": ("float32",),
        },
        notes="no max subtraction: overflows past the dtype's exp limit, underflows below it",
    ),
)
