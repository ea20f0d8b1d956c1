"""The variant interface and its registry.

A variant is one softmax / cross-entropy implementation. Each lives in its own module and is
registered through the entry-point group ``softmax_bench.variants``; the entry point names a module
attribute holding a :class:`Variant`. A third-party package joins every study by declaring

    [project.entry-points."softmax_bench.variants"]
    mine = "my_package.my_module:variant"

in its own pyproject.toml, without touching this repository.

    >>> import softmax_impls
    >>> softmax_impls.names()          # registered, importable variants
    >>> v = softmax_impls.get("logsumexp")
    >>> v.softmax(x); v.cross_entropy(logits, target)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import torch

from softmax_impls.contract import Contract

ENTRY_POINT_GROUP = "softmax_bench.variants"

Tensor = torch.Tensor
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


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


@functools.cache
def _load() -> tuple[dict[str, Variant], dict[str, BrokenPlugin]]:
    loaded: dict[str, Variant] = {}
    broken: dict[str, BrokenPlugin] = {}
    for ep in _entry_points():
        try:
            obj = ep.load()
            variant = obj() if callable(obj) and not isinstance(obj, Variant) else obj
            if not isinstance(variant, Variant):
                raise TypeError(f"entry point gives {type(variant).__name__}, not softmax_impls.Variant")
            if variant.name != ep.name:
                raise ValueError(f"variant calls itself {variant.name!r} but is registered as {ep.name!r}")
        except Exception as exc:  # a broken plugin must not take the others down
            broken[ep.name] = BrokenPlugin(ep.name, ep.value, f"{type(exc).__name__}: {exc}")
            continue
        loaded[ep.name] = variant
    return loaded, broken


def reload() -> None:
    """Forget the cached registry (after installing a plugin in the same process, and in tests)."""
    _load.cache_clear()


def names() -> list[str]:
    """Registered variants that imported cleanly, sorted."""
    return sorted(_load()[0])


def broken() -> dict[str, BrokenPlugin]:
    """Registered plugins that failed to import, with their error."""
    return dict(_load()[1])


def get(name: str) -> Variant:
    """The variant registered as `name`; UnknownVariantError lists the registered names otherwise."""
    loaded, failed = _load()
    if name in loaded:
        return loaded[name]
    if name in failed:
        raise UnknownVariantError(f"variant {name!r} is registered but failed to import: {failed[name].error}")
    raise UnknownVariantError(
        f"unknown variant {name!r}; registered variants: {', '.join(sorted(loaded)) or '(none)'}"
    )


def all_variants() -> list[Variant]:
    return [get(n) for n in names()]


def along_rows(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int = -1) -> Tensor:
    """fn applied along `dim`: that dim moved last, the others flattened into rows [R, N], and fn's result
    (the same shape as its input) put back in x's layout. Every row-wise kernel of a variant runs through it."""
    moved = x.movedim(dim, -1)
    return fn(moved.reshape(-1, moved.shape[-1])).reshape(moved.shape).movedim(-1, dim)
