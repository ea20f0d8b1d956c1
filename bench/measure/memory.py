"""Memory: the peak a call allocates, glibc's freed-memory policy, and the ceiling that turns an allocation
past a share of the machine's memory into an `oom` row instead of the OOM killer."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# --- peak memory ---------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33 (no mallinfo2)
        return None


def cpu_memory_unsupported() -> str | None:
    """None when CPU peak memory can be measured here, else why not (the row says so)."""
    if _libc() is None:
        return ("CPU peak memory is read from glibc's mallinfo2 (glibc >= 2.33), which this C library "
                "does not provide")
    return None


WATCHER_MARGIN = 1 << 20  # bytes the malloc watcher must see beyond the op observer before it is believed


def _malloc_in_use() -> int:
    info = _libc().mallinfo2()
    return int(info.uordblks + info.hblkhd)  # bytes in use in the heap arenas + in mmapped blocks


def _sampled_peak(fn: Callable[[], object], min_s: float) -> int:
    """The most bytes malloc held while `fn` ran (called again until `min_s` passed), beyond
    what it held before: a second thread reads mallinfo2 in a loop, while torch's kernels run without the
    GIL. It watches the process, not the call: it sees buffers of compiled or hand-written kernels too, which
    no op-level hook does, and nothing in the variant has to cooperate."""
    base = _malloc_in_use()
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        high = base
        while not done.is_set():
            high = max(high, _malloc_in_use())
        peak[0] = high

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so the watcher samples between Python steps too
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline, calls = time.perf_counter() + min_s, 0
        while calls < 1 or time.perf_counter() < deadline:
            out = fn()
            peak[0] = max(peak[0], _malloc_in_use())  # the output, still alive
            del out
            calls += 1
    finally:
        done.set()
        watcher.join()
        sys.setswitchinterval(switch)
    return max(0, peak[0] - base)


class _OpPeak(TorchDispatchMode):
    """Reads malloc's bytes-in-use after every aten op the call dispatches and keeps the maximum: exact for
    eager code. Compiled kernels allocate below the dispatcher, where it sees nothing (and dynamo may refuse
    to run under it): those are watched from outside (:func:`_sampled_peak`)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = _malloc_in_use()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _malloc_in_use() - self.base)
        return out


def _op_peak(fn: Callable[[], object], passes: int) -> int:
    """The smallest peak of `passes` passes under :class:`_OpPeak` (the first also counts the few KB of
    Python objects the mode creates once per op: a second pass removes them from a small call's figure)."""
    peaks = []
    for _ in range(passes):
        with _OpPeak() as tracker:
            out = fn()
        del out
        peaks.append(tracker.peak)
    return min(peaks)


def peak_memory(fn: Callable[[], object], device: torch.device, min_s: float = 0.05, peaks_once: bool = False
                ) -> int:
    """Bytes the call allocates beyond what existed before it (its inputs), at its peak.

    CUDA: torch.cuda.max_memory_allocated after a reset. CPU: glibc's bytes in use, read after every aten op
    (exact for eager code), and sampled from a second thread while the call repeats for `min_s` (which sees
    compiled kernels' buffers too, but can miss a very short-lived temporary); the larger of the two. Either
    way the variant needs no hook. Call it outside the timed region. `peaks_once`: one observer pass (for
    calls long enough that a few KB do not matter, and each extra call costs).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    reason = cpu_memory_unsupported()
    if reason:
        raise RuntimeError(reason)
    # Both are lower bounds of the true peak: the op observer misses what compiled kernels allocate below the
    # dispatcher, the watcher can miss a short-lived temporary; the larger is the better one.
    try:
        by_ops = _op_peak(fn, 1 if peaks_once else 2)
    except Exception:  # noqa: BLE001 - dynamo may refuse to trace under a dispatch mode: the watcher alone
        by_ops = 0
    sampled = _sampled_peak(fn, min_s)
    # The watcher sees the whole process, so another thread's allocation can inflate its figure. Where the
    # observer saw the call's buffers, its exact figure stands unless the watcher saw clearly more (buffers of
    # compiled or hand-written kernels, below the dispatcher): a quarter more and at least WATCHER_MARGIN.
    if by_ops and sampled <= by_ops * 1.25 + WATCHER_MARGIN:
        return by_ops
    return max(by_ops, sampled)


def keep_freed_memory() -> str:
    """Make glibc keep freed memory in the process instead of handing big blocks back to the OS.

    By default glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps them
    on free, so every large output page-faults on first touch: a 64 MB softmax output costs ~4x its
    kernel time in page faults on this machine. CUDA's caching allocator never pays that, and neither does
    a training loop with a caching CPU allocator (jemalloc, tcmalloc), so the sweep measures kernels, not
    the OS, by default. Returns a description of the allocator setting for run.json.
    """
    libc = _libc()
    if libc is None:
        return "system allocator (not glibc: left as is)"
    m_trim_threshold, m_mmap_max = -1, -4  # from malloc.h
    ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "glibc, freed memory kept (mmap off, trim off)" if ok else "glibc defaults (mallopt refused)"


def release_kept_memory() -> None:
    """Give the freed memory glibc keeps (keep_freed_memory) back to the OS: before a unit that would not fit
    otherwise, so what earlier units freed never counts against the next one."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _meminfo_bytes(key: str) -> int | None:
    """One /proc/meminfo field (e.g. "MemTotal", "MemAvailable") in bytes; None where unreadable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _statm_bytes(field: int) -> int | None:
    """One /proc/self/statm field in bytes (0: virtual size, 1: resident); None where unreadable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[field]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def resident_bytes() -> int | None:
    """This process's resident memory now (RSS); None where unreadable."""
    return _statm_bytes(1)


def mem_available_bytes() -> int | None:
    """What the kernel says is available to new allocations (MemAvailable); None where unreadable."""
    return _meminfo_bytes("MemAvailable")


@contextlib.contextmanager
def memory_ceiling(fraction: float) -> Iterator[str]:
    """Cap the address space this process may *add* at `fraction` of the machine's RAM, minus what it
    already holds resident; yields a sentence saying what was set (recorded in run.json).

    Beyond it, malloc/mmap fail and torch raises "can't allocate memory", which the harness records as an
    `oom` row; without it, Linux overcommits and the OOM killer ends the whole process (seen: a plugin
    allocating 4 GiB per call drove this 24 GB machine's sweep to 17.4 GB). The limit applies to virtual
    memory, so it is set above what is mapped now (torch maps several GB it never touches).
    """
    total, virtual, resident = _meminfo_bytes("MemTotal"), _statm_bytes(0), resident_bytes()
    if total is None or virtual is None or resident is None:
        yield "no memory ceiling (/proc/meminfo or /proc/self/statm unreadable)"
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    room = max(int(fraction * total) - resident, 0)
    limit = virtual + room
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        yield f"no memory ceiling ({exc})"
        return
    try:
        yield (f"address space capped at {limit / 2**30:.1f} GiB: {fraction:.0%} of {total / 2**30:.1f} GiB RAM "
               f"may be in use at once, beyond that an allocation fails and the unit is an `oom` row")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def memory_limit(device: torch.device, fraction: float) -> Iterator[str]:
    """Keep the process under `fraction` of the device's memory, so an allocation past it is an `oom` row
    and never a killed process; yields what was set (for run.json)."""
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        yield f"torch.cuda.set_per_process_memory_fraction({fraction})"
        return
    with memory_ceiling(fraction) as what:
        yield what
