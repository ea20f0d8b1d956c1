"""The throughput study's presets: sweeps (blocks of ops x shapes x dtypes), their timer budgets, and what
--quick and the full study mean per device type. The targets it promises are in bench.store.targets."""

from __future__ import annotations

from dataclasses import dataclass

from bench.measure.timer import TimerBudget
from bench.store.rows import THROUGHPUT_OPS


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

_TP_OPS = THROUGHPUT_OPS
_TP_CHAPTER = ((256, 10), (60000, 10))  # the chapter's minibatch and whole training set, 10 classes
_TP_NARROW = (65536, 10)  # the narrow-row figure: 10 classes, a power-of-two batch
# Calls of tens of milliseconds to seconds. Up to six warm-up calls (at most 2 s of them): the first calls at
# 512 MB page-fault while glibc's heap grows to hold the outputs (several times slower than once warm, and
# two warm-ups are not always enough), and a training loop's steady state is the warm heap.
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

# --- the `llm` presets: the vocabularies of today's models, in the dtypes they train in ---------------------

LLM_VOCABS = (32000, 50257, 128256, 151936, 262144)  # Llama 2, GPT-2, Llama 3, Qwen 2, Gemma 3
LLM_DTYPES = ("bfloat16", "float16", "float32")
LLM_OPS = ("ce_fwd_bwd", "softmax_fwd")  # the training step's loss, the sampling softmax
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _llm_blocks(vocabs: tuple[int, ...], dtypes: tuple[str, ...], rows: int | None, input_bytes: int,
                timer: TimerBudget) -> tuple[SweepBlock, ...]:
    """One block per (vocabulary, dtype): `rows` rows, or as many as make an input of `input_bytes` (rows
    sized to the device: a CPU sweeps one tensor of tens of MB where a GPU takes 4096 rows)."""
    return tuple(SweepBlock(LLM_OPS, ((rows or max(1, input_bytes // (vocab * _ITEMSIZE[dtype])), vocab),),
                            (dtype,), timer=timer)
                 for vocab in vocabs for dtype in dtypes)


_CPU_LLM_BYTES = 32 * 2**20  # past the 32 MiB L3, well under a second a call
# 450 units with every variant: a lean budget keeps the preset under 10 minutes on 2 cores (by its estimate)
_TP_LLM_CPU_TIMER = TimerBudget(warmup=3, warmup_s=1.0, min_reps=3, budget_s=0.15)
LLM_PRESETS = (
    ThroughputPreset("llm", "LLM vocabularies 32000-262144 in bfloat16, float16, float32 on a CPU: CE forward+"
                            "backward and softmax forward, 32 MiB inputs",
                     blocks=_llm_blocks(LLM_VOCABS, LLM_DTYPES, None, _CPU_LLM_BYTES, _TP_LLM_CPU_TIMER)),
    ThroughputPreset("llm-quick", "two LLM vocabularies (32000, 151936) in bfloat16 on a CPU",
                     blocks=_llm_blocks((32000, 151936), ("bfloat16",), None, _CPU_LLM_BYTES, _TP_LLM_CPU_TIMER)),
    ThroughputPreset("llm-gpu", "LLM vocabularies 32000-262144 in bfloat16, float16, float32, 4096 rows (GPU)",
                     blocks=_llm_blocks(LLM_VOCABS, LLM_DTYPES, 4096, 0, _TP_GPU_TIMER), timer=_TP_GPU_TIMER),
    ThroughputPreset("llm-gpu-quick", "three LLM vocabularies in bfloat16, 4096 rows (GPU)",
                     blocks=_llm_blocks((32000, 128256, 262144), ("bfloat16",), 4096, 0, _TP_GPU_TIMER),
                     timer=_TP_GPU_TIMER),
)
THROUGHPUT_PRESETS.update({p.name: p for p in LLM_PRESETS})
# The llm preset `softmax-bench all` runs after the chapter's, per device type and --quick.
LLM: dict[str, dict[bool, str]] = {"cpu": {False: "llm", True: "llm-quick"},
                                   "cuda": {False: "llm-gpu", True: "llm-gpu-quick"}}

# What `--quick` means per device type: the throughput preset, the training regimes and the stability dtypes
# (None: every regime / every dtype the device supports); FULL: the throughput preset without --quick.
QUICK: dict[str, dict[str, object]] = {
    "cpu": {"throughput": "quick", "regimes": None, "stability_dtypes": None},
    "cuda": {"throughput": "gpu-quick", "regimes": ("standard", "raw-pixels"),
             "stability_dtypes": ("float32", "bfloat16")},
}
FULL: dict[str, str] = {"cpu": "default", "cuda": "gpu"}
