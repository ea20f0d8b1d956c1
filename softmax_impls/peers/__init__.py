"""Public kernels people choose between, wrapped as variants: onnxruntime, jax, liger, quack.

Each peer is one module registered through the entry-point group ``softmax_bench.variants`` like every other
variant. Its library is imported lazily (by its ``unavailable(device)`` hook or at its first call), so a missing
or broken library makes the peer `skipped` with the reason, never a broken plugin, and importing softmax_impls
stays as cheap as before. The libraries come with ``pip install -e '.[peers]'`` (``make setup`` does it);
quack-kernels needs CUDA (sm90+) and comes with the ``peers-cuda`` extra. docs/peers.md holds, for every
family and dtype where a peer breaks, the smallest reproducer with that library alone.

    >>> import softmax_impls, torch
    >>> v = softmax_impls.get("onnxruntime")
    >>> v.unavailable(torch.device("cpu"))     # None, or why not ("onnxruntime is not installed: ...")
    >>> v.softmax(torch.randn(4, 10))
"""

from __future__ import annotations

import functools
from collections.abc import Callable

EXTRA = "pip install -e '.[peers]'"


class Library:
    """A lazily imported library: ``get()`` returns what `load` builds from it (raising what the import raised),
    ``reason()`` None or the one-line reason it cannot be used. The outcome is cached, the failure too (an
    import that failed once is not retried on every call); ``reset()`` forgets it (tests)."""

    def __init__(self, label: str, load: Callable[[], object], install: str = EXTRA) -> None:
        self.label, self._load, self.install = label, load, install

    @functools.cached_property
    def _outcome(self) -> tuple[object | None, str | None]:
        try:
            return self._load(), None
        except ImportError as exc:
            return None, f"{self.label} is not installed ({self.install}): {type(exc).__name__}: {exc}"
        except Exception as exc:  # a library that is there but cannot load (missing system library...)
            return None, f"{self.label} failed to import: {type(exc).__name__}: {exc}"

    def reason(self) -> str | None:
        return self._outcome[1]

    def get(self) -> object:
        lib, reason = self._outcome
        if reason is not None:
            raise RuntimeError(reason)
        return lib

    def reset(self) -> None:
        self.__dict__.pop("_outcome", None)
