"""Where a training step's time goes (`python -m bench.tools.train_speed --profile`).

Ours: one step of bench.studies.training.model's train_epoch split into its phases (PHASES), each timed with
perf_counter, median per phase over a few epochs of steps, beside the step time of train_epoch itself run
uninstrumented (the difference is what the timing costs); then torch.profiler's top ops by self CPU time.
The chapter's: ChapterTimings wraps its DataLoader and splits its epochs into worker start-up and first batch,
waiting for the next batch, the step's own work, and the test-set evaluation.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import UserError
from bench.measure.host import cpu_model, sync, torch_threads

# the module as `our_model`: train_speed defines the chapter's own Accumulator, accuracy, sgd and
# evaluate_accuracy, and a reader of the step profile must see at a glance that it calls ours
from bench.studies.training import model as our_model
from bench.studies.training.presets import Regime
from softmax_impls import Variant

CHAPTER_WORKERS = 4  # d2l.get_dataloader_workers()


# --- the chapter's pipeline, timed coarsely (--profile) -------------------------------------------------

@dataclass
class ChapterTimings:
    """Where the chapter's epochs went, in seconds, summed over the epochs timed.

    Per epoch, iter(DataLoader) starts 4 worker processes afresh (no persistent_workers in the chapter), so
    the first batch carries the start-up; every later next() is time the training loop spent waiting for a
    batch; the time between one batch arriving and the loop asking for the next is the step itself (forward,
    loss, backward, sgd, the float() reads into the Accumulator)."""

    max_steps: int | None = None  # stop an epoch after this many batches (the tests' short run)
    keep: int = 40  # batches kept from the last epoch, to time the step alone afterwards (0: none)
    kept: list[Any] = field(default_factory=list)
    alone_step_s: float | None = None  # the step on the kept batches, no workers running
    epochs: int = 0
    steps: int = 0
    startup_s: float = 0.0  # iter() and the first next(): worker processes started, first batch made
    wait_s: float = 0.0  # every later next()
    step_s: float = 0.0  # from a batch's arrival to the next request
    evaluate_s: list[float] = field(default_factory=list)  # each epoch's evaluate_accuracy (its own DataLoader)

    def wrap(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The loader's batches, timed into this object (one epoch)."""
        self.epochs += 1
        self.kept = []
        start = time.perf_counter()
        it = iter(loader)
        try:
            n = 0
            while self.max_steps is None or n < self.max_steps:
                asked = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                got = time.perf_counter()
                if n == 0:
                    self.startup_s += got - start
                else:
                    self.wait_s += got - asked
                if len(self.kept) < self.keep:
                    self.kept.append(batch)
                yield batch
                # The generator resumes when the loop asks for the next batch: what lies between is the step.
                self.step_s += time.perf_counter() - got
                self.steps += 1
                n += 1
        finally:
            del it  # shuts the workers down now when max_steps cut the epoch short

    def rows(self) -> list[tuple[str, float]]:
        """(phase, seconds) summed over the timed epochs."""
        return [("worker start-up + first batch", self.startup_s),
                ("waiting for the next batch", self.wait_s),
                ("the step (forward .. Accumulator)", self.step_s),
                ("evaluation (test DataLoader)", sum(self.evaluate_s))]


def format_chapter_timings(t: ChapterTimings, total_s: float | None = None) -> str:
    """A small table: each phase per epoch (ms), per training step (us), and its share of the epochs.
    `total_s` (the pipeline's whole time) adds a line for what lay outside the epochs."""
    rows = t.rows()
    epochs_s = sum(s for _, s in rows)
    steps, epochs = max(t.steps, 1), max(t.epochs, 1)
    lines = [f"the chapter's pipeline: DataLoader(batch 256, {CHAPTER_WORKERS} workers), torch threads "
             f"{torch.get_num_threads()} in the main process; {t.steps} steps over {t.epochs} epoch(s)",
             f"  {'phase':<36}{'ms/epoch':>10}{'us/step':>10}{'share':>8}"]
    for name, sec in [*rows, ("total (epochs)", epochs_s)]:
        lines.append(f"  {name:<36}{sec / epochs * 1e3:10.1f}{sec / steps * 1e6:10.0f}"
                     f"{sec / epochs_s if epochs_s else 0.0:8.1%}")
    if t.alone_step_s is not None:
        lines.append(f"  the step alone, on {len(t.kept)} batches already in memory with no workers running: "
                     f"{t.alone_step_s * 1e6:.0f} us (on {os.cpu_count()} CPUs the workers share the cores)")
    if total_s is not None:
        lines.append(f"  outside the epochs (imports, datasets, loaders): {total_s - epochs_s:.2f} s")
    return "\n".join(lines)


# --- ours, step by step (--profile) ---------------------------------------------------------------------

