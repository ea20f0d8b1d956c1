"""The adversarial input families of the stability study: named, seeded generators of logits.

Each family turns (dtype, param, n, rows, seed) into a :class:`Batch`: logits already rounded to the dtype
(held as float64, which represents every float16/bfloat16/float32 value exactly), and int64 targets. The
reference (bench/studies/stability/reference.py) is computed on exactly these rounded values, so input rounding is never
blamed on the algorithm.

Every family draws its ordinary values from a small pool of distinct numbers (:data:`POOL_SIZE`): rows of
131072 elements then hold at most a few hundred distinct values, and the 50-digit mpmath reference is
computed once per distinct value and weighted by its multiplicity, which keeps it exact and cheap. The pool's
largest value is placed at least twice in every row, so no ordinary row has a probability above 1/2: near-one
probabilities are the confident-correct family's subject and must not leak into the others.

The swept parameters come from each dtype's own limits (:func:`limits`), so "past overflow" means the same
thing in float16 (11.09) as in float64 (709.78).

    >>> from bench.studies.stability.families import FAMILIES
    >>> batch = FAMILIES["translation"].make(torch.float32, 100.0, n=1000, rows=4, seed=0)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

POOL_SIZE = 48  # distinct ordinary values per row: enough spread, cheap exact reference
ORDINARY_STD = 1.0  # pool ~ N(0, 1) clipped to +-3: every p >= e^-6 / n, far from float16's underflow


@dataclass(frozen=True)
class Limits:
    """Where exp stops working in one dtype, all as natural logarithms."""

    u: float  # unit roundoff, eps / 2
    tiny: float  # smallest normal
    max: float
    overflow: float  # ln(max): exp(x) is inf beyond (float32 88.72, float16 11.09, bfloat16 88.72, float64 709.78)
    underflow: float  # -ln(smallest subnormal / 2): exp(-x) rounds to 0 beyond (f32 103.97, f16 17.33, f64 745.13)
    normal: float  # -ln(tiny): exp(-x) is subnormal beyond (f32 87.34)


def limits(dtype: torch.dtype) -> Limits:
    fi = torch.finfo(dtype)
    # smallest subnormal = tiny * eps; half of it (the rounding edge) is below float64's range, so use logs
    return Limits(u=fi.eps / 2, tiny=fi.tiny, max=fi.max, overflow=math.log(fi.max),
                  underflow=-(math.log(fi.tiny) + math.log(fi.eps) - math.log(2)), normal=-math.log(fi.tiny))


def round_to(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float64 values rounded to `dtype` (as torch rounds them) and widened back to float64, exactly."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(dtype).to(torch.float64).numpy()


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # [rows, n] float64 holding dtype-rounded values (may hold -inf, +inf, nan)
    target: np.ndarray  # [rows] int64


def _ordinary(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Rows drawn from a pool of POOL_SIZE normal values; the pool max appears at least twice per row."""
    pool = np.clip(rng.normal(0.0, ORDINARY_STD, size=POOL_SIZE), -3 * ORDINARY_STD, 3 * ORDINARY_STD)
    idx = rng.integers(0, POOL_SIZE, size=(rows, n))
    top = int(np.argmax(pool))
    for r in range(rows):
        idx[r, rng.choice(n, size=2, replace=False)] = top
    return pool[idx]


