"""The throughput study's promised figures (THROUGHPUT_TARGETS), checked against stored rows.

They live in the store, not in the throughput study, because both sides read them: the study prints them
under its tables and the report lists them, and the report never imports a study.

A pure function of the rows, like every reading of the report: `softmax-bench throughput` prints the lines
under its tables and the report lists them under Throughput, so a merged CPU + GPU report checks both.

    >>> from bench.store.targets import target_lines
    >>> print("\\n".join(target_lines(run.read("throughput"))))
    met: CPU: narrow >= 10x torch on the chapter's shape: softmax_fwd 65536x10 float32 narrow <speedup>x, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench.fmt import ratio
from bench.store.rows import BASELINE, THROUGHPUT_OPS
from bench.store.wide import UNIT_POINT as POINT
from bench.store.wide import wide_throughput


@dataclass(frozen=True)
class ThroughputTarget:
    """A figure the throughput study promises, checked against stored rows and printed as met / NOT met.

    At every measured point of `ops` x `dtypes` on `device` whose shape is one of `shapes` (or, when `shapes`
    is empty, whose row length lies in [min_cols, max_cols]), `variant`'s `metric` (or, with variant None,
    the best variant's, torch excluded for a speedup) must reach `threshold`. The figures are issue 6's.
    """

    name: str
    device: str  # "cpu" or "cuda" (any cuda:N)
    ops: tuple[str, ...]
    dtypes: tuple[str, ...]
    metric: str  # "roofline_frac" or "speedup_vs_torch"
    threshold: float
    variant: str | None = None
    shapes: tuple[tuple[int, int], ...] = ()
    min_cols: int = 0
    max_cols: int = 2**62
    strictly: bool = False  # above the threshold, not at it ("faster than torch": a ratio above 1)


_TP_OPS = THROUGHPUT_OPS
MAX_FIGURES = 16  # a target over more points prints its misses (or its lowest figure), not every point
_TP_NARROW = (65536, 10)  # the chapter's 10 classes at a power-of-two batch (the throughput presets' narrow shape)
THROUGHPUT_TARGETS: tuple[ThroughputTarget, ...] = (
    ThroughputTarget("CPU: the best softmax at >= 90% of the copy bandwidth", "cpu", ("softmax_fwd",),
                     ("float32",), "roofline_frac", 0.90, shapes=((4096, 4096), (1024, 131072))),
    ThroughputTarget("CPU: narrow >= 10x torch on the chapter's shape", "cpu",
                     ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd"), ("float32",), "speedup_vs_torch",
                     10.0, variant="narrow", shapes=(_TP_NARROW,)),
    # issue 12: wherever torch is timed, some variant that passed the validation (a contract-passing result:
    # `wrong` rows never reach these figures) is at least as fast
    ThroughputTarget("CPU: at every point, the best variant at least as fast as torch", "cpu", _TP_OPS,
                     ("float32", "float64", "bfloat16", "float16"), "speedup_vs_torch", 1.0),
    # issue 12: the native kernels in every dtype; what bounds the missed ones is in bench/tools/roofline_probe.py
    # at 1024x4096 and the LLM vocabularies (the llm preset sizes its CPU rows to the memory, so by columns)
    ThroughputTarget("CPU: native bfloat16/float16 at >= 60% of the copy bandwidth, rows of 4K up", "cpu", _TP_OPS,
                     ("bfloat16", "float16"), "roofline_frac", 0.60, variant="native", min_cols=4096),
    ThroughputTarget("CPU: native bfloat16/float16 >= 3x torch, rows of 4K up", "cpu", _TP_OPS,
                     ("bfloat16", "float16"), "speedup_vs_torch", 3.0, variant="native", min_cols=4096),
    ThroughputTarget("CPU: float32 softmax fwd+bwd and cross-entropy at >= 70% of the copy bandwidth, rows of 4K up",
                     "cpu", ("softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd"), ("float32",), "roofline_frac", 0.70,
                     min_cols=4096),
    ThroughputTarget("CPU: native float32 softmax at >= 60% of the copy bandwidth on the chapter's narrow shape",
                     "cpu", ("softmax_fwd",), ("float32",), "roofline_frac", 0.60, variant="native",
                     shapes=(_TP_NARROW,)),
    ThroughputTarget("CPU: native float64 >= 1.5x torch on the chapter's and a 4096-wide shape", "cpu", _TP_OPS,
                     ("float64",), "speedup_vs_torch", 1.5, variant="native", shapes=((60000, 10), (4096, 4096))),
    # Up to 32K columns, where one Triton program holds a row in registers (one read, one write). Longer rows
    # cost a second DRAM read in every one-program-per-row kernel (an H100 holds ~400 rows in flight, far
    # more than its 50 MB L2): at most ~2/3 of the copy there, so the target stops where the design can meet it.
    ThroughputTarget("GPU: the best softmax at >= 90% of the copy bandwidth, rows of 4K to 32K", "cuda",
                     ("softmax_fwd",), ("float32", "bfloat16"), "roofline_frac", 0.90, min_cols=4096,
                     max_cols=32768),
    ThroughputTarget("GPU: the best softmax faster than torch from rows of 64K up", "cuda", ("softmax_fwd",),
                     ("float32", "bfloat16"), "speedup_vs_torch", 1.0, min_cols=65536, strictly=True),
)



def check(target: ThroughputTarget, wide: pd.DataFrame) -> str:
    """'met: ...', 'NOT met: ...' or 'not measured: ...' for one target, naming every point's figure."""
    if target.metric not in wide:
        return f"not measured: {target.name}"
    pts = wide[wide["device"].astype(str).str.startswith(target.device) & wide["op"].isin(target.ops)
               & wide["dtype"].isin(target.dtypes) & wide[target.metric].notna()]
    if target.shapes:
        keys = set(target.shapes)
        # a boolean Series, never a bare list: an empty list would select no *columns* (KeyError: 'variant')
        pts = pts[pd.Series([(int(r), int(c)) in keys for r, c in zip(pts["rows"], pts["cols"], strict=True)],
                            index=pts.index, dtype=bool)]
    else:
        pts = pts[(pts["cols"] >= target.min_cols) & (pts["cols"] <= target.max_cols)]
    if target.variant is not None:
        pts = pts[pts["variant"] == target.variant]
    elif target.metric == "speedup_vs_torch":
        pts = pts[pts["variant"] != BASELINE]  # torch against itself is 1.0 by definition
    if pts.empty:
        return f"not measured: {target.name}"
    best = pts.sort_values(target.metric, ascending=False).groupby(POINT, sort=False).head(1)
    order = {op: i for i, op in enumerate(THROUGHPUT_OPS)}
    best = best.assign(_op=best["op"].map(order)).sort_values(["_op", "dtype", "cols", "rows"])
    figures = [f"{r.op} {int(r.rows)}x{int(r.cols)} {r.dtype} {r.variant} "
               f"{ratio(target.metric, getattr(r, target.metric))}" for r in best.itertuples(index=False)]
    values = best[target.metric]
    ok = values > target.threshold if target.strictly else values >= target.threshold
    verdict = "met" if bool(ok.all()) else f"NOT met at {int((~ok).sum())} of {len(best)} points"
    if len(figures) > MAX_FIGURES:  # a target over a whole preset: the misses and the closest call, not 60 figures
        missed = [f for f, good in zip(figures, ok, strict=True) if not good]
        lowest = figures[int(values.reset_index(drop=True).idxmin())]
        shown = f"missed at {', '.join(missed)}" if missed else f"all {len(figures)} points, lowest {lowest}"
        return f"{verdict}: {target.name}: {shown}"
    return f"{verdict}: {target.name}: " + ", ".join(figures)


def target_lines(rows: pd.DataFrame, targets: Sequence[ThroughputTarget] = THROUGHPUT_TARGETS,
                 device: str | None = None) -> list[str]:
    """One line per target for the device types these rows hold (only `device`'s when given): a CPU-only run
    says nothing about the GPU targets, a merged CPU + GPU report checks both."""
    if rows.empty:
        return []
    wide = wide_throughput(rows, ["variant", *POINT], derive=False)
    present = {str(d).split(":")[0] for d in rows["device"].unique()}
    return [check(t, wide) for t in targets
            if t.device in present and (device is None or str(device).startswith(t.device))]
