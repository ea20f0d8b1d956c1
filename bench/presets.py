"""Every number a study uses, named: training regimes, throughput sweeps, stability sweeps, budgets.

Presets are frozen dataclasses so nothing downstream can mutate them; :func:`pick` selects one by name
and rejects unknown names with the list of known ones. ``as_dict`` gives what run.json records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Mapping, TypeVar

from bench import UserError

T = TypeVar("T")


def pick(kind: str, table: Mapping[str, T], name: str) -> T:
    """table[name], or a UserError naming the known presets of this kind."""
    if name not in table:
        raise UserError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(table)}.")
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

# --- stability sweeps (bench/stability.py) -------------------------------------------------------
