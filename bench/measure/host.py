"""Devices and dtypes: parse what the user asked for, check it is there, sync, and describe the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
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


def available_devices() -> list[torch.device]:
    devs = [torch.device("cpu")]
    devs += [torch.device("cuda", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return devs


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


def device_label(device: torch.device) -> str:
    """Human name of the device: the CPU model or the GPU name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


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