# The phases of one step of bench.studies.training.model.train_epoch, in its order.
PHASES: tuple[tuple[str, str], ...] = (
    ("index_select", "minibatch: order slice, X/y index_select"),
    ("forward", "logits = X @ W + b"),
    ("cross_entropy", "the variant's cross_entropy"),
    ("backward", "loss.sum().backward()"),
    ("sgd", "sgd: W, b -= lr * grad / n; zero"),
    ("loss_sum", "loss_sums[step] = loss.sum(f64)"),
    ("accuracy", "softmax, argmax == y, Accumulator"),
)


@dataclass
class StepProfile:
    """Ours, one training step: the median of each phase, and the step timed whole, in seconds."""

    variant: str
    device: str
    dtype: str
    batch_size: int
    threads: int  # torch's intra-op threads while it ran (train_threads: 1 on the CPU)
    steps: int  # instrumented steps timed
    phases: dict[str, float]  # phase key (PHASES) -> median seconds
    instrumented_step_s: float  # median of the instrumented steps, first mark to last
    instrumented_mean_s: float  # their mean: comparable with plain_step_s, itself a mean over an epoch
    plain_step_s: float  # train_epoch itself, uninstrumented: median epoch time / steps per epoch
    plain_epochs: int
    evaluate_s: float  # evaluate_accuracy on the test set, median per epoch
    top_ops: list[tuple[str, float, float]] = field(default_factory=list)  # (op, calls/step, self CPU s/step)
    profiled_self_cpu_s: float = 0.0  # per step, all ops under torch.profiler


def _instrumented_epoch(net: our_model.Model, X: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int,
                        gen: torch.Generator, samples: dict[str, list[float]], whole: list[float]) -> None:
    """One epoch of train_epoch with a perf_counter mark between its phases. The body is train_epoch's, line
    for line (same calls, same order, same shapes); only the marks are added. On a GPU each mark syncs first,
    so a phase is its kernels' time, not their launch."""
    device = X.device
    n = len(X)
    order = torch.randperm(n, generator=gen).to(device)
    steps = math.ceil(n / batch_size)
    loss_sums = torch.empty(steps, dtype=torch.float64, device=device)
    metric = our_model.Accumulator(2)
    keys = [k for k, _ in PHASES]

    def mark() -> float:
        sync(device)
        return time.perf_counter()

    for step in range(steps):
        t = [mark()]
        idx = order[step * batch_size:(step + 1) * batch_size]
        Xb, yb = X.index_select(0, idx), y.index_select(0, idx)
        t.append(mark())
        logits = net.logits(Xb)
        t.append(mark())
        loss = net.variant.cross_entropy(logits, yb)
        t.append(mark())
        loss.sum().backward()
        t.append(mark())
        our_model.sgd([net.W, net.b], lr, len(idx))
        t.append(mark())
        with torch.no_grad():
            loss_sums[step] = loss.detach().sum(dtype=torch.float64)
            t.append(mark())
            metric.add(our_model.accuracy(net.variant.softmax(logits.detach(), dim=1), yb), len(idx))
        t.append(mark())
        for key, a, b in zip(keys, t[:-1], t[1:], strict=True):
            samples[key].append(b - a)
        whole.append(t[-1] - t[0])
    float(loss_sums.sum())  # the epoch's one read, as train_epoch's


def profile_ours(variant: Variant, regime: Regime, data: our_model.DeviceData, device: torch.device,
                 dtype: torch.dtype = torch.float32, seed: int = 0, rounds: int = 4,
                 top: int = 10) -> StepProfile:
    """Where a training step of ours goes: `rounds` x (one train_epoch uninstrumented, one instrumented),
    interleaved so both see the same machine, after one warm-up epoch; then one epoch under torch.profiler
    for its `top` ops by self CPU time (0: none). The model is the chapter's (init_model, the regime's lr and
    batch size) and trains on as it would; threads as in training (train_threads)."""
    if rounds < 1:
        raise UserError(f"profile rounds must be at least 1, not {rounds}.")
    net = our_model.init_model(variant, device, dtype, seed, regime.init_std)
    gen = torch.Generator().manual_seed(seed + 1)
    X, y, bs, lr = data.X_train, data.y_train, regime.batch_size, regime.lr
    steps_per_epoch = math.ceil(len(X) / bs)
    samples: dict[str, list[float]] = {k: [] for k, _ in PHASES}
    whole: list[float] = []
    plain: list[float] = []
    evals: list[float] = []
    with torch_threads(our_model.train_threads(device)) as threads:
        our_model.train_epoch(net, X, y, lr, bs, gen)  # warm-up: allocator, first-call dispatch, caches
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            our_model.train_epoch(net, X, y, lr, bs, gen)
            sync(device)
            plain.append((time.perf_counter() - start) / steps_per_epoch)
            _instrumented_epoch(net, X, y, lr, bs, gen, samples, whole)
            start = time.perf_counter()
            our_model.evaluate_accuracy(net, data.X_test, data.y_test)  # reads its result: synced
            evals.append(time.perf_counter() - start)
        top_ops, profiled = _top_ops(net, X, y, lr, bs, gen, top) if top > 0 else ([], 0.0)
    return StepProfile(variant.name, str(device), str(dtype).removeprefix("torch."), bs, threads, len(whole),
                       {k: statistics.median(v) for k, v in samples.items()}, statistics.median(whole),
                       statistics.fmean(whole),
                       statistics.median(plain), rounds, statistics.median(evals), top_ops, profiled)


