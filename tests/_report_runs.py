"""Small but real run folders for the report and compare tests.

Every number is measured here, on this machine, in a fraction of a second: torch's and the variants'
softmax timed with perf_counter against a same-size copy, stability errors of the real variants against a
float64 reference, overflow thresholds found by bisection, and the chapter's training for one epoch on real
Fashion-MNIST (bench.studies.training). Rows are written with Run.append in the schema the studies use.

A "regression" is made real too: `swap` runs one variant's code under another's name (e.g. the chapter's
naive softmax shipped as `logsumexp`), and `slow` makes a variant do its work eight times (big enough
to stand out of a loaded machine's noise).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import softmax_impls
from bench.store.rows import StabilityRow, ThresholdRow, ThroughputRow
from bench.store.run import Run

SHAPES = ((256, 10), (1024, 1024))
DTYPES_ST = (torch.float32, torch.float16)


def _quantiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median_s": statistics.median(samples), "p20_s": q[1], "p80_s": q[7]}


def _time(fn: Callable[[], object], reps: int = 15) -> dict[str, float]:
    fn()
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _quantiles(samples)


def variants(swap: dict[str, str] | None = None, slow: tuple[str, ...] = ()) -> list[softmax_impls.Variant]:
    """The registered chapter variants; swap={'logsumexp': 'naive'} ships naive's code as logsumexp."""
    out = []
    for name in ("naive", "max_subtracted", "logsumexp", "torch"):
        code = softmax_impls.get((swap or {}).get(name, name))
        v = dataclasses.replace(code, name=name)
        if name in slow:
            sm, ce = code.softmax, code.cross_entropy
            v = dataclasses.replace(v, softmax=lambda x, dim=-1, f=sm: [f(x, dim) for _ in range(8)][-1],
                                    cross_entropy=lambda x, t, f=ce: [f(x, t) for _ in range(8)][-1])
        out.append(v)
    return out


def throughput_rows(vs: list[softmax_impls.Variant], shapes=SHAPES) -> list[ThroughputRow]:
    # One torch thread, as bench.measure.host.choose_threads picks on a busy machine: with both cores' OpenMP
    # threads, a descheduled thread stalls every parallel region for 4-16 ms, which once made the *base* run's
    # logsumexp 30x slow on a shared CI machine, so the eight-fold slowdown of `slow` no longer stood out.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _throughput_rows(vs, shapes)
    finally:
        torch.set_num_threads(previous)


def _throughput_rows(vs: list[softmax_impls.Variant], shapes) -> list[ThroughputRow]:
    rows: list[ThroughputRow] = []
    for m, n in shapes:
        x = torch.randn(m, n)
        t = torch.randint(0, n, (m,))
        size = x.element_size()
        copy = _time(lambda x=x: x.clone())
        copy_gbps = 2 * m * n * size / copy["median_s"] / 1e9  # read + write every element
        times: dict[tuple[str, str], dict[str, float]] = {}
        for v in vs:
            times[(v.name, "softmax_fwd")] = _time(lambda v=v, x=x: v.softmax(x, dim=-1))
            times[(v.name, "ce_fwd")] = _time(lambda v=v, x=x, t=t: v.cross_entropy(x, t))
        for (name, op), q in times.items():
            # softmax_fwd reads and writes M*N elements; ce_fwd reads M*N logits and M targets, writes M losses
            nbytes = 2 * m * n * size if op == "softmax_fwd" else m * n * size + m * 8 + m * size
            gbps = nbytes / q["median_s"] / 1e9
            ref = times[("torch", op)]["median_s"]
            metrics = q | {"gbps": gbps, "copy_gbps": copy_gbps, "roofline_frac": gbps / copy_gbps,
                           "speedup_vs_torch": ref / q["median_s"]}
            for metric, value in metrics.items():
                unit = "s" if metric.endswith("_s") else ("GB/s" if "gbps" in metric else "ratio")
                rows.append(ThroughputRow(name, "cpu", "float32", op, m, n, metric, value, unit))
    # A shape the machine refuses is still a row (what the study writes for an out-of-memory point).
    rows.append(ThroughputRow("naive", "cpu", "float32", "softmax_fwd", 1 << 20, 1 << 20, "median_s", None, "s",
                              "oom", "RuntimeError: out of memory (4 TiB input)"))
    return rows


