"""The stability study's presets: which row lengths, how many rows, which families."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StabilityPreset:
    """One stability sweep: which row lengths each family is measured at, how many rows, which seed.

    The families and their swept parameters (shifts past each dtype's exp limits) live in
    bench/studies/stability/families.py, derived from the dtype's own limits; a preset only picks how much of it to run.
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


LLM_LENGTHS = (32000, 50257, 128256, 151936, 262144)

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
        # the vocabularies of today's models (Llama 2, GPT-2, Llama 3, Qwen 2, Gemma 3); run in LLM_DTYPES
        StabilityPreset("llm", "every family at LLM vocabulary lengths 32000-262144 (bfloat16, float16, float32)",
                        lengths=LLM_LENGTHS, long_lengths=LLM_LENGTHS, rows=2, long_rows=2, thresholds=False),
        StabilityPreset("llm-quick", "every family at 32000 and 262144 columns (bfloat16)",
                        lengths=(32000, 262144), long_lengths=(32000, 262144), rows=2, long_rows=2,
                        thresholds=False),
    )
}
LLM_LENGTHS_DTYPES = {"llm": ("bfloat16", "float16", "float32"), "llm-quick": ("bfloat16",)}
