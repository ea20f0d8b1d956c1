"""Every number a study uses, named: training regimes, throughput sweeps, stability sweeps, budgets.

Presets are frozen dataclasses so nothing downstream can mutate them; :func:`pick` selects one by name
and rejects unknown names with the list of known ones. ``as_dict`` gives what run.json records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, TypeVar

from bench import UserError

T = TypeVar("T")


def pick(kind: str, table: Mapping[str, T], name: str | None, default: str | None = None) -> T:
    """table[name] (table[default] when name is None, i.e. not given), or a UserError naming the known ones.

    An empty or blank name is refused, never read as "not given": `--preset ""` (an unset shell variable)
    must not silently run the default preset.
    """
    known = ", ".join(table)
    if name is None and default is not None:
        name = default
    if name is None or not name.strip():
        raise UserError(f"an empty {kind} name was given; give one of the known {kind}s: {known}.")
    if name not in table:
        raise UserError(f"unknown {kind} {name!r}; known {kind}s: {known}.")
    return table[name]


def as_dict(preset: Any) -> dict[str, Any]:
    return asdict(preset) if is_dataclass(preset) else dict(preset)


# --- training: the chapter's recipe and the stress regimes ------------------------------------------

@dataclass(frozen=True)
class Regime:
    """One training setting. `dtypes` are those the regime trains in (low-precision uses two)."""

    name: str
    description: str
    lr: float = 0.1
    batch_size: int = 256
    epochs: int = 10
    pixel_scale: float = 1.0 / 255.0  # the chapter's ToTensor scales uint8 pixels to [0, 1]
    init_std: float = 0.01  # W ~ N(0, 0.01)
    dtypes: tuple[str, ...] = ("float32",)


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime("standard", "the chapter: pixels in [0, 1], lr 0.1, batch 256, 10 epochs, float32"),
        Regime("raw-pixels", "pixels 0-255 instead of 0-1: logits in the thousands", pixel_scale=1.0),
        Regime("high-lr", "lr 10 instead of 0.1: the weights and logits blow up", lr=10.0),
        Regime("low-precision", "the chapter in float16 and bfloat16", dtypes=("float16", "bfloat16")),
    )
}

NUM_PREDICTIONS = 18  # test images shown with true and predicted labels (predict_ch3 shows the first few)
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle boot")

# --- throughput sweeps (bench/throughput.py) ------------------------------------------------------

THROUGHPUT_OPS = ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd")


@dataclass(frozen=True)
class TimerBudget:
    """How long and how often one measurement is timed (bench/timing.py reads it)."""

    warmup: int = 3  # calls after the separately timed first call, before timing starts
    warmup_s: float = 0.2  # ...but stop warming up once this long was spent (1 s calls need no 3 warm-ups)
    min_reps: int = 5  # samples taken even when the time budget is spent
    max_reps: int = 2000
    budget_s: float = 0.25  # time spent collecting samples for one measurement
    # CPU: a call shorter than this is repeated inside one sample so perf_counter's own cost stays negligible.
    min_sample_s: float = 100e-6
    max_inner: int = 1000
    # Flag a measurement as unstable when its interquartile range exceeds this fraction of its median.
    spread_limit: float = 0.10
    l2_flush_multiple: int = 2  # CUDA: the flush buffer is this many times the device's L2 size


@dataclass(frozen=True)
class SweepBlock:
    """Every op x shape x dtype combination of one block; a preset is a union of blocks."""

    ops: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]  # (rows, cols): rows = batch x sequence, cols = classes / vocabulary
    dtypes: tuple[str, ...]
    timer: TimerBudget | None = None  # None: the preset's timer


@dataclass(frozen=True)
class RepeatCheck:
    """A measurement taken twice in the same run, to show how far two repeats agree."""

    variant: str
    op: str
    rows: int
    cols: int
    dtype: str


@dataclass(frozen=True)
class ThroughputPreset:
    name: str
    description: str
    blocks: tuple[SweepBlock, ...]
    timer: TimerBudget = TimerBudget()
    repeats: tuple[RepeatCheck, ...] = ()
    # CPU: a unit is not attempted (status oom) when inputs + this many input-sized temporaries exceed the
    # memory the kernel says is available - the OOM killer would end the whole sweep, not just the unit.
    cpu_live_copies: int = 8
    # CPU: units whose input is at least this big (it streams from DRAM: the L3 here is 32 MiB) time the
    # variant and the copies in turns, so the roofline ratio does not ride on minutes of bandwidth drift.
    cpu_interleave_bytes: int = 32 * 2**20


# Per-unit time limit (seconds) by device type: far above any honest unit of the presets (the largest CPU
# unit takes ~20 s here), so only a hung variant reaches it. `--timeout` overrides; 0 turns it off.
UNIT_TIMEOUT_S: dict[str, float] = {"cpu": 300.0, "cuda": 120.0}
# The stability study's unit is one call of a variant on a small batch (milliseconds; mpmath is not timed).
STABILITY_TIMEOUT_S = 120.0
# One training run (a variant, regime and dtype: 10 epochs of the chapter take well under a minute here).
TRAIN_TIMEOUT_S = 1800.0
# Share of RAM (CPU) or GPU memory the sweep may hold at once: an allocation past it fails as an `oom` row
# instead of waking the OOM killer (which would end the whole run).
MEMORY_FRACTION = 0.8

# The builtin every variant's speed is compared against (speedup_vs_torch, the report, the targets).
BASELINE = "torch"

_TP_OPS = THROUGHPUT_OPS
_TP_CHAPTER = ((256, 10), (60000, 10))  # the chapter's minibatch and whole training set, 10 classes
_TP_NARROW = (65536, 10)  # the narrow-row figure: 10 classes, a power-of-two batch
# ~0.02-2 s calls on this CPU. Up to six warm-up calls (at most 2 s of them): the first calls at 512 MB
# page-fault while glibc's heap grows to hold the outputs (torch's CE step ran 2.07 s, then 0.64 s once warm,
# and native's softmax at 1024x131072 took 143 ms a call after two warm-ups but 21 ms after six), and a
# training loop's steady state is the warm heap.
_TP_BIG_TIMER = TimerBudget(warmup=6, warmup_s=2.0, min_reps=3, budget_s=0.3)
_TP_QUICK_TIMER = TimerBudget(budget_s=0.05)
_TP_GPU_WIDE = ((4096, 4096), (4096, 32768), (1024, 131072), (4096, 262144))
_TP_GPU_TIMER = TimerBudget(warmup=10, warmup_s=0.5, min_reps=10, budget_s=0.3, min_sample_s=0.0)

THROUGHPUT_PRESETS: dict[str, ThroughputPreset] = {
    p.name: p
    for p in (
        ThroughputPreset(
            "smoke", "seconds: two tiny shapes, every op, float32 (tests and CI)",
            blocks=(SweepBlock(_TP_OPS, ((256, 10), (512, 1000)), ("float32",)),),
            timer=TimerBudget(warmup=1, min_reps=3, budget_s=0.02),
        ),
        ThroughputPreset(
            "quick", "about a minute on a 2-core CPU: the chapter's shapes, 4096x4096 softmax, an LM-vocabulary CE",
            blocks=(
                SweepBlock(_TP_OPS, _TP_CHAPTER, ("float32",)),
                SweepBlock(("softmax_fwd", "softmax_fwd_bwd", "ce_fwd_bwd"), (_TP_NARROW,), ("float32",)),
                SweepBlock(("softmax_fwd",), ((4096, 4096),), ("float32",), timer=_TP_BIG_TIMER),
                SweepBlock(("ce_fwd_bwd",), ((256, 32768),), ("float32",), timer=_TP_BIG_TIMER),
            ),
            timer=_TP_QUICK_TIMER,
            repeats=(RepeatCheck("torch", "softmax_fwd", 4096, 4096, "float32"),),
        ),
        ThroughputPreset(
            "default", "a few minutes on a 2-core CPU: chapter shapes to LM vocabularies, float32/float64/bfloat16",
            # Every op on the small and mid shapes; at LM vocabularies (512 MB float32 inputs, 0.5-2 s calls on
            # this CPU, ~8 s a unit) one op per shape: the CE training step and the sampling softmax.
            blocks=(
                SweepBlock(_TP_OPS, _TP_CHAPTER, ("float32", "float64")),
                SweepBlock(_TP_OPS, (_TP_NARROW,), ("float32",)),
                SweepBlock(_TP_OPS, ((1024, 4096),), ("float32", "bfloat16")),
                SweepBlock(_TP_OPS, ((4096, 4096),), ("float32",), timer=_TP_BIG_TIMER),
                SweepBlock(("ce_fwd_bwd",), ((4096, 32768),), ("float32",), timer=_TP_BIG_TIMER),
                SweepBlock(("softmax_fwd",), ((1024, 131072),), ("float32",), timer=_TP_BIG_TIMER),
            ),
            repeats=(RepeatCheck("torch", "softmax_fwd", 4096, 4096, "float32"),
                     RepeatCheck("torch", "ce_fwd_bwd", 4096, 32768, "float32")),
        ),
        ThroughputPreset(
            # ~60 units a variant (was 240, 280 of the 960 with 1 GiB inputs): what a person waits for
            "gpu", "a GPU, under 20 minutes on an H100: chapter shapes to 4096x262144 vocabularies, every op in "
                   "float32 and bfloat16, float16 and float64 at one LM shape",
            blocks=(
                SweepBlock(_TP_OPS, (*_TP_CHAPTER, _TP_NARROW), ("float32", "bfloat16")),
                SweepBlock(_TP_OPS, _TP_GPU_WIDE, ("float32", "bfloat16")),
                SweepBlock(("softmax_fwd", "ce_fwd_bwd"), ((4096, 32768),), ("float16", "float64")),
            ),
            timer=_TP_GPU_TIMER,
            repeats=(RepeatCheck("torch", "softmax_fwd", 4096, 32768, "float32"),
                     RepeatCheck("torch", "ce_fwd_bwd", 4096, 32768, "bfloat16")),
        ),
        ThroughputPreset(
            # `make bench DEVICE=cuda QUICK=1`: the shapes that decide the GPU targets and the chapter's narrow
            # rows, the two ops a model runs (sampling softmax, the CE training step), the two dtypes it trains in
            "gpu-quick", "a GPU in a few minutes: softmax forward and CE forward+backward, float32 and bfloat16, "
                         "65536x10, 4096x4096, 1024x131072, 4096x262144",
            blocks=(SweepBlock(("softmax_fwd", "ce_fwd_bwd"), (_TP_NARROW, (4096, 4096), (1024, 131072),
                                                                (4096, 262144)), ("float32", "bfloat16")),),
            timer=TimerBudget(warmup=5, warmup_s=0.2, min_reps=10, budget_s=0.1, min_sample_s=0.0),
        ),
    )
}

# What `--quick` means per device type: the throughput preset, the training regimes and the stability dtypes
# (None: every regime / every dtype the device supports); FULL: the throughput preset without --quick.
QUICK: dict[str, dict[str, object]] = {
    "cpu": {"throughput": "quick", "regimes": None, "stability_dtypes": None},
    "cuda": {"throughput": "gpu-quick", "regimes": ("standard", "raw-pixels"),
             "stability_dtypes": ("float32", "bfloat16")},
}
FULL: dict[str, str] = {"cpu": "default", "cuda": "gpu"}

# --- throughput targets (bench/targets.py) ----------------------------------------------------------


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


_TP_HALF_SHAPES = ((1024, 4096), (4096, 32000), (1024, 128256))  # issue 12: a mid shape and LLM vocabularies
THROUGHPUT_TARGETS: tuple[ThroughputTarget, ...] = (
    ThroughputTarget("CPU: the best softmax at >= 90% of the copy bandwidth", "cpu", ("softmax_fwd",),
                     ("float32",), "roofline_frac", 0.90, shapes=((4096, 4096), (1024, 131072))),
    ThroughputTarget("CPU: narrow >= 10x torch on the chapter's shape", "cpu",
                     ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd"), ("float32",), "speedup_vs_torch",
                     10.0, variant="narrow", shapes=(_TP_NARROW,)),
    # issue 12: the native kernels in every dtype; what bounds the missed ones is in bench/roofline_probe.py
    ThroughputTarget("CPU: native bfloat16/float16 at >= 60% of the copy bandwidth", "cpu", _TP_OPS,
                     ("bfloat16", "float16"), "roofline_frac", 0.60, variant="native", shapes=_TP_HALF_SHAPES),
    ThroughputTarget("CPU: native bfloat16/float16 >= 3x torch", "cpu", _TP_OPS, ("bfloat16", "float16"),
                     "speedup_vs_torch", 3.0, variant="native", shapes=_TP_HALF_SHAPES),
    ThroughputTarget("CPU: float32 softmax fwd+bwd and cross-entropy at >= 70% of the copy bandwidth, rows of 4K up",
                     "cpu", ("softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd"), ("float32",), "roofline_frac", 0.70,
                     min_cols=4096),
    ThroughputTarget("CPU: native float32 softmax at >= 60% of the copy bandwidth on the chapter's narrow shape",
                     "cpu", ("softmax_fwd",), ("float32",), "roofline_frac", 0.60, variant="native",
                     shapes=(_TP_NARROW,)),
    ThroughputTarget("CPU: native float64 >= 1.5x torch on the chapter's and a 4096-wide shape", "cpu", _TP_OPS,
                     ("float64",), "speedup_vs_torch", 1.5, variant="native", shapes=((60000, 10), (4096, 4096))),
    ThroughputTarget("GPU: the best softmax at >= 90% of the copy bandwidth, rows of 4K to 256K", "cuda",
                     ("softmax_fwd",), ("float32", "bfloat16"), "roofline_frac", 0.90, min_cols=4096,
                     max_cols=262144),
    ThroughputTarget("GPU: the best softmax faster than torch from rows of 64K up", "cuda", ("softmax_fwd",),
                     ("float32", "bfloat16"), "speedup_vs_torch", 1.0, min_cols=65536, strictly=True),
)

# --- stability sweeps (bench/stability.py) -------------------------------------------------------


@dataclass(frozen=True)
class StabilityPreset:
    """One stability sweep: which row lengths each family is measured at, how many rows, which seed.

    The families and their swept parameters (shifts past each dtype's exp limits) live in bench/families.py,
    derived from the dtype's own limits; a preset only picks how much of it to run.
    """

    name: str
    description: str
    lengths: tuple[int, ...]  # row lengths for every family
    long_lengths: tuple[int, ...]  # row lengths for the families marked long (wide_rows, ties_large)
    rows: int = 4  # rows per batch (>= 2: the poisoned / fully masked row sits beside clean ones)
    long_rows: int = 2  # rows per batch at lengths above 20000
    seed: int = 0
    families: tuple[str, ...] = ()  # empty: every family
    thresholds: bool = True  # bisect overflow / underflow / far-target thresholds too


STABILITY_PRESETS: dict[str, StabilityPreset] = {
    p.name: p
    for p in (
        StabilityPreset("default", "every family at rows of 10, 1000 and 16384 (wide rows and ties to 131072), "
                                   "every dtype, thresholds; a few minutes on a 2-core CPU",
                        lengths=(10, 1000, 16384), long_lengths=(10, 1000, 131072)),
        StabilityPreset("quick", "every family at rows of 10 and 257 (wide rows and ties at 131072), thresholds",
                        lengths=(10, 257), long_lengths=(10, 131072), rows=3),
        # what tests/test_contracts.py and `softmax-bench check` run: every family, so every contract entry is
        # exercised, at the default preset's lengths so it shows the same breakdowns (the float16 gradient of an
        # unfused loss squares a sum past 256 at 16384; at 131072 the float16 sum of ones passes 65504)
        StabilityPreset("check", "the contract checks: every family at rows of 10, 1000, 16384 (wide rows: 131072)",
                        lengths=(10, 1000, 16384), long_lengths=(131072,), rows=3, long_rows=2, thresholds=False),
    )
}