def _targets(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    return rng.integers(0, n, size=rows).astype(np.int64)


# -- the generators: (rng, dtype, param, rows, n) -> Batch ----------------------------------------------

def _translation(rng, dtype, c, rows, n):
    return Batch(round_to(_ordinary(rng, rows, n) + c, dtype), _targets(rng, rows, n))


def _underflow_shift(rng, dtype, c, rows, n):
    return Batch(round_to(_ordinary(rng, rows, n) - c, dtype), _targets(rng, rows, n))


def _far_target(rng, dtype, d, rows, n):
    # the target sits d below the row max: p_target = e^-d / sum, which underflows once d passes ~ln(1/tiny)
    z = _ordinary(rng, rows, n)
    t = _targets(rng, rows, n)
    # the target must not be one of the two forced copies of the max, or the max would appear once
    for r in range(rows):
        top = z[r].max()
        if (z[r] == top).sum() <= 2 and z[r, t[r]] == top:
            t[r] = int(np.flatnonzero(z[r] != top)[0]) if (z[r] != top).any() else t[r]
        z[r, t[r]] = top - d
    return Batch(round_to(z, dtype), t)


def _confident_correct(rng, dtype, d, rows, n):
    # the target sits d above all others: loss = log1p(sum_j e^(z_j - z_t)) ~ (n-1) e^-d, which rounds to 0
    # unless computed with log1p on the small sum
    z = _ordinary(rng, rows, n) * 0.25  # others close together, so the gap is d, not d +- spread
    t = _targets(rng, rows, n)
    for r in range(rows):
        z[r, t[r]] = z[r].max() + d
    return Batch(round_to(z, dtype), t)


def _wide_rows(rng, dtype, value, rows, n):
    # n equal logits: p = 1/n exactly; the sum of n ones overflows float16 past 65504 and stalls in
    # low-precision sequential accumulation (256 + 1 == 256 in bfloat16)
    return Batch(round_to(np.full((rows, n), value), dtype), _targets(rng, rows, n))


def _ties_large(rng, dtype, c, rows, n):
    # every logit equal to c, a large magnitude: the answer is 1/n whatever c is, yet exp(c) is inf or 0
    return Batch(round_to(np.full((rows, n), c), dtype), _targets(rng, rows, n))


def _unmasked_targets(rng, mask: np.ndarray) -> np.ndarray:
    t = np.zeros(mask.shape[0], dtype=np.int64)
    for r in range(mask.shape[0]):
        free = np.flatnonzero(~mask[r])
        t[r] = int(rng.choice(free)) if free.size else int(rng.integers(0, mask.shape[1]))
    return t


def _mask_partial(rng, dtype, frac, rows, n):
    z = _ordinary(rng, rows, n)
    mask = rng.random((rows, n)) < frac
    mask &= z < z.max(axis=1, keepdims=True)  # both copies of the max stay: p <= 1/2, never fully masked
    z[mask] = -np.inf
    return Batch(round_to(z, dtype), _unmasked_targets(rng, mask))


def _mask_prefix(rng, dtype, frac, rows, n):
    # a leading run of -inf: an online softmax that seeds its running max with element 0 meets -inf - -inf
    z = _ordinary(rng, rows, n)
    k = min(n - 2, max(1, int(frac * n)))
    mask = np.zeros((rows, n), dtype=bool)
    mask[:, :k] = True
    for r in range(rows):  # the finite suffix holds its max twice, as every ordinary row does
        z[r, k + rng.choice(n - k, size=2, replace=False)] = z[r, k:].max()
    z[:, :k] = -np.inf
    return Batch(round_to(z, dtype), _unmasked_targets(rng, mask))


def _mask_full(rng, dtype, _param, rows, n):
    # row 0 entirely -inf (0/0: the reference is nan), the other rows ordinary: nan must not leak into them
    z = _ordinary(rng, rows, n)
    z[0] = -np.inf
    return Batch(round_to(z, dtype), _targets(rng, rows, n))


def _mask_fill(rng, dtype, fill, rows, n):
    # masking with a finite fill (-1e4, -1e9) instead of -inf: row 0 entirely filled (the reference is the
    # uniform 1/n while the fill is finite, nan once the fill rounds to -inf as -1e9 does in float16)
    z = _ordinary(rng, rows, n)
    mask = (rng.random((rows, n)) < 0.5) & (z < z.max(axis=1, keepdims=True))
    mask[0] = True
    z[mask] = fill
    return Batch(round_to(z, dtype), _unmasked_targets(rng, mask))


def _poison(value):
    def make(rng, dtype, _param, rows, n):
        # row 0 holds one `value` entry; the reference for that row is nan everywhere (inf - inf, nan - m are
        # undefined) and every other row must come out exactly as if row 0 were not there
        z = _ordinary(rng, rows, n)
        z[0, int(rng.integers(0, n))] = value
        return Batch(round_to(z, dtype), _targets(rng, rows, n))
    return make


def _ce_1e8(rng, dtype, c, rows, n):
    # PyTorch once returned 0 instead of log 2 for cross_entropy([[1e8, 1e8]], [0]) in float32
    return Batch(round_to(np.full((rows, 2), c), dtype), np.zeros(rows, dtype=np.int64))


# -- parameter grids, from each dtype's limits ------------------------------------------------------------

def _grid(*values: float) -> tuple[float, ...]:
    return tuple(sorted({float(v) for v in values}))


def _translation_params(lim: Limits) -> tuple[float, ...]:
    L = lim.overflow
    return _grid(0.0, round(0.5 * L, 2), round(L - 4, 2), round(L, 2), round(L + 1, 2), round(2 * L, 2),
                 round(min(100 * L, lim.max / 4), 0))


def _underflow_params(lim: Limits) -> tuple[float, ...]:
    U, N = lim.underflow, lim.normal
    return _grid(0.0, round(0.5 * N, 2), round(N, 2), round(U, 2), round(U + 2, 2), round(2 * U, 2),
                 round(min(100 * U, lim.max / 4), 0))


def _far_params(lim: Limits) -> tuple[float, ...]:
    U, N = lim.underflow, lim.normal
    return _grid(1.0, round(0.5 * N, 2), round(N, 2), round(U + 2, 2), round(4 * U, 2))


def _confident_params(lim: Limits) -> tuple[float, ...]:
    # the loss (n-1)e^-d drops below u (and rounds away against 1) once d > ln((n-1)/u): 19 for float32 n=10
    D = -math.log(lim.u)
    return _grid(1.0, round(0.5 * D, 2), round(D + 3, 2), round(2 * D, 2))


def _ties_params(lim: Limits) -> tuple[float, ...]:
    L, U = lim.overflow, lim.underflow
    return _grid(round(0.5 * L, 2), round(2 * L, 2), round(lim.max / 2, 0), lim.max, round(-2 * U, 2), -lim.max)


@dataclass(frozen=True)
class Family:
    name: str
    description: str  # what it shows; docs/stability.md says which formulation avoids it
    generator: Callable[..., Batch]
    params: Callable[[Limits], tuple[float, ...]]
    dtypes: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
    long: bool = False  # swept up to the preset's longest rows (131072); others use the preset's lengths
    fixed_n: int | None = None  # the family's row length when it has only one (ce_1e8: 2)

    def make(self, dtype: torch.dtype, param: float, n: int, rows: int, seed: int) -> Batch:
        # one stream per (family, dtype, param, n): adding a family or a length never changes the others
        rng = np.random.default_rng([seed, zlib.crc32(f"{self.name}|{dtype}|{param!r}|{n}|{rows}".encode())])
        return self.generator(rng, dtype, param, rows, n)


_ALL = (
    Family("translation", "z + c with c swept past exp overflow: only a shifted sum survives",
           _translation, _translation_params),
    Family("underflow_shift", "z - c with c swept past exp underflow: naive exps go subnormal, then 0/0",
           _underflow_shift, _underflow_params),
    Family("far_target", "target logit d below the max: -log(p) is +inf once p underflows, unless fused",
           _far_target, _far_params),
    Family("confident_correct", "target d above the rest: the loss log1p((n-1)e^-d) rounds to 0 without log1p",
           _confident_correct, _confident_params),
    Family("wide_rows", "n equal logits, p = 1/n: the sum of n ones overflows float16 or stalls",
           _wide_rows, lambda lim: (0.0,), long=True),
    Family("ties_large", "all logits equal to a large +-c: p = 1/n, but exp(c) is inf or 0",
           _ties_large, _ties_params),
    Family("mask_partial", "a random fraction of -inf entries (attention masks)",
           _mask_partial, lambda lim: (0.5, 0.99)),
    Family("mask_prefix", "a leading run of -inf: seeds a running max with -inf",
           _mask_prefix, lambda lim: (0.5, 0.99)),
    Family("mask_full", "one row entirely -inf (reference nan) beside ordinary rows",
           _mask_full, lambda lim: (0.0,)),
    Family("mask_fill", "masking by a finite fill; a fully filled row is uniform, or nan once the fill is -inf",
           _mask_fill, lambda lim: (-1e4, -1e9)),
    Family("posinf_entries", "one row holding +inf (reference nan: inf - inf) beside ordinary rows",
           _poison(np.inf), lambda lim: (0.0,)),
    Family("nan_entries", "one row holding nan: it must come out nan, and no other row may",
           _poison(np.nan), lambda lim: (0.0,)),
    Family("ce_1e8", "cross-entropy of [1e8, 1e8] must be log 2 (a PyTorch float32 bug)",
           _ce_1e8, lambda lim: (1e8,), dtypes=("float64", "float32", "bfloat16"), fixed_n=2),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _ALL}
