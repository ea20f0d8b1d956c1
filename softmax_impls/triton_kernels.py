"""Hand-written Triton kernels: fused softmax / log-softmax and cross-entropy, forward and backward (CUDA).

One program per row. A row of up to MAX_FUSED_BLOCK elements is loaded once into registers as one block
(max, exp, sum and store without touching memory again: the Triton fused-softmax tutorial's kernel); 32768
float32 elements over 32 warps compile to about 60 registers a thread without spills (ptxas, sm_90a). A
longer row is walked in LOOP_BLOCK-wide blocks twice: first the online normalizer (running max m and sum
d, Milakov & Gimelshein 2018), then the output pass. That second read does NOT hit L2 on a big GPU: an H100
holds about 400 rows in flight (8 warps a program), 200-400 MB at 131K-262K columns against a 50 MB L2, so
rows longer than MAX_FUSED_BLOCK cost three DRAM passes (read, read, write) instead of two: at most about
2/3 of the copy bandwidth. Reaching the copy there needs the row on chip across several SMs (thread-block
clusters with distributed shared memory, as quack does), which Triton does not express; the GPU target says
so (bench/presets.py).

Bytes moved per row of n elements of s bytes (what the throughput report divides by):
  softmax forward:      read n*s, write n*s                  -> 2*M*N*s in all
  softmax backward:     read y and dy (2*n*s), write dx      -> 3*M*N*s
  cross-entropy fwd:    read n*s + 8 (target), write 4 (loss) + 2*4 (shift, log-sum saved for backward)
  cross-entropy bwd:    read n*s (logits) + 8 + 3*4, write n*s (grad); softmax is recomputed, never stored
Arithmetic is in float32 (float64 for float64 inputs); half inputs are converted on load, outputs on store.

Without CUDA the kernels still run under Triton's interpreter when TRITON_INTERPRET=1 is set before this
module is imported (it decides how @triton.jit compiles): slow, for correctness tests on tiny CPU tensors.
Otherwise the variant reports itself unavailable and the studies record it as `skipped`.

    TRITON_INTERPRET=1 .venv/bin/python -c \
        "import torch, softmax_impls; print(softmax_impls.get('triton').softmax(torch.randn(3, 5)))"
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from softmax_impls import Variant, along_rows
from softmax_impls.contract import Contract

try:  # optional: the variant is `skipped`, never a crash, where triton is missing
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is in the venv here
    HAS_TRITON = False

# Read once, like triton.jit does when it decorates the kernels below.
INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"

# Longest row held in registers as one block; 32K float32 = 128 KiB per row spread over 32 warps.
MAX_FUSED_BLOCK = 32768
# Block width of the looped kernels for longer rows.
LOOP_BLOCK = 4096

if HAS_TRITON:

    @triton.jit
    def _neg_inf_to_zero(m):
        # A fully masked row (max -inf) is shifted by 0, never -inf - -inf = nan; a +inf or nan max is kept
        # so that row comes out nan everywhere, as the reference says.
        return tl.where(m == float("-inf"), 0.0, m)

    @triton.jit
    def _row_stats(x_row, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
        """(shift, d) of one row read block by block: the online normalizer."""
        cols = tl.arange(0, BLOCK)
        m = tl.full([], float("-inf"), ACC)
        d = tl.full([], 0.0, ACC)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(ACC)
            m_new = tl.maximum(m, tl.max(x, 0))
            shift = _neg_inf_to_zero(m_new)
            d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), 0)
            m = m_new
        return _neg_inf_to_zero(m), d

    @triton.jit
    def _softmax_fwd_kernel(x_ptr, y_ptr, x_stride, y_stride, n_cols,
                            BLOCK: tl.constexpr, SINGLE: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        y_row = y_ptr + row * y_stride
        cols = tl.arange(0, BLOCK)
        if SINGLE:  # the whole row in registers: one read, one write
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(ACC)
            shift = _neg_inf_to_zero(tl.max(x, 0))
            e = tl.exp(x - shift)
            d = tl.sum(e, 0)
            if LOG:
                y = (x - shift) - tl.log(d)
            else:
                y = e / d
            tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        else:  # pass 1: online normalizer; pass 2: write
            shift, d = _row_stats(x_row, n_cols, BLOCK, ACC)
            log_d = tl.log(d)
            for start in range(0, n_cols, BLOCK):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(ACC)
                if LOG:
                    y = (x - shift) - log_d
                else:
                    y = tl.exp(x - shift) / d
                tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _softmax_bwd_kernel(y_ptr, dy_ptr, dx_ptr, y_stride, dy_stride, dx_stride, n_cols,
                            BLOCK: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr):
        # softmax:     dx = y * (dy - sum(dy * y))
        # log-softmax: dx = dy - exp(y) * sum(dy)
        row = tl.program_id(0).to(tl.int64)
        y_row = y_ptr + row * y_stride
        dy_row = dy_ptr + row * dy_stride
        dx_row = dx_ptr + row * dx_stride
        cols = tl.arange(0, BLOCK)
        acc = tl.full([], 0.0, ACC)
        for start in range(0, n_cols, BLOCK):  # one iteration when the row fits one block
            mask = start + cols < n_cols
            dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                acc += tl.sum(dy, 0)
            else:
                y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(ACC)
                acc += tl.sum(dy * y, 0)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(ACC)
            y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                dx = dy - tl.exp(y) * acc
            else:
                dx = y * (dy - acc)
            tl.store(dx_row + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _ce_fwd_kernel(x_ptr, t_ptr, loss_ptr, shift_ptr, logsum_ptr, x_stride, n_cols,
                       BLOCK: tl.constexpr, SINGLE: tl.constexpr, ACC: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        if SINGLE:
            cols = tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < n_cols, other=float("-inf")).to(ACC)
            shift = _neg_inf_to_zero(tl.max(x, 0))
            d = tl.sum(tl.exp(x - shift), 0)
        else:
            shift, d = _row_stats(x_row, n_cols, BLOCK, ACC)
        target = tl.load(t_ptr + row)
        x_t = tl.load(x_row + target).to(ACC)
        log_d = tl.log(d)
        # (shift - x[t]) + log d, not lse - x[t]: a small loss behind a large max keeps its digits.
        tl.store(loss_ptr + row, (shift - x_t) + log_d)
        tl.store(shift_ptr + row, shift)
        tl.store(logsum_ptr + row, log_d)

    @triton.jit
    def _ce_bwd_kernel(x_ptr, t_ptr, shift_ptr, logsum_ptr, g_ptr, dx_ptr, x_stride, dx_stride, n_cols,
                       BLOCK: tl.constexpr, ACC: tl.constexpr):
        # dx = (softmax(x) - onehot(t)) * g, softmax recomputed from the saved shift and log-sum.
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        dx_row = dx_ptr + row * dx_stride
        shift = tl.load(shift_ptr + row)
        log_d = tl.load(logsum_ptr + row)
        g = tl.load(g_ptr + row).to(ACC)
        target = tl.load(t_ptr + row)
        cols = tl.arange(0, BLOCK)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(ACC)
            p = tl.exp((x - shift) - log_d)
            p = tl.where(start + cols == target, p - 1.0, p)
            tl.store(dx_row + start + cols, (p * g).to(dx_ptr.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype):  # -> tl.dtype
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(n_cols: int) -> tuple[int, bool, int]:
    """(BLOCK, SINGLE, num_warps) for a row of n_cols elements."""
    fused = triton.next_power_of_2(max(1, n_cols))
    if fused <= MAX_FUSED_BLOCK:
        return fused, True, 4 if fused <= 2048 else (8 if fused <= 8192 else (16 if fused <= 16384 else 32))
    return LOOP_BLOCK, False, 8


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, log: bool) -> Tensor:  # x: contiguous [R, C]
        rows, cols = x.shape
        y = torch.empty_like(x)
        block, single, warps = _block(cols)
        if rows and cols:
            _softmax_fwd_kernel[(rows,)](x, y, x.stride(0), y.stride(0), cols, BLOCK=block, SINGLE=single,
                                         LOG=log, ACC=_acc(x.dtype), num_warps=warps)
        ctx.save_for_backward(y)
        ctx.log = log
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        dy = dy.contiguous()
        rows, cols = y.shape
        dx = torch.empty_like(y)
        block, single, warps = _block(cols)
        if rows and cols:
            _softmax_bwd_kernel[(rows,)](y, dy, dx, y.stride(0), dy.stride(0), dx.stride(0), cols, BLOCK=block,
                                         LOG=ctx.log, ACC=_acc(y.dtype), num_warps=warps)
        return dx, None


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        logits, target = logits.contiguous(), target.contiguous()
        rows, cols = logits.shape
        acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        loss = torch.empty(rows, dtype=acc_dtype, device=logits.device)
        shift, logsum = torch.empty_like(loss), torch.empty_like(loss)
        block, single, warps = _block(cols)
        if rows:
            _ce_fwd_kernel[(rows,)](logits, target, loss, shift, logsum, logits.stride(0), cols, BLOCK=block,
                                    SINGLE=single, ACC=_acc(logits.dtype), num_warps=warps)
        ctx.save_for_backward(logits, target, shift, logsum)
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        logits, target, shift, logsum = ctx.saved_tensors
        rows, cols = logits.shape
        dx = torch.empty_like(logits)
        block, _, warps = _block(cols)
        if rows:
            _ce_bwd_kernel[(rows,)](logits, target, shift, logsum, g.contiguous(), dx, logits.stride(0),
                                    dx.stride(0), cols, BLOCK=block, ACC=_acc(logits.dtype), num_warps=warps)
        return dx, None


def _apply_rows(x: Tensor, dim: int, log: bool) -> Tensor:
    return along_rows(lambda rows: _Softmax.apply(rows.contiguous(), log), x, dim)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _apply_rows(x, dim, log=False)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _apply_rows(x, dim, log=True)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return _CrossEntropy.apply(logits, target)


def unavailable(device: torch.device) -> str | None:
    """None when the kernels can run on `device`, else why not."""
    if not HAS_TRITON:
        return "the triton package is not installed"
    kind = torch.device(device).type
    if kind == "cuda":
        if INTERPRET:
            return "TRITON_INTERPRET=1 was set when softmax_impls.triton_kernels was imported: CPU tensors only"
        return None if torch.cuda.is_available() else "no CUDA device"
    if kind == "cpu" and INTERPRET:
        return None
    return (f"hand-written Triton kernels need CUDA; on {kind} they run only under Triton's (slow) interpreter, "
            "with TRITON_INTERPRET=1 set before import, for correctness tests")


variant = Variant(
    name="triton",
    summary="hand-written Triton fused softmax and cross-entropy, forward and backward (one row per program)",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    contract=Contract(
        # measured: -log(1 + tiny) rounds to 0 in float32/float64; half inputs are computed in float32, where
        # a loss that small for float16/bfloat16 survives, so those pass
        expected_failures={"confident_correct": ("float64", "float32")},
        notes="logsumexp's formula in registers, accumulating in float32; tiny losses round to 0",
    ),
    unavailable=unavailable,
)
