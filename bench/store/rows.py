"""The row schema: one dataclass per table, whose field order is the CSV column order.

A row that could not be measured is still a row: status ``oom``, ``error`` (message says why), ``skipped``
(message gives the reason), ``wrong`` (the output failed validation) or ``timeout``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

# 2: run.json's "throughput" section names the copies of each device's roofline ("roofline_copies");
# a schema-1 run is converted on read (bench.store.run), from the copy_gbps rows' messages.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
# Every status a row can hold: ok, or why it holds no measurement (the report explains each of the others).
STATUSES = ("ok", "wrong", "timeout", "oom", "error", "skipped")
# The builtin every variant's speed is compared against (speedup_vs_torch, the report, the targets).
BASELINE = "torch"
# The throughput ops, in the order every table and summary lists them (bench.studies.throughput.ops).
THROUGHPUT_OPS = ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd")
# The training regimes a report knows by name, and the chapter's minibatch size: what a report assumes for a
# regime whose run.json lost its presets (every regime of bench.studies.training.presets trains in batches of it).
REGIME_NAMES = ("standard", "raw-pixels", "high-lr", "low-precision")
CHAPTER_BATCH_SIZE = 256
# The labels of PredictionRow.label (Fashion-MNIST's classes, in index order).
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle boot")


@dataclass
class ThroughputRow:
    variant: str
    device: str
    dtype: str
    op: str  # softmax_fwd, softmax_fwd_bwd, ce_fwd, ce_fwd_bwd
    rows: int
    cols: int
    metric: str  # median_s, p20_s, ..., gbps, copy_gbps, roofline_frac, speedup_vs_torch, peak_bytes
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class SampleRow:
    """One raw per-call time of a throughput unit (at most MAX_SAMPLES per unit, evenly spaced in time order),
    kept so `compare` can test a shift on samples instead of on two medians."""

    variant: str
    device: str
    dtype: str
    op: str
    rows: int
    cols: int
    index: int  # position among the kept samples, in the order they were taken
    seconds: float


MAX_SAMPLES = 64


@dataclass
class StabilityRow:
    variant: str
    device: str
    dtype: str
    op: str  # softmax, log_softmax, cross_entropy, ce_grad
    family: str
    param: float  # the family's swept parameter (shift c, gap d, ...)
    n: int  # row length
    metric: str  # nonfinite, max_rel_err_u, max_abs_err, sum_err, kl, passed
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class ThresholdRow:
    variant: str
    device: str
    dtype: str
    op: str
    kind: str  # overflow, underflow, far_target
    threshold: float | None
    probe: str  # the probe row, e.g. "[c, c-1, ..., c-9]"
    status: str = "ok"
    message: str = ""


@dataclass
class TrainingRow:
    variant: str
    regime: str
    device: str
    dtype: str
    seed: int
    epoch: int | None  # None for whole-run metrics (seconds, diverged_step)
    metric: str  # train_loss, train_acc, test_acc, seconds, diverged_step
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class PredictionRow:
    variant: str
    regime: str
    device: str
    dtype: str
    seed: int
    index: int  # position in the test set
    label: int
    predicted: int
    pixels: str  # the 28x28 uint8 image as hex, so a report can draw it without the dataset


TABLES: dict[str, type] = {
    "throughput": ThroughputRow,
    "samples": SampleRow,
    "stability": StabilityRow,
    "thresholds": ThresholdRow,
    "training": TrainingRow,
    "predictions": PredictionRow,
}
TABLE_OF = {cls: name for name, cls in TABLES.items()}

# What identifies one measured value in each table. A table may hold a key twice after a run was cut
# mid-write and resumed; the reader keeps only the latest measurement (:func:`latest_measurements`).
UNIT_KEYS: dict[str, tuple[str, ...]] = {
    "throughput": ("variant", "device", "dtype", "op", "rows", "cols"),
    "samples": ("variant", "device", "dtype", "op", "rows", "cols"),
    "stability": ("variant", "device", "dtype", "op", "family", "param", "n", "metric"),
    "thresholds": ("variant", "device", "dtype", "op", "kind"),
    "training": ("variant", "regime", "device", "dtype", "seed", "epoch", "metric"),
    "predictions": ("variant", "regime", "device", "dtype", "seed", "index"),
}
# Tables whose unit is a block of rows written together, and the row that opens a block: a block cut short
# and measured again must not mix with its second measurement, so only each unit's last block counts.
BLOCK_START: dict[str, tuple[str, object]] = {"throughput": ("metric", "median_s"), "samples": ("index", 0)}


def columns(table: str) -> list[str]:
    return [f.name for f in fields(TABLES[table])]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def key_of(row: Any, key: Iterable[str]) -> tuple[str, ...]:
    """The resume key of a row object, comparable with :meth:`Run.done`'s tuples."""
    return tuple(str(_cell(getattr(row, k))) for k in key)

