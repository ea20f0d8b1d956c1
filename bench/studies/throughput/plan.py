"""The plan of a sweep: which units, in which order, and what their timer budgets cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.measure.timer import TimerBudget
from bench.store.rows import BASELINE
from bench.studies.throughput.presets import SweepBlock, ThroughputPreset


@dataclass(frozen=True)
class Unit:
    variant: str
    op: str
    rows: int
    cols: int
    dtype: str
    timer: TimerBudget
    repeat: bool = False

    def label(self) -> str:
        return f"{self.variant} {self.op} {self.rows}x{self.cols} {self.dtype}"


def plan(preset: ThroughputPreset, variant_names: Sequence[str], ops: Sequence[str] | None = None,
         dtypes: Sequence[str] | None = None, shapes: Sequence[tuple[int, int]] | None = None) -> list[Unit]:
    """Every unit of the preset, in sweep order; `ops`/`dtypes`/`shapes` replace the preset's lists.

    Within one (shape, dtype, op) the baseline `torch` comes first, so every other variant's speedup is
    against a measurement taken just before it.
    """
    ordered = sorted(dict.fromkeys(variant_names), key=lambda name: (name != BASELINE,))
    repeats = {(r.variant, r.op, r.rows, r.cols, r.dtype) for r in preset.repeats}
    units: dict[tuple, Unit] = {}
    for block in preset.blocks:
        block = SweepBlock(tuple(ops) if ops else block.ops, tuple(shapes) if shapes else block.shapes,
                           tuple(dtypes) if dtypes else block.dtypes, block.timer)
        for rows, cols in block.shapes:
            for dtype in block.dtypes:
                for op in block.ops:
                    for name in ordered:
                        key = (name, op, rows, cols, dtype)
                        if key not in units:
                            units[key] = Unit(name, op, rows, cols, dtype, block.timer or preset.timer,
                                              repeat=key in repeats)
    return list(units.values())



def estimate_seconds(units: Sequence[Unit], device: torch.device) -> float:
    """What the timer budgets alone cost: per unit, the variant and each roofline copy (two on CPU, one on
    CUDA) spend their sampling budget and some warm-up (at most 0.1 s of it: short calls stop after a few),
    plus the validation and peak-memory calls (~0.05 s)."""
    copies = 2 if device.type == "cpu" else 1
    return sum((copies + 1) * (min(u.timer.warmup_s, 0.1) + u.timer.budget_s) + 0.05 for u in units)

