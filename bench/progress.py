"""Progress display: a tqdm bar on a terminal, plain log lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

try:
    from tqdm import tqdm
except ImportError:  # a machine with its own torch and no network may lack tqdm: plain lines, no bar

    class tqdm:  # noqa: N801 - stands in for tqdm's class, with the few methods used here
        def __init__(self, iterable: Iterable[T] | None = None, **_: object) -> None:
            self.iterable = iterable if iterable is not None else ()
            self.n = 0

        def set_postfix(self, *_: object, **__: object) -> None:
            pass

        def __iter__(self) -> Iterator[T]:
            return iter(self.iterable)

        def set_postfix_str(self, *_: object, **__: object) -> None:
            pass

        def update(self, n: int = 1) -> None:
            self.n += n

        def close(self) -> None:
            pass

        @staticmethod
        def write(message: str, file: object = None) -> None:
            print(message, file=file or sys.stderr, flush=True)


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = True) -> tqdm:
    """A progress bar over `iterable`; silent (disable=True) when stderr is not a terminal.

    Callers that also want plain log lines off a terminal use :func:`log`.
    """
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=not interactive(), dynamic_ncols=True)


def log(message: str) -> None:
    """One line on stderr that does not tear an active progress bar."""
    tqdm.write(message, file=sys.stderr)


def each(iterable: Iterable[T], desc: str, total: int | None = None, describe=str,
         log_lines: int | None = None) -> Iterator[T]:
    """Iterate with a bar on a terminal, or log lines otherwise; `describe(item)` names it. Off a terminal,
    one line per item, or with `log_lines` about that many in all (the first, every n-th and the last)."""
    items = list(iterable) if total is None else iterable
    n = len(items) if total is None else total
    step = 1 if log_lines is None else max(1, n // log_lines)
    progress = bar(items, desc=desc, total=n)
    for i, item in enumerate(progress, 1):
        if interactive():
            progress.set_postfix_str(describe(item), refresh=True)  # the item now being measured, not the last
        elif step == 1 or i == 1 or i % step == 0 or i == n:
            log(f"[{desc} {i}/{n}] {describe(item)}")
        yield item