def _errors(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    u = torch.finfo(dtype).eps / 2
    out64 = out.double()
    nonfinite = float((~torch.isfinite(out64)).sum())
    rel = ((out64 - ref).abs() / ref.abs().clamp_min(torch.finfo(torch.float64).tiny)) / u
    rel = torch.where(torch.isfinite(out64), rel, torch.full_like(rel, float("inf")))
    return nonfinite, float(rel.max())


def stability_rows(vs: list[softmax_impls.Variant]) -> list[StabilityRow]:
    rows: list[StabilityRow] = []
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    for v in vs:
        for dtype in DTYPES_ST:
            dname = str(dtype).removeprefix("torch.")
            over = -torch.finfo(dtype).min
            # translation: z + c, c past the dtype's exp overflow (float32 88.7, float16 11.1)
            for c in (0.0, 0.5 * float(torch.log(torch.tensor(over))), 2.0 * float(torch.log(torch.tensor(over)))):
                x = (z + c).to(dtype)
                ref = torch.softmax(x.double(), dim=-1)
                nonfinite, err = _errors(v.softmax(x, dim=-1), ref, dtype)
                passed = float(nonfinite == 0 and err <= 64)
                for metric, value, unit in (("nonfinite", nonfinite, "count"), ("max_rel_err_u", err, "u"),
                                            ("passed", passed, "bool")):
                    rows.append(StabilityRow(v.name, "cpu", dname, "softmax", "translation", c, 64, metric,
                                             value, unit))
            # far target: the target logit d below the rest; -log p is finite only if log-softmax is fused
            for d in (5.0, 200.0):
                x = z.clone()
                x[:, 0] = x[:, 1:].max(dim=1).values - d
                x = x.to(dtype)
                target = torch.zeros(8, dtype=torch.long)
                ref = -torch.log_softmax(x.double(), dim=-1)[:, 0]
                nonfinite, err = _errors(v.cross_entropy(x, target).detach(), ref, dtype)
                passed = float(nonfinite == 0 and err <= 64)
                for metric, value, unit in (("nonfinite", nonfinite, "count"), ("max_rel_err_u", err, "u"),
                                            ("passed", passed, "bool")):
                    rows.append(StabilityRow(v.name, "cpu", dname, "cross_entropy", "far_target", d, 64, metric,
                                             value, unit))
    return rows


def threshold_rows(vs: list[softmax_impls.Variant]) -> list[ThresholdRow]:
    """Largest c for which softmax([c, c-1, ..., c-9]) is finite and within 64 u, by bisection."""
    rows = []
    probe = torch.arange(0, -10, -1, dtype=torch.float64)
    for v in vs:
        for dtype in DTYPES_ST:
            def good(c: float, v=v, dtype=dtype) -> bool:
                x = (probe + c).to(dtype).unsqueeze(0)
                nonfinite, err = _errors(v.softmax(x, dim=-1), torch.softmax(x.double(), -1), dtype)
                return nonfinite == 0 and err <= 64
            lo, hi = 0.0, float(torch.finfo(dtype).max)
            if good(hi):
                lo = hi
            else:
                for _ in range(200):
                    mid = (lo + hi) / 2 if hi < 1e6 else (lo + hi) ** 0.5 * max(lo, 1.0) ** 0.5
                    lo, hi = (mid, hi) if good(mid) else (lo, mid)
                    if hi - lo <= 1e-3 * max(1.0, lo):
                        break
            rows.append(ThresholdRow(v.name, "cpu", str(dtype).removeprefix("torch."), "softmax", "overflow", lo,
                                     "[c, c-1, ..., c-9]"))
    return rows


def small_dataset():
    """Real Fashion-MNIST, the first 6000 training images (the whole test set stays): a 1-epoch run in ~1 s."""
    from bench.studies.training import data

    ds = data.load()
    return dataclasses.replace(ds, train_images=ds.train_images[:6000], train_labels=ds.train_labels[:6000])


def make_run(root: Path, vs: list[softmax_impls.Variant], *, train: bool = True, parts=("throughput", "stability",
             "training"), epochs: int = 1, dataset=None, shapes=SHAPES) -> Run:
    """A run folder under `root` holding real measurements of `vs` for the requested parts."""
    run = Run.create(root, ["softmax-bench", "test"], {})
    if "throughput" in parts:
        run.append(*throughput_rows(vs, shapes))
    if "stability" in parts:
        run.append(*stability_rows(vs))
        run.append(*threshold_rows(vs))
    if "training" in parts and train:
        from bench.studies.training.sweep import train_into

        train_into(run, vs, ["standard", "raw-pixels"], torch.device("cpu"), seed=0, epochs=epochs,
                   dataset=dataset)
    return run
