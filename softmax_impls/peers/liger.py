"""Liger-Kernel: its Triton softmax (LigerSoftmaxFunction) and cross-entropy (LigerCrossEntropyFunction,
reduction="none"), as a variant.

CUDA. On CPU only under Triton's interpreter, TRITON_INTERPRET=1 set before Liger is first imported (Triton
decides at decoration time): slow, for the stability study and small shapes. Otherwise `skipped` with the reason.

What the wrapper adds, and why:
* softmax along another dim: moved last first (Liger's kernel reduces the last dim only);
* cross_entropy: Liger computes the gradient during the forward pass and writes it *into the logits* (its
  memory-saving design: the logits of an LLM head are dead after the loss). A variant must not write into its
  input (the harness would see its inputs change, and a training step would reuse clobbered logits), so logits
  that require grad are cloned first: one extra read and write of the logits, only when a gradient is wanted.
  The gradient is what Liger's backward returns (the stored softmax - onehot, times the incoming grad).
* no log_softmax: Liger has none.

dtypes: float32, float16, bfloat16. Not float64: Liger's cross-entropy casts every block to float32
(``.cast(tl.float32)``), so float64 logits get a float32-accurate loss in a float64 tensor.

    TRITON_INTERPRET=1 .venv/bin/python -c \
        "import torch, softmax_impls; print(softmax_impls.get('liger').softmax(torch.randn(3, 5)))"
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from softmax_impls import Variant, along_rows
from softmax_impls.contract import Contract
from softmax_impls.peers import Library

Tensor = torch.Tensor
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_DTYPES_HERE = ("float32", "float16", "bfloat16")


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _load() -> SimpleNamespace:
    interpret = _interpret_env()  # what triton.jit saw when Liger's kernels were decorated just below
    import liger_kernel
    from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
    from liger_kernel.ops.softmax import LigerSoftmaxFunction

    version = getattr(liger_kernel, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("liger-kernel")
    return SimpleNamespace(softmax=LigerSoftmaxFunction, ce=LigerCrossEntropyFunction, interpret=interpret,
                           version=version)


LIB = Library("liger-kernel", _load)


def unavailable(device: torch.device) -> str | None:
    if device.type == "cpu" and not _interpret_env():
        return "Liger's Triton kernels need CUDA; on CPU they run only under TRITON_INTERPRET=1 (slow)"
    reason = LIB.reason()
    if reason is not None:
        return reason
    if device.type == "cpu" and not LIB.get().interpret:
        return "liger_kernel was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled ones"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    fn = LIB.get().softmax
    return along_rows(fn.apply, x, dim)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    fn = LIB.get().ce
    # Liger stores the gradient into the logits it is given when they require grad: give it a copy
    x = logits.clone() if logits.requires_grad else logits.contiguous()
    # (input, target, weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
    #  return_z_loss, return_token_accuracy, return_predicted_tokens) -> (loss, z_loss, accuracy, predicted)
    return fn.apply(x, target.to(torch.int64), None, -100, 0.0, 0.0, "none", None, False, False, False)[0]


variant = Variant(
    name="liger",
    summary="Liger-Kernel's Triton softmax and cross-entropy (reduction='none'); CUDA, or TRITON_INTERPRET=1",
    softmax=softmax,
    cross_entropy=cross_entropy,
    dtypes=DTYPES,
    unavailable=unavailable,
    contract=Contract(
        # measured by `TRITON_INTERPRET=1 softmax-bench check liger` (liger-kernel 0.8.5 under Triton's CPU
        # interpreter, float32 arithmetic as on a GPU but exact exp); reproducers in docs/peers.md
        expected_failures={
            # the loss is lse - x_t with lse = m + log(d) rounded at the row max's magnitude first: the loss
            # cancels once |max| >> loss (float32 at c ~ 1e4; bfloat16's u hides it until |max| ~ 1e9)
            "translation": ("float32",),
            "underflow_shift": ("float32",),
            "ties_large": ("float32", "bfloat16"),
            "mask_fill": ("float32", "bfloat16"),
            "ce_1e8": ("float32", "bfloat16"),  # cross_entropy([[1e8, 1e8]], [0]) = 0, not log 2
            # log(d) with d = 1 + tiny, no log1p: a confident correct prediction's loss rounds toward 0
            "confident_correct": ("float32",),
            # LigerSoftmaxFunction raises for rows longer than 65536 (calculate_settings), before it could
            # reach its own multi-block kernel
            "wide_rows": ALL_DTYPES_HERE,
        },
        notes="CE loss as lse - x_t cancels for large logits; softmax refuses rows past 65536; no log_softmax",
    ),
)
