"""QuACK (quack-kernels): Tri Dao's CuTe-DSL softmax and cross-entropy kernels, as a variant. CUDA only.

quack.softmax (softmax_fwd / softmax_bwd, an autograd.Function) and quack.cross_entropy(reduction="none")
(one pass for the loss and the row's log-sum-exp, one for the gradient from it). The kernels are compiled by
the CUTLASS DSL per (dtype, row length) on first call. They target Hopper and Blackwell (sm90+); on other GPUs
and on CPU the variant is `skipped` with the reason. Installed by the ``peers-cuda`` extra.

What the wrapper adds: softmax along another dim is moved last first (QuACK's kernels take [M, N] and reduce
N). QuACK returns the per-sample loss in float32 whatever the logits' dtype; it is handed back as it is.
No log_softmax: QuACK has none.

dtypes: float32, float16, bfloat16 (QuACK asserts these; no float64).

    >>> import softmax_impls; v = softmax_impls.get("quack")
    >>> v.softmax(torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16))
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from softmax_impls import Variant, along_rows
from softmax_impls.contract import Contract
from softmax_impls.peers import Library

Tensor = torch.Tensor
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CAPABILITY = (9, 0)


def _load() -> SimpleNamespace:
    import quack
    from quack.cross_entropy import cross_entropy as ce
    from quack.softmax import softmax as sm

    return SimpleNamespace(softmax=sm, ce=ce, version=getattr(quack, "__version__", "?"))


LIB = Library("quack-kernels", _load, install="pip install -e '.[peers-cuda]'")


def unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "quack-kernels runs on CUDA GPUs only (sm90+)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return f"quack-kernels targets sm90+ (Hopper, Blackwell); this GPU is sm{cap[0]}{cap[1]}"
    return LIB.reason()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    fn = LIB.get().softmax
    return along_rows(lambda rows: fn(rows.contiguous()), x, dim)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    fn = LIB.get().ce
    return fn(logits.contiguous(), target.to(torch.int64), reduction="none")


variant = Variant(
    name="quack",
    summary="QuACK's CuTe-DSL softmax and cross-entropy (reduction='none'); CUDA sm90+ only",
    softmax=softmax,
    cross_entropy=cross_entropy,
    devices=("cuda",),
    dtypes=DTYPES,
    unavailable=unavailable,
    contract=Contract(),
)
