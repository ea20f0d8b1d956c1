"""Side probe: does `softmax-bench compare` stay quiet between identical runs and catch a real slowdown?

    .venv/bin/python -m bench.tools.compare_probe                       # ~5 min: 8 quick sweeps, then the figures
    .venv/bin/python -m bench.tools.compare_probe --keep /tmp/probe      # keep the run folders ...
    .venv/bin/python -m bench.tools.compare_probe --reuse /tmp/probe     # ... and compare them again, measuring nothing

It makes --runs (2) BASE throughput runs and as many identical NEW runs, then NEW runs where the `slowed`
variant (torch's softmax / cross-entropy done SLOWDOWN times over, a fraction as a slice of the rows: the
misbehaving test plugin's code) does its work 1.5x and 3x; each sweep is a fresh process, as CI runs it,
with the same pinned torch threads. It then compares through bench.report.compare and prints, for one run a side
(each BASE with each NEW) and for the runs of a side pooled (--base/--new): the false "slower" points
(target 0) and how many of `slowed`'s points each planted slowdown was caught at (target: all); then the
false "slower" points over every ordered pair of the unchanged runs. Other jobs on the machine are part of
what it measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from softmax_impls import Variant

SLOWED = "slowed"
DEFAULT_VARIANTS = ("torch", "logsumexp", "naive", SLOWED)
KINDS = {"base": 1.0, "same": 1.0, "1.5x": 1.5, "3x": 3.0}  # label -> SLOWDOWN


def slowed_variant(factor: float) -> Variant:
    """torch's variant done `factor` times over: whole repeats, then a fraction as a slice of the rows."""
    import softmax_impls

    base = softmax_impls.get("torch")
    return dataclasses.replace(base, name=SLOWED, summary=f"torch done {factor} times over",
                               softmax=repeated(base.softmax, lambda: factor),
                               cross_entropy=repeated(base.cross_entropy, lambda: factor))


def repeated(fn: Callable[..., torch.Tensor], factor: Callable[[], float]) -> Callable[..., torch.Tensor]:
    """fn done factor() times over (read at each call): whole repeats, then the fraction as a slice of the
    rows, so the slowdown is real and proportional. Also what the tests' `slowed` plugin does."""
    def slowed(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        f = factor()
        whole, part = int(f), f - int(f)
        out = fn(x, *args, **kwargs)
        for _ in range(whole - 1):
            out = fn(x, *args, **kwargs)
        if part > 0:
            rows = max(1, int(x.shape[0] * part))
            fn(x[:rows], *(a[:rows] if isinstance(a, torch.Tensor) and a.dim() == 1 else a for a in args), **kwargs)
        return out
    return slowed


def sweep(root: Path, variants: list[str], label: str, preset: str, threads: int) -> Path:
    """One throughput run of `variants` (SLOWED as KINDS[label] says) into a new folder under `root`."""
    import softmax_impls
    from bench.store.run import Run
    from bench.studies.throughput.presets import THROUGHPUT_PRESETS
    from bench.studies.throughput.sweep import throughput_into

    chosen = [slowed_variant(KINDS[label]) if name == SLOWED else softmax_impls.get(name) for name in variants]
    run = Run.create(root, sys.argv, {"probe_label": label, "probe_slowdown": KINDS[label]})
    throughput_into(run, chosen, torch.device("cpu"), THROUGHPUT_PRESETS[preset], threads=threads, summary=False)
    return run.path


def sweep_in_child(root: Path, variants: list[str], label: str, preset: str, threads: int) -> Path:
    """`sweep` in a fresh process: a CI job's runs never share a process, its heap or its warm caches."""
    argv = [sys.executable, "-m", "bench.tools.compare_probe", "--sweep", str(root), "--label", label,
            "--preset", preset, "--threads", str(threads), *(f"--variant={v}" for v in variants)]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def tally(base: list[Path], new: list[Path], threshold: float) -> tuple[int, int, int, int, int]:
    """(false 'slower' points outside SLOWED, SLOWED points caught, SLOWED points, unconfirmed warnings,
    other failing points) of compare(base, new)."""
    from bench.report import bundle as T
    from bench.report.compare import compare_throughput, fails

    df = compare_throughput(T.load(base), T.load(new), threshold)
    df = df[df["figure"] == "time µs"]
    mine, slower = df["variant"] == SLOWED, df["verdict"] == "slower"
    other = df["verdict"].map(lambda v: fails(v, False, False)) & ~slower
    return (int((slower & ~mine).sum()), int((slower & mine).sum()), int(mine.sum()),
            int(df["verdict"].str.contains("unconfirmed").sum()), int(other.sum()))


def report(runs: dict[str, list[Path]], threshold: float) -> None:
    """Every BASE with every NEW, one run a side, then the runs of each side pooled; then unchanged pairs."""
    print(f"compare at threshold {threshold:.0%}; false = a 'slower' verdict on unchanged code")
    for label in ("same", "1.5x", "3x"):
        pairs = [([b], [n]) for b in runs["base"] for n in runs[label]]
        if len(runs["base"]) > 1 and len(runs[label]) > 1:
            pairs.append((runs["base"], runs[label]))
        for base, new in pairs:
            false, caught, total, warned, other = tally(base, new, threshold)
            names = f"{'+'.join(p.name[9:15] for p in base)} vs {'+'.join(p.name[9:15] for p in new)}"
            line = f"{label:5s} {len(base)} vs {len(new)} run(s) {names:30s} false slower: {false}"
            if label != "same":
                line += f"; {SLOWED} caught at {caught} of {total} points"
            print(f"{line}; unconfirmed warnings: {warned}; other failures: {other}", flush=True)
    unchanged = runs["base"] + runs["same"]
    counts = [sum(tally([a], [b], threshold)[:2]) for a, b in itertools.permutations(unchanged, 2)]
    print(f"unchanged runs, every ordered pair of {len(unchanged)} (one run a side): false slower points "
          f"{sum(counts)}, in {sum(1 for c in counts if c)} of {len(counts)} comparisons")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.compare_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", help=f"variants to sweep (default: {DEFAULT_VARIANTS})")
    parser.add_argument("--preset", default="quick", help="throughput preset (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each kind (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, the same in every run, as CI must pin them (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.10, help="a fraction (default: %(default)s)")
    parser.add_argument("--keep", metavar="DIR", help="write the runs under DIR and keep them")
    parser.add_argument("--reuse", metavar="DIR", help="compare the runs a --keep DIR holds; measure nothing")
    parser.add_argument("--sweep", metavar="ROOT", help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--label", default="base", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = list(dict.fromkeys(args.variant or DEFAULT_VARIANTS))
    if SLOWED not in variants:
        parser.error(f"the variant list must hold {SLOWED!r}")
    if args.sweep:
        print(sweep(Path(args.sweep), variants, args.label, args.preset, args.threads))
        return 0
    runs: dict[str, list[Path]] = {label: [] for label in KINDS}
    if args.reuse:
        for path in sorted(Path(args.reuse).iterdir()):
            if (path / "run.json").is_file():
                info = json.loads((path / "run.json").read_text())
                runs[info["commands"][0]["presets"]["probe_label"]].append(path)
    else:
        root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="compare-probe-"))
        root.mkdir(parents=True, exist_ok=True)
        for label in KINDS:
            for _ in range(args.runs):
                runs[label].append(sweep_in_child(root, variants, label, args.preset, args.threads))
                print(f"{label}: {runs[label][-1]}", file=sys.stderr, flush=True)
    report(runs, args.threshold)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
