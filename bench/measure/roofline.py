"""The roofline: the copies of one input-sized buffer whose best is the bandwidth a kernel is measured
against.

CUDA: ``dst.copy_(src)``. CPU: ``dst.copy_(src)`` and a streaming copy (non-temporal stores, built with the
`native` kernels). PyTorch's CPU ``copy_`` reads each destination line before writing it
(read-for-ownership), so it moves more bytes than it is credited with and a kernel with streaming stores can
beat it: a roofline must be the best copy the machine can do. Where the native kernels cannot be built,
``copy_`` alone, and the note says why. :func:`copy_kinds` names the copies for run.json, so a report knows
which roofline a run used without reading any message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bench.measure.host import DTYPES

Copy = tuple[str, Callable[[], object]]


def streaming_copy() -> Callable[[torch.Tensor, torch.Tensor], None] | str:
    """The CPU streaming copy (dst, src) of the native kernels, or the reason it cannot run here."""
    from softmax_impls import native  # the kernels' build lives with the variant that uses them

    reason = native.unavailable(torch.device("cpu"))
    return reason if reason else native.stream_copy


def copy_kinds(device: torch.device) -> list[str]:
    """The names of the copies whose best is `device`'s roofline (recorded in run.json)."""
    if device.type == "cpu" and not isinstance(streaming_copy(), str):
        return ["copy_", "streaming copy"]
    return ["copy_"]


def copies(device: torch.device, rows: int, cols: int, dtype: str) -> tuple[list[Copy], int, str]:
    """The copies whose best is the roofline, as (name, closure), the bytes each moves, and a note."""
    src = torch.randn(rows, cols, device=device).to(DTYPES[dtype])
    dst = torch.empty_like(src)
    calls: list[Copy] = [("copy_", lambda: dst.copy_(src))]
    note = ""
    if device.type == "cpu":
        stream = streaming_copy()
        if isinstance(stream, str):
            note = f"copy_ only: {stream}"
        else:
            calls.append(("streaming copy", lambda: stream(dst, src)))
    return calls, 2 * src.numel() * src.element_size(), note


def best_copy(names: Sequence[str], gbps: Sequence[float], note: str, how: str = "") -> tuple[float, str]:
    """(the best copy's GB/s, the message naming every copy) from the copies' bandwidths."""
    if len(names) == 1:
        return gbps[0], note
    figures = " and ".join(f"{name} {g:.3g}" for name, g in zip(names, gbps, strict=True))
    return max(gbps), f"best of {figures} GB/s{how}"
