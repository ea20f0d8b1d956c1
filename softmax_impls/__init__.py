"""The variant interface and its registry.

A variant is one softmax / cross-entropy implementation. Each lives in its own module and is
registered through the entry-point group ``softmax_bench.variants``; the entry point names a module
attribute holding a :class:`Variant`. A third-party package joins every study by declaring

    [project.entry-points."softmax_bench.variants"]
    mine = "my_package.my_module:variant"

in its own pyproject.toml, without touching this repository. A name registered twice (two targets) is a
conflict: :func:`conflicts` reports it, and neither registration is used until one is uninstalled or renamed,
so installing a package can never silently swap the code behind a name. The baseline ``torch`` is the
exception: softmax-bench's own registration always wins and the other is reported as rejected.

    >>> import softmax_impls
    >>> softmax_impls.names()          # registered, importable variants
    >>> v = softmax_impls.get("logsumexp")
    >>> v.softmax(x); v.cross_entropy(logits, target)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import torch
from torch import Tensor

from softmax_impls.contract import Contract

ENTRY_POINT_GROUP = "softmax_bench.variants"
# The distribution whose own registrations of PROTECTED names no plugin can replace.
OWN_DISTRIBUTION = "softmax-bench"
# The builtin every variant is measured against (bench.store.rows.BASELINE): a plugin registering it would
# silently change every speedup and reference in the study.
PROTECTED = frozenset({"torch"})

ALL_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Variant:
    """One implementation behind the common interface.

    ``softmax(x, dim=-1)`` returns probabilities in x's dtype; ``cross_entropy(logits, target)`` takes
    logits [N, C] of any float dtype and int64 targets [N] and returns the per-sample loss [N],
    differentiable through autograd. ``log_softmax`` is optional.
    """

    name: str
    summary: str
    softmax: Callable[..., Tensor]
    cross_entropy: Callable[[Tensor, Tensor], Tensor]
    log_softmax: Callable[..., Tensor] | None = None
    # Device types ("cpu", "cuda") the variant runs on; the harness records others as `skipped`.
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    # The stability behaviour the variant promises; checked by tests/ and `softmax-bench check`.
    contract: Contract = field(default_factory=Contract)
    # Returns None when usable on `device`, else the reason it is not (missing optional dependency...).
    unavailable: Callable[[torch.device], str | None] = lambda device: None

    def skip_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this variant cannot run on (device, dtype), or None when it can."""
        if device.type not in self.devices:
            return f"{self.name} supports devices {', '.join(self.devices)}, not {device.type}"
        if dtype not in self.dtypes:
            return f"{self.name} does not support {str(dtype).removeprefix('torch.')}"
        return self.unavailable(device)


