"""The host: devices and dtypes (the one dtype vocabulary: DTYPES, parse_dtype, dtype_name), sync, the
machine's description for run.json, and torch's CPU thread count (:func:`torch_threads`, the one place it is
set and restored; :func:`choose_threads` picks it from the cores other jobs leave free)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench import UserError

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ALIASES = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32",
            "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[key]


def parse_device(spec: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N', checked against what this machine has."""
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}; use cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        if device.index is not None:  # torch accepts 'cpu:1' but means the one CPU device: refuse the illusion
            raise UserError(f"device {spec!r}: the CPU is one device in torch, without an index; use --device "
                            f"cpu (it runs on every core the study's thread setting allows).")
        return device
    if device.type != "cuda":
        raise UserError(f"device {spec!r} is not supported; softmax-bench runs on cpu and cuda[:N].")
    if not torch.cuda.is_available():
        raise UserError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu.")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UserError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device("cuda", index)


def supported_dtypes(device: torch.device) -> list[torch.dtype]:
    """The float dtypes this device computes softmax in (bfloat16 needs sm80+ on CUDA to be worth timing)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return [torch.float64, torch.float32, torch.float16]
    return list(DTYPES.values())


def dtype_skip_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in supported_dtypes(device):
        return f"{dtype_name(dtype)} is not supported on {device}"
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", None)
    except Exception:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to trust or compare a run: hardware, versions, code revision."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("softmax-bench")
    except PackageNotFoundError:
        pkg = None
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "softmax_bench": pkg,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "native_isa": _native_isa(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({
                "index": i,
                "name": props.name,
                "memory_bytes": props.total_memory,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "l2_bytes": getattr(props, "L2_cache_size", None),
            })
        info["cuda_driver"] = _nvidia_driver()
    return info


def _native_isa() -> str | None:
    """The ISA path the `native` variant's C kernels run on (avx512 or avx2, and why), None without it."""
    try:
        from softmax_impls.native import isa_description
    except Exception:
        return None
    return isa_description()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """torch's intra-op CPU thread count set to `n` for the body (None: left as it is), then restored;
    yields the count in force."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def busy_cores_of_other_jobs(window_s: float = 0.5) -> float | None:
    """How many cores other processes keep busy, measured now from /proc/stat over `window_s`.

    This process sleeps through the window, so only other jobs (and the hypervisor's steal time) count.
    The load average cannot tell them apart: after `softmax-bench all` trained for two minutes, its own
    past load made the sweep think another job held a core. None where /proc/stat is unreadable.
    """
    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])  # busy (user..steal), total; guest is inside user

    first = sample()
    if first is None:
        return None
    time.sleep(window_s)
    second = sample()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def choose_threads(device: torch.device, requested: int | None = None,
                   busy: Callable[[], float | None] = busy_cores_of_other_jobs) -> tuple[int, str]:
    """(torch CPU threads for the sweep, why). `requested` wins; else one per core that other jobs leave free.

    With every core in use by torch's OpenMP threads, a parallel region waits for whichever thread the OS
    descheduled, and a short call then waits whole scheduler ticks (the reference report shows it). So the
    cores other jobs keep busy right now (:func:`busy_cores_of_other_jobs`; the load average where that
    cannot be read) decide.
    """
    default = torch.get_num_threads()
    if requested is not None:
        return requested, "asked for with --threads"
    if device.type != "cpu":
        return default, "torch's default"
    cores = os.cpu_count() or 1
    held, source = busy(), "measured over 0.5 s"
    if held is None:
        try:
            held, source = os.getloadavg()[0], "load average"
        except OSError:
            return default, "torch's default (neither /proc/stat nor a load average on this system)"
    free = max(1, min(default, int(cores - held + 0.5)))
    if free < default:
        return free, (f"other jobs keep {held:.1f} of {cores} cores busy ({source}), so {free} instead of "
                      f"torch's {default} (--threads N to override)")
    return default, f"torch's default, one per core (other jobs: {held:.1f} cores busy, {source})"
