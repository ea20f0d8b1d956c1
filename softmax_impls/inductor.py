"""torch.compile for the variants that use it (compiled, narrow): whether it works here, and one compiled
function per (function, key) so that no two callers share dynamo's cache.

Not a variant: a helper module, like triton_kernels.

    >>> from softmax_impls import inductor
    >>> inductor.unavailable(torch.device("cpu"))       # None when torch.compile works on CPU
    >>> inductor.compiled(fn, dynamic=True, key=(torch.float32,))(x)
"""

from __future__ import annotations

import functools
import shutil
import types
from collections.abc import Callable, Hashable

import torch


@functools.cache
def compiled(fn: Callable[..., object], *, dynamic: bool | None, key: Hashable) -> Callable[..., object]:
    """torch.compile(fn), cached per (fn, dynamic, key).

    Dynamo keeps its cache (and its recompile limit, 8) on the code object, so every caller of one function
    would share one budget: a sweep over four dtypes, or over row lengths, would exhaust it and dynamo would
    silently fall back to eager. A fresh copy of the code object per key gives each key its own cache.
    """
    name = f"{fn.__name__}_{'_'.join(map(str, key)) if isinstance(key, tuple) else key}"
    fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, name, fn.__defaults__, fn.__closure__)
    return torch.compile(fresh, dynamic=dynamic, fullgraph=True)


@functools.cache
def _probe(device_type: str) -> str | None:
    """Compile and run a tiny softmax once per device type; None when that works, else the reason."""
    if device_type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None \
            and shutil.which("clang++") is None:
        return "torch.compile needs a C++ compiler (g++ or clang++) for Inductor's CPU backend; none on PATH"
    if device_type == "cuda":
        try:
            import triton  # noqa: F401  (Inductor's CUDA backend generates Triton)
        except ImportError:
            return "torch.compile on CUDA needs the triton package, which is not installed"
    try:
        probe = torch.compile(lambda t: torch.softmax(t, -1) * 1.0, dynamic=False, fullgraph=True)
        out = probe(torch.zeros(2, 3, device=device_type))
        if not torch.allclose(out.cpu(), torch.full((2, 3), 1 / 3)):
            return "torch.compile produced a wrong softmax in the probe"
    except Exception as exc:  # any backend failure means compiled code cannot run here
        return f"torch.compile failed on {device_type}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return None


def unavailable(device: torch.device | str) -> str | None:
    """None when torch.compile works on this device type, else why not (probed once per device type)."""
    return _probe(torch.device(device).type)
