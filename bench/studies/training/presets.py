"""The training study's presets: the chapter's recipe and the stress regimes."""

from __future__ import annotations

from dataclasses import dataclass

from bench.store.rows import CHAPTER_BATCH_SIZE, REGIME_NAMES
from bench.store.rows import FASHION_LABELS as FASHION_LABELS  # re-exported: the labels the report shows


@dataclass(frozen=True)
class Regime:
    """One training setting. `dtypes` are those the regime trains in (low-precision uses two)."""

    name: str
    description: str
    lr: float = 0.1
    batch_size: int = CHAPTER_BATCH_SIZE
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
assert tuple(REGIMES) == REGIME_NAMES  # the names the report falls back on (bench.store.rows)
