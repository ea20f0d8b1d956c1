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
        # measured by `softmax-bench check naive`; each entry is where theory puts a breakdown
        expected_failures={
            "translation": ALL_DTYPES,  # exp(x) overflows past ln(max): inf / inf = nan
            "underflow_shift": ALL_DTYPES,  # exp(x) goes subnormal, then 0: 0 / 0 = nan
            "far_target": ALL_DTYPES,  # p_target underflows to 0: -log 0 = inf
            "confident_correct": ALL_DTYPES,  # p_target rounds to 1: loss 0
            "ties_large": ALL_DTYPES,  # exp(+-c) is inf or 0 although p = 1/n
            "wide_rows": ("float16",),  # the sum of 131072 ones passes float16's 65504
            "mask_fill": ALL_DTYPES,  # a row filled with -1e4: every exp is 0, 0 / 0 = nan instead of 1/n
            "posinf_entries": ALL_DTYPES,  # exp(inf) / inf: nan for the inf entry, 0 for the others
            # float16, measured: the autograd gradient of -log(e_t / s) goes through 1/p_t and e_t / s^2; on
            # rows of 1000-16384 s^2 passes 65504 and p_t goes subnormal, so ce_grad errs by hundreds of u
            **{fam: ("float16",) for fam in ("mask_partial", "mask_prefix", "mask_full", "nan_entries")},
            "ce_1e8": ("float64", "float32", "bfloat16"),  # exp(1e8) = inf in every dtype that holds 1e8
        },
        notes="no max subtraction: overflows past the dtype's exp limit, underflows below it",
    ),
)
