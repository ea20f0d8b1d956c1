"""How the harness protects a study from the variant it measures: a variant is untrusted code.

- :func:`contained`: which exceptions from a variant become a row (everything but Ctrl-C: a stray
  ``sys.exit`` or a library's argparse error raises SystemExit, which must not end a sweep with exit 0);
- :func:`deadline`: a per-unit time limit (SIGALRM), so a variant that hangs costs one `timeout` row;
- :class:`InputGuard`: the harness keeps a pristine copy of every input it hands over and checks it after
  each call, so a variant that writes into its input is caught instead of corrupting what follows;
- the memory ceiling (an allocation past a share of RAM is an `oom` row, never the OOM killer) is in
  bench.measure.memory.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping

import torch


class UnitTimeout(BaseException):
    """A unit ran past its time limit. A BaseException, so a variant's own `except Exception` cannot
    swallow it."""


def contained(exc: BaseException) -> bool:
    """Whether an exception raised by a variant becomes a row (True) or must stop the study (Ctrl-C)."""
    return not isinstance(exc, KeyboardInterrupt | GeneratorExit)


@contextlib.contextmanager
def deadline(seconds: float | None, what: str = "unit") -> Iterator[None]:
    """Raise UnitTimeout in the main thread once `seconds` have passed (None or <= 0: no limit).

    SIGALRM interrupts Python code and interruptible waits (time.sleep, most blocking I/O); a C kernel that
    never returns to Python is interrupted when it does. Off the main thread there is no limit.
    """
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise UnitTimeout(f"the {what} ran past its time limit of {seconds:g} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class InputGuard:
    """Pristine copies of the tensors handed to a variant, to prove after a call that it left them alone."""

    def __init__(self, tensors: Mapping[str, torch.Tensor | None]):
        self.pristine = {name: t.detach().clone() for name, t in tensors.items() if t is not None}
        self.live = {name: t for name, t in tensors.items() if t is not None}

    def changed(self) -> str | None:
        """None when every input still equals its pristine copy; else which one the variant wrote into."""
        for name, t in self.live.items():
            if not _same_bits(t.detach(), self.pristine[name]):
                return (f"the variant wrote into its input `{name}` (it must not modify its arguments; its "
                        f"result is not credited)")
        return None


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality: a NaN input the variant left alone is unchanged (torch.equal says NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() in _BITS:
        bits = _BITS[a.element_size()]
        return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    return torch.equal(a, b)
