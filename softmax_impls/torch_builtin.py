"""PyTorch's own kernels: torch.softmax, torch.log_softmax and F.cross_entropy(reduction='none').

The reference point for speed: every throughput row reports its speedup against this variant.
"""

import torch
import torch.nn.functional as F

from softmax_impls import Variant
from softmax_impls.contract import ALL_DTYPES, Contract


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, dim)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


variant = Variant(
    name="torch",
    summary="torch.softmax / F.cross_entropy(reduction='none'), the builtin",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    contract=Contract(
        expected_failures={"confident_correct": ALL_DTYPES},
        notes="fused log-softmax; tiny losses round to 0",
    ),
)
