"""Side probe: does `softmax-bench compare` stay quiet between identical runs and catch a real slowdown?

    .venv/bin/python -m bench.compare_probe                  # quick preset; torch, logsumexp, naive, slowed
    .venv/bin/python -m bench.compare_probe --variant torch --variant slowed --keep results/probe

It makes a BASE throughput run and an identical NEW run, then NEW runs where the `slowed` variant (torch's
softmax / cross-entropy done SLOWDOWN times over, a fraction as a slice of the rows: the same code as the
misbehaving test plugin) does its work 1.5x and 3x, each sweep in its own process as CI would run it. It
then compares every NEW with BASE through bench.compare and prints the false "slower" points between the
identical runs (target 0) and how many of `slowed`'s points each planted slowdown was caught at (target:
all). Several minutes on a 2-core CPU; other jobs on the machine are part of what it measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SLOWED = "slowed"
DEFAULT_VARIANTS = ("torch", "logsumexp", "naive", SLOWED)


def slowed_variant(factor: float):  # noqa: ANN201 - softmax_impls.Variant, imported lazily
    """torch's variant done `factor` times over: whole repeats, then a fraction as a slice of the rows."""
    import softmax_impls

    base = softmax_impls.get("torch")

    def repeat(fn):  # noqa: ANN001, ANN202
        def slowed(x: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            whole, part = int(factor), factor - int(factor)
            out = fn(x, *args, **kwargs)
            for _ in range(whole - 1):
                out = fn(x, *args, **kwargs)
            if part > 0:
                rows = max(1, int(x.shape[0] * part))
                fn(x[:rows], *(a[:rows] if isinstance(a, torch.Tensor) and a.dim() == 1 else a for a in args),
                   **kwargs)
            return out
        return slowed

    return dataclasses.replace(base, name=SLOWED, summary=f"torch done {factor} times over",
                               softmax=repeat(base.softmax), cross_entropy=repeat(base.cross_entropy))


def sweep(root: Path, variants: list[str], slowdown: float, preset: str) -> Path:
    """One throughput run of `variants` (SLOWED built with `slowdown`) into a new folder under `root`."""
    import softmax_impls
    from bench.presets import THROUGHPUT_PRESETS
    from bench.results import Run
    from bench.throughput import throughput_into

    chosen = [slowed_variant(slowdown) if name == SLOWED else softmax_impls.get(name) for name in variants]
    run = Run.create(root, sys.argv, {"probe_slowdown": slowdown})
    throughput_into(run, chosen, torch.device("cpu"), THROUGHPUT_PRESETS[preset], summary=False)
    return run.path


def sweep_in_child(root: Path, variants: list[str], slowdown: float, preset: str) -> Path:
    """`sweep` in a fresh process: a CI job's runs never share a process, its heap or its warm caches."""
    argv = [sys.executable, "-m", "bench.compare_probe", "--sweep", str(root), "--slowdown", str(slowdown),
            "--preset", preset, *(f"--variant={v}" for v in variants)]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", help=f"variants to sweep (default: {DEFAULT_VARIANTS})")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--keep", metavar="DIR", help="write the runs under DIR and keep them")
    parser.add_argument("--sweep", metavar="ROOT", help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--slowdown", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = list(dict.fromkeys(args.variant or DEFAULT_VARIANTS))
    if args.sweep:
        print(sweep(Path(args.sweep), variants, args.slowdown, args.preset))
        return 0
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="compare-probe-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = {}
    for label, factor in (("base", 1.0), ("same", 1.0), ("1.5x", 1.5), ("3x", 3.0)):
        runs[label] = sweep_in_child(root, variants, factor, args.preset)
        print(f"{label}: {runs[label]}", file=sys.stderr, flush=True)
    print(runs)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