class UnknownVariantError(KeyError):
    """Raised by :func:`get` for a name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    target: str
    error: str


@dataclass(frozen=True)
class Registration:
    """One entry point of the group: its target (``module:attribute``) and the distribution declaring it."""

    value: str
    dist: str  # "name version", e.g. "softmax-bench 0.1.0"

    @property
    def own(self) -> bool:
        """Declared by softmax-bench itself."""
        return _normalise(self.dist.split(" ")[0]) == OWN_DISTRIBUTION


@dataclass(frozen=True)
class Conflict:
    """A name registered with more than one target. `kept` is the registration used (softmax-bench's own, for
    a PROTECTED name), or None: then no registration of the name is used until the conflict is resolved."""

    name: str
    registrations: tuple[Registration, ...]
    kept: Registration | None = None

    def describe(self) -> str:
        others = [r for r in self.registrations if r != self.kept]
        listed = " and ".join(f"{r.value} (distribution {r.dist})" for r in others)
        if self.kept is not None:
            return (f"the registration of {self.name!r} by {listed} is rejected: {self.name!r} is the baseline "
                    f"every variant is measured against, so softmax-bench's own ({self.kept.value}) is used. "
                    f"Rename the plugin's entry point to register it under another name.")
        return (f"variant {self.name!r} is registered twice, by {listed}; neither is used until one of them "
                f"is uninstalled or its entry point renamed.")


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _registration(ep: EntryPoint) -> Registration:
    dist = getattr(ep, "dist", None)
    label = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
    return Registration(ep.value, label)


def _entry_points() -> dict[str, list[tuple[EntryPoint, Registration]]]:
    """Entry points by name, each distinct target once: the same distribution may be listed twice (an
    editable install and a build folder), and an identical (name, target) pair is no conflict."""
    by_name: dict[str, list[tuple[EntryPoint, Registration]]] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        seen = by_name.setdefault(ep.name, [])
        if all(other.value != ep.value for other, _ in seen):
            seen.append((ep, _registration(ep)))
    return by_name


def _chosen(name: str, found: list[tuple[EntryPoint, Registration]]) -> tuple[EntryPoint | None, Conflict | None]:
    """The entry point to load for `name` (None: none, a conflict) and the conflict to report (if any)."""
    if len(found) == 1:
        return found[0][0], None
    registrations = tuple(reg for _, reg in found)
    own = [(ep, reg) for ep, reg in found if reg.own]
    if name in PROTECTED and len(own) == 1:
        return own[0][0], Conflict(name, registrations, kept=own[0][1])
    return None, Conflict(name, registrations)


def _load_one(ep: EntryPoint) -> Variant:
    obj = ep.load()
    variant = obj() if callable(obj) and not isinstance(obj, Variant) else obj
    if not isinstance(variant, Variant):
        raise TypeError(f"entry point gives {type(variant).__name__}, not softmax_impls.Variant")
    if variant.name != ep.name:
        raise ValueError(f"variant calls itself {variant.name!r} but is registered as {ep.name!r}")
    return variant


@functools.cache
def _load() -> tuple[dict[str, Variant], dict[str, BrokenPlugin], dict[str, Conflict]]:
    loaded: dict[str, Variant] = {}
    broken: dict[str, BrokenPlugin] = {}
    conflicts: dict[str, Conflict] = {}
    for name, found in _entry_points().items():
        ep, conflict = _chosen(name, found)
        if conflict is not None:
            conflicts[name] = conflict
        if ep is None:
            continue
        try:
            loaded[name] = _load_one(ep)
        except Exception as exc:  # a broken plugin must not take the others down
            broken[name] = BrokenPlugin(name, ep.value, f"{type(exc).__name__}: {exc}")
    return loaded, broken, conflicts


def reload() -> None:
    """Forget the cached registry (after installing a plugin in the same process, and in tests)."""
    _load.cache_clear()


def names() -> list[str]:
    """Registered variants that imported cleanly, sorted."""
    return sorted(_load()[0])


def broken() -> dict[str, BrokenPlugin]:
    """Registered plugins that failed to import, with their error."""
    return dict(_load()[1])


def conflicts() -> dict[str, Conflict]:
    """Names registered with more than one target: unused until resolved, or (PROTECTED) the others rejected."""
    return dict(_load()[2])


def get(name: str) -> Variant:
    """The variant registered as `name`; UnknownVariantError lists the registered names otherwise."""
    loaded, failed, conflicting = _load()
    if name in loaded:
        return loaded[name]
    if name in conflicting:
        raise UnknownVariantError(conflicting[name].describe())
    if name in failed:
        raise UnknownVariantError(f"variant {name!r} is registered but failed to import: {failed[name].error}")
    raise UnknownVariantError(
        f"unknown variant {name!r}; registered variants: {', '.join(sorted(loaded)) or '(none)'}"
    )


def all_variants() -> list[Variant]:
    return [get(n) for n in names()]


def shift_of(row_max: Tensor) -> Tensor:
    """The shift a row is exponentiated against: its max, except 0 for a fully masked row (max -inf), which
    must not become -inf - -inf = nan before the sum is even formed. Only -inf is replaced: a +inf or nan max
    is kept, so such a row comes out nan everywhere, as the reference says. Every variant's guard is this."""
    return torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a row is reduced in: half types in float32 (as torch's own kernels do), others as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def along_rows(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int = -1) -> Tensor:
    """fn applied along `dim`: that dim moved last, the others flattened into rows [R, N], and fn's result
    (the same shape as its input) put back in x's layout. Every row-wise kernel of a variant runs through it."""
    moved = x.movedim(dim, -1)
    return fn(moved.reshape(-1, moved.shape[-1])).reshape(moved.shape).movedim(-1, dim)