def _top_ops(net: our_model.Model, X: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int,
             gen: torch.Generator, top: int) -> tuple[list[tuple[str, float, float]], float]:
    """One train_epoch under torch.profiler (CPU activity): the `top` ops by self CPU time, per step, and
    the self CPU time of all ops per step. The profiler's own cost per op inflates these against the plain
    step; they rank the ops rather than time the step."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto logs an ERROR line ("gpuGetDeviceCount failed") on a machine without a GPU, harmless for CPU
    # activity; quiet it unless the user set the level (read when the profiler first starts).
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")

    steps = math.ceil(len(X) / batch_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        our_model.train_epoch(net, X, y, lr, batch_size, gen)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) * 1e-6 / steps  # profiler times are microseconds
    return ([(e.key, e.count / steps, e.self_cpu_time_total * 1e-6 / steps) for e in events[:top]], total)


def format_step_profile(p: StepProfile) -> str:
    """A small table: each phase's median microseconds per step and its share of their sum, then the sum
    beside the step timed whole and uninstrumented (the gap is the marks' cost), then the top ops."""
    total = sum(p.phases.values())
    lines = [f"ours: {p.variant}, {p.dtype}, batch {p.batch_size}, {p.device}, torch threads {p.threads} "
             f"while training; median of {p.steps} instrumented steps",
             f"  {'phase':<14}{'what':<38}{'us/step':>9}{'share':>8}"]
    for key, what in PHASES:
        sec = p.phases[key]
        lines.append(f"  {key:<14}{what:<38}{sec * 1e6:9.1f}{sec / total if total else 0.0:8.1%}")
    # Medians drop the occasional slow step; the uninstrumented figure is an epoch's time over its steps, a
    # mean. So the instrumentation's cost is the instrumented mean against it, not the medians' sum.
    overhead = p.instrumented_mean_s / p.plain_step_s - 1 if p.plain_step_s else float("nan")
    plain = f"uninstrumented step (train_epoch, {p.plain_epochs} epochs)"
    lines += [f"  {'sum of the phases (medians)':<52}{total * 1e6:9.1f}",
              f"  {'instrumented step, whole: median':<52}{p.instrumented_step_s * 1e6:9.1f}",
              f"  {'instrumented step, whole: mean':<52}{p.instrumented_mean_s * 1e6:9.1f}",
              f"  {plain:<52}{p.plain_step_s * 1e6:9.1f}   (instrumented mean {overhead:+.0%} vs this)",
              f"  evaluation on the test set: {p.evaluate_s * 1e3:.1f} ms per epoch"]
    if p.top_ops:
        lines += [f"  torch.profiler, one epoch: top {len(p.top_ops)} ops by self CPU time "
                  f"(all ops {p.profiled_self_cpu_s * 1e6:.1f} us/step under the profiler)",
                  f"    {'op':<40}{'calls/step':>11}{'us/step':>9}{'share':>8}"]
        for name, calls, sec in p.top_ops:
            share = sec / p.profiled_self_cpu_s if p.profiled_self_cpu_s else 0.0
            lines.append(f"    {name[:40]:<40}{calls:11.1f}{sec * 1e6:9.1f}{share:8.1%}")
    return "\n".join(lines)


def format_profiles(step: StepProfile, chapter: ChapterTimings, chapter_total_s: float | None = None) -> str:
    """The --profile printout: the machine, ours phase by phase, the chapter's coarse split, and the two
    training steps side by side (the ratio's explanation: what the chapter waits for, ours never does)."""
    # cpu_model() is the CPU name machine_info() records; machine_info itself also runs git and imports triton.
    head = (f"where a training step's time goes, on {cpu_model()} ({os.cpu_count()} CPUs); torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op threads by default")
    chapter_step = sum(sec for _, sec in chapter.rows()[:3]) / max(chapter.steps, 1)
    tail = (f"per training step: the chapter {chapter_step * 1e6:.0f} us (start-up and waits included, evaluation "
            f"not), ours {step.plain_step_s * 1e6:.0f} us: {chapter_step / step.plain_step_s:.0f}x")
    return "\n\n".join([head, format_step_profile(step), format_chapter_timings(chapter, chapter_total_s), tail])
