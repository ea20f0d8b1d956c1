"""The chapter's softmax regression on real Fashion-MNIST, once per variant and stress regime.

    softmax-bench train                                   # every variant, the chapter's setting, 10 epochs
    softmax-bench train --variant naive --json            # one variant; a JSON object per run on stdout
    softmax-bench train --regime raw-pixels --regime high-lr
    softmax-bench train --regime all --device cuda        # standard, raw-pixels, high-lr, low-precision
    softmax-bench train --quick                           # 2 epochs
    softmax-bench train --resume results/<run>            # finish an interrupted run

The recipe is the chapter's, step for step: images flattened to 784 features, W 784x10 drawn from
N(0, 0.01) with requires_grad, b = 0, net(X) = softmax(XW + b), loss = the variant's cross_entropy on the
logits XW + b, minibatch SGD with lr 0.1 and batch 256 where the summed loss is back-propagated and the
gradient divided by the batch size (d2l.sgd), 10 epochs reshuffled each epoch (a generator seeded by
--seed), train loss/accuracy accumulated over the epoch's minibatches (Accumulator / train_epoch_ch3),
test accuracy after every epoch (evaluate_accuracy), then predictions on the first test images with their
label names (predict_ch3). The variant's own softmax makes the predictions, so a variant whose softmax
returns NaN is scored as it would be in the chapter.

What differs is only speed: the whole dataset sits on the target device as tensors and every minibatch
is an index_select of a shuffled permutation, instead of PIL images pulled one by one through ToTensor
and a DataLoader (``python -m bench.train_speed`` compares the two).

Regimes (bench.presets.REGIMES): ``standard`` (the chapter), ``raw-pixels`` (inputs 0-255), ``high-lr``
(lr 10), ``low-precision`` (float16 and bfloat16). A run records the first step whose minibatch loss was
non-finite (``diverged_step``, 1-based count of minibatches, None if never); a diverged run is a result:
it keeps training and its accuracy is reported as measured.

Rows go to the run folder as they are measured: ``training.csv`` (TrainingRow: train_loss, train_acc,
test_acc per epoch; seconds and diverged_step per run, written last, so a run with a ``seconds`` row is
complete) and ``predictions.csv`` (PredictionRow). ``--resume RUN`` skips (variant, regime, device, dtype,
seed) combinations already complete.

For other commands (``softmax-bench all``)::

    from bench.training import train_into
    results = train_into(run, variants, ["standard", "raw-pixels"], torch.device("cpu"), seed=0, quick=True)
    print(format_table(results))

``train_into(run, variants, regimes, device, seed, epochs=None, quick=False, dtype=None, lr=None,
batch_size=None) -> list[TrainResult]`` loads the data once, trains every (regime, dtype, variant), appends
rows to `run`, skips what `run` already holds (returning those results rebuilt from its rows) and turns a
failing run into a row with status error/oom instead of an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import UserError, progress
from bench.data import FashionMNIST
from bench.devices import dtype_name, dtype_skip_reason, parse_dtype, sync
from bench.harness import add_common_arguments, chosen_variants, classify_failure, device_from, open_run, timeout_from
from bench.presets import FASHION_LABELS, NUM_PREDICTIONS, REGIMES, TRAIN_TIMEOUT_S, Regime, pick
from bench.results import PredictionRow, Run, TrainingRow
from bench.sandbox import UnitTimeout, contained, deadline
from softmax_impls import Variant

NUM_INPUTS = 28 * 28
NUM_OUTPUTS = 10
QUICK_EPOCHS = 2
EVAL_CHUNK = 8192  # rows per evaluation matmul; bounds memory, not results
# A minibatch step is a 256x784x10 matmul and a few 256x10 ops: too small to gain from intra-op threads,
# and on a loaded machine (a shared 2-core CI box) OpenMP threads waiting for each other made an epoch
# 5-15x slower than one thread. So CPU training runs single-threaded (restored afterwards).
CPU_TRAIN_THREADS = 1
UNITS = {"train_loss": "nats/sample", "train_acc": "fraction", "test_acc": "fraction", "seconds": "s",
         "diverged_step": "step"}


# --- the chapter's helpers ------------------------------------------------------------------------

class Accumulator:
    """The chapter's Accumulator: sums over n variables (kept as tensors so a GPU never waits on it)."""

    def __init__(self, n: int):
        self.data: list[Any] = [0.0] * n

    def add(self, *args: Any) -> None:
        self.data = [a + b for a, b in zip(self.data, args, strict=True)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx: int) -> float:
        return float(self.data[idx])


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (a 0-d tensor), as the chapter's accuracy()."""
    return (y_hat.argmax(dim=1) == y).sum()


def sgd(params: Sequence[torch.Tensor], lr: float, batch_size: int) -> None:
    """d2l.sgd: the gradient of the *summed* loss divided by the batch size."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


@dataclass
class Model:
    """softmax(XW + b) with the chapter's parameters."""

    W: torch.Tensor
    b: torch.Tensor
    variant: Variant

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.W + self.b

    def __call__(self, X: torch.Tensor) -> torch.Tensor:  # the chapter's net(X)
        return self.variant.softmax(self.logits(X), dim=1)


def init_model(variant: Variant, device: torch.device, dtype: torch.dtype, seed: int, std: float) -> Model:
    # Drawn on the CPU in float32 from the seed, then moved: the same seed gives the same start everywhere.
    gen = torch.Generator().manual_seed(seed)
    W = torch.normal(0.0, std, size=(NUM_INPUTS, NUM_OUTPUTS), generator=gen)
    # Same 784x10 values, stored column-major: MKL multiplies X @ W with a 10-wide row-major W about 4x
    # slower than with its transpose, and autograd then also takes the fast (G^T X)^T path for W's grad.
    W = W.to(device=device, dtype=dtype).t().contiguous().t().requires_grad_(True)
    b = torch.zeros(NUM_OUTPUTS, device=device, dtype=dtype, requires_grad=True)
    return Model(W, b, variant)


@dataclass
class DeviceData:
    """The flattened, scaled dataset on the target device in the training dtype."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def prepare(ds: FashionMNIST, device: torch.device, dtype: torch.dtype, pixel_scale: float) -> DeviceData:
    def images(t: torch.Tensor) -> torch.Tensor:
        # Scale in float32, then round once to the training dtype (ToTensor gives float32 in [0, 1]).
        return (t.reshape(len(t), NUM_INPUTS).to(device).float() * pixel_scale).to(dtype)

    return DeviceData(images(ds.train_images), ds.train_labels.to(device),
                      images(ds.test_images), ds.test_labels.to(device))


def evaluate_accuracy(net: Model, X: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of net on (X, y), the chapter's evaluate_accuracy over in-memory tensors."""
    metric = Accumulator(2)  # correct predictions, predictions
    with torch.no_grad():
        for start in range(0, len(X), EVAL_CHUNK):
            Xb, yb = X[start:start + EVAL_CHUNK], y[start:start + EVAL_CHUNK]
            metric.add(accuracy(net(Xb), yb), yb.numel())
    return metric[0] / metric[1]


@dataclass
class EpochStats:
    train_loss: float
    train_acc: float
    first_nonfinite: int | None  # 0-based minibatch index within the epoch


def train_epoch(net: Model, X: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int,
                gen: torch.Generator, on_step: Callable[[int, torch.Tensor], None] | None = None) -> EpochStats:
    """One epoch of the chapter's train_epoch_ch3: reshuffle, then minibatch SGD over tensor slices."""
    n = len(X)
    order = torch.randperm(n, generator=gen).to(X.device)
    steps = math.ceil(n / batch_size)
    # Per-step loss sums stay on the device; reading them once per epoch (not per step) keeps a GPU busy,
    # and they still give the exact step where the loss first went non-finite.
    loss_sums = torch.empty(steps, dtype=torch.float64, device=X.device)
    metric = Accumulator(2)  # correct predictions, examples (the loss sum comes from loss_sums)
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        Xb, yb = X.index_select(0, idx), y.index_select(0, idx)
        logits = net.logits(Xb)
        loss = net.variant.cross_entropy(logits, yb)
        loss.sum().backward()
        sgd([net.W, net.b], lr, len(idx))
        with torch.no_grad():
            loss_sums[step] = loss.detach().sum(dtype=torch.float64)
            metric.add(accuracy(net.variant.softmax(logits.detach(), dim=1), yb), len(idx))
        if on_step is not None:
            on_step(step, loss_sums)
    sums = loss_sums.cpu()
    bad = (~torch.isfinite(sums)).nonzero()
    return EpochStats(train_loss=float(sums.sum()) / metric[1], train_acc=metric[0] / metric[1],
                      first_nonfinite=int(bad[0]) if len(bad) else None)


@contextlib.contextmanager
def cpu_threads(device: torch.device, n: int = CPU_TRAIN_THREADS) -> Iterator[None]:
    """Run the body with `n` intra-op threads when training on the CPU; restores the previous count."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- one run ----------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    variant: str
    regime: str
    device: str
    dtype: str
    seed: int
    epochs: int
    lr: float
    batch_size: int
    train_loss: float | None = None
    train_acc: float | None = None
    test_acc: float | None = None
    diverged_step: int | None = None
    seconds: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    resumed: bool = False  # rebuilt from a run folder by --resume, not trained now

    def to_json(self) -> dict[str, Any]:
        """Strict JSON (non-finite floats become null; diverged_step says why)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return clean(dataclasses.asdict(self))


def effective_regime(regime: Regime, epochs: int | None = None, quick: bool = False, lr: float | None = None,
                     batch_size: int | None = None) -> Regime:
    """The regime with command-line overrides applied (--epochs beats --quick)."""
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    elif quick:
        changes["epochs"] = min(QUICK_EPOCHS, regime.epochs)
    if lr is not None:
        changes["lr"] = lr
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return dataclasses.replace(regime, **changes)


def train_one(variant: Variant, regime: Regime, data: DeviceData, device: torch.device, dtype: torch.dtype,
              seed: int, images: torch.Tensor | None = None,
              on_epoch: Callable[[TrainResult, dict[str, float]], None] | None = None) -> TrainResult:
    """Train `variant` in `regime` on `data` (already on `device` in `dtype`) and return the result.

    `images` (uint8 [n, 28, 28], the first test images) only feeds the predictions' pixels.
    `on_epoch(result, epoch_stats)` is called after every epoch (the CLI writes rows there).
    """
    result = TrainResult(variant.name, regime.name, str(device), dtype_name(dtype), seed, regime.epochs,
                         regime.lr, regime.batch_size)
    net = init_model(variant, device, dtype, seed, regime.init_std)
    # The shuffle has its own stream so the initial W does not depend on how many epochs follow.
    gen = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = math.ceil(len(data.X_train) / regime.batch_size)
    label = f"{variant.name} {regime.name} {result.dtype}"
    bar = progress.bar(None, desc=label, total=regime.epochs * steps_per_epoch, leave=False)

    def on_step(step: int, loss_sums: torch.Tensor) -> None:
        bar.update(1)
        if progress.interactive() and step % 20 == 0:  # reading the loss syncs a GPU: only for the bar
            bar.set_postfix(epoch=bar.n // steps_per_epoch + 1,
                            loss=f"{float(loss_sums[step]) / regime.batch_size:.4f}", refresh=False)

    sync(device)
    start = time.perf_counter()
    outside = 0.0  # seconds spent in on_epoch (writing rows), left out of the run's time
    with cpu_threads(device), contextlib.closing(bar):
        for epoch in range(1, regime.epochs + 1):
            stats = train_epoch(net, data.X_train, data.y_train, regime.lr, regime.batch_size, gen, on_step)
            test_acc = evaluate_accuracy(net, data.X_test, data.y_test)
            if stats.first_nonfinite is not None and result.diverged_step is None:
                result.diverged_step = (epoch - 1) * steps_per_epoch + stats.first_nonfinite + 1
            epoch_stats = {"epoch": epoch, "train_loss": stats.train_loss, "train_acc": stats.train_acc,
                           "test_acc": test_acc}
            result.history.append(epoch_stats)
            result.train_loss, result.train_acc, result.test_acc = stats.train_loss, stats.train_acc, test_acc
            if not progress.interactive():
                progress.log(f"[{label}] epoch {epoch}/{regime.epochs}: train loss {stats.train_loss:.4f}, "
                             f"train acc {stats.train_acc:.4f}, test acc {test_acc:.4f}")
            if on_epoch is not None:
                sync(device)
                mark = time.perf_counter()
                on_epoch(result, epoch_stats)
                outside += time.perf_counter() - mark
        sync(device)
        result.seconds = time.perf_counter() - start - outside
    if result.diverged_step is not None:
        result.message = f"loss non-finite from step {result.diverged_step}"
    with cpu_threads(device):
        result.predictions = predict(net, data, images)
    return result


def predict(net: Model, data: DeviceData, images: torch.Tensor | None, n: int = NUM_PREDICTIONS
            ) -> list[dict[str, Any]]:
    """The chapter's predict_ch3: true and predicted labels (with names) of the first n test images."""
    with torch.no_grad():
        predicted = net(data.X_test[:n]).argmax(dim=1).cpu().tolist()
    labels = data.y_test[:n].cpu().tolist()
    out = []
    for i, (true, pred) in enumerate(zip(labels, predicted, strict=True)):
        out.append({"index": i, "label": true, "label_name": FASHION_LABELS[true], "predicted": pred,
                    "predicted_name": FASHION_LABELS[pred],
                    "pixels": images[i].numpy().tobytes().hex() if images is not None else ""})
    return out


# --- many runs into a run folder --------------------------------------------------------------------

def _row(result: TrainResult, epoch: int | None, metric: str, value: float | None, status: str = "ok",
         message: str = "") -> TrainingRow:
    return TrainingRow(result.variant, result.regime, result.device, result.dtype, result.seed, epoch, metric,
                       value, UNITS[metric], status, message)


def _finish_rows(result: TrainResult) -> list[Any]:
    rows: list[Any] = [PredictionRow(result.variant, result.regime, result.device, result.dtype, result.seed,
                                     p["index"], p["label"], p["predicted"], p["pixels"])
                       for p in result.predictions]
    rows.append(_row(result, None, "diverged_step",
                     float(result.diverged_step) if result.diverged_step is not None else None,
                     result.status, result.message or ("finite throughout" if result.status == "ok" else "")))
    rows.append(_row(result, None, "seconds", result.seconds, result.status, result.message))
    return rows


def results_from_run(run: Run, device: str | None = None) -> dict[tuple[str, str, str, str, int], TrainResult]:
    """Completed runs stored in `run`, keyed (variant, regime, device, dtype, seed), rebuilt from its rows."""
    df = run.read("training")
    out: dict[tuple[str, str, str, str, int], TrainResult] = {}
    if df.empty:
        return out
    for key, g in df.groupby(["variant", "regime", "device", "dtype", "seed"], sort=False):
        variant, regime, dev, dtype, seed = key
        if device is not None and dev != device:
            continue
        whole = g[g["epoch"].isna()]
        secs = whole[whole["metric"] == "seconds"]
        if secs.empty:
            continue  # interrupted mid-run: train it again
        last_secs = secs.iloc[-1]
        div = whole[whole["metric"] == "diverged_step"]
        per_epoch = g[g["epoch"].notna()]
        history = []
        for epoch, e in per_epoch.groupby("epoch"):
            stats = {"epoch": int(epoch)}
            for _, r in e.iterrows():  # the last row wins if an interrupted attempt left older ones
                stats[r["metric"]] = float(r["value"])
            history.append(stats)
        preset = REGIMES.get(regime)
        result = TrainResult(variant, regime, dev, dtype, int(seed), len(history),
                             preset.lr if preset else float("nan"), preset.batch_size if preset else 0,
                             seconds=None if math.isnan(last_secs["value"]) else float(last_secs["value"]),
                             history=history, status=last_secs["status"], message=last_secs["message"],
                             resumed=True)
        if not div.empty and not math.isnan(div.iloc[-1]["value"]):
            result.diverged_step = int(div.iloc[-1]["value"])
        if history:
            result.train_loss = history[-1].get("train_loss")
            result.train_acc = history[-1].get("train_acc")
            result.test_acc = history[-1].get("test_acc")
        out[(variant, regime, dev, dtype, int(seed))] = result
    return out


def train_into(run: Run, variants: Sequence[Variant], regimes: Sequence[str | Regime], device: torch.device,
               seed: int = 0, epochs: int | None = None, quick: bool = False, dtype: torch.dtype | None = None,
               lr: float | None = None, batch_size: int | None = None,
               dataset: FashionMNIST | None = None, timeout: float | None = None) -> list[TrainResult]:
    """Train every (regime, dtype, variant) into `run`; see the module docstring. Never raises for a run
    that fails: it becomes a TrainResult (and rows) with status error/oom/skipped, or timeout past `timeout`
    seconds (None: TRAIN_TIMEOUT_S; 0: no limit)."""
    from bench import data as data_module

    plans = [effective_regime(r if isinstance(r, Regime) else pick("regime", REGIMES, r), epochs, quick, lr,
                              batch_size) for r in regimes]
    ds = dataset if dataset is not None else data_module.load()
    data_module.record(run, ds)  # run.json names the copy that trained: its folder and the files' sha256
    stored = results_from_run(run, str(device))
    results: list[TrainResult] = []
    for regime in plans:
        dtypes = [dtype] if dtype is not None else [parse_dtype(d) for d in regime.dtypes]
        for dt in dtypes:
            prepared: DeviceData | None = None
            for variant in variants:
                key = (variant.name, regime.name, str(device), dtype_name(dt), seed)
                if key in stored:
                    results.append(stored[key])
                    continue
                result = TrainResult(*key, regime.epochs, regime.lr, regime.batch_size)
                reason = variant.skip_reason(device, dt) or dtype_skip_reason(device, dt)
                if reason is None:
                    try:
                        if prepared is None:
                            prepared = prepare(ds, device, dt, regime.pixel_scale)

                        def write_epoch(res: TrainResult, stats: dict[str, float]) -> None:
                            run.append(*(_row(res, int(stats["epoch"]), m, stats[m])
                                         for m in ("train_loss", "train_acc", "test_acc")))

                        with deadline(TRAIN_TIMEOUT_S if timeout is None else timeout, "training run"):
                            result = train_one(variant, regime, prepared, device, dt, seed,
                                               images=ds.test_images[:NUM_PREDICTIONS], on_epoch=write_epoch)
                    except UnitTimeout as exc:
                        result.status, result.message = "timeout", str(exc)
                    except BaseException as exc:  # one failing run (even a sys.exit) is a row; the sweep goes on
                        if not contained(exc):
                            raise
                        status, message = classify_failure(exc)
                        result.status, result.message = status, message
                else:
                    result.status, result.message = "skipped", reason
                run.append(*_finish_rows(result))
                progress.log(f"[{result.variant} {result.regime} {result.dtype}] " + _summary(result))
                results.append(result)
            del prepared  # free the device copy before the next dtype/regime
    return results


def _summary(r: TrainResult) -> str:
    if r.status != "ok":
        return f"{r.status}: {r.message}"
    div = f"diverged at step {r.diverged_step}" if r.diverged_step is not None else "finite throughout"
    return (f"test acc {_fmt(r.test_acc)}, train loss {_fmt(r.train_loss)}, {div}, "
            f"{_fmt(r.seconds, '.2f')} s")


def _fmt(v: float | None, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if math.isfinite(v) else str(v)


def format_table(results: Sequence[TrainResult]) -> str:
    """The comparison table: one line per (variant, regime, dtype)."""
    header = ("variant", "regime", "dtype", "test acc", "train loss", "diverged", "seconds", "status")
    lines = [header]
    for r in results:
        lines.append((r.variant, r.regime, r.dtype, _fmt(r.test_acc), _fmt(r.train_loss),
                      str(r.diverged_step) if r.diverged_step is not None else "-", _fmt(r.seconds, ".2f"),
                      r.status + (" (resumed)" if r.resumed else "") + (f": {r.message}" if r.status != "ok"
                                                                       else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)


# --- the command ------------------------------------------------------------------------------------

def add_arguments_train(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--regime", action="append", metavar="NAME",
                        help=f"training regime (repeatable, or 'all'): {', '.join(REGIMES)}; default standard")
    parser.add_argument("--dtype", help="train in this dtype instead of the regime's (float32 for all but "
                                        "low-precision, which trains in float16 and bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds W and the shuffles (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help=f"epochs (default: the regime's 10; {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--lr", type=float, help="learning rate for every regime (default: the regime's)")
    parser.add_argument("--batch-size", type=int, help="minibatch size (default: the regime's 256)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per run on stdout (the table goes to stderr)")


def _regime_names(requested: list[str] | None) -> list[str]:
    if not requested:
        return ["standard"]
    names: list[str] = []
    for name in requested:
        for part in name.split(","):
            part = part.strip()
            names.extend(REGIMES if part == "all" else [pick("regime", REGIMES, part).name])
    return list(dict.fromkeys(names))


def run_train(args: argparse.Namespace) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}.")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive finite number, not {args.lr}.")
    regimes = _regime_names(args.regime)
    device = device_from(args)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    variants = chosen_variants(args)
    timeout = timeout_from(args)
    from bench import data as data_module

    ds = data_module.load()  # before the run folder: missing data should not leave an empty run behind
    plans = {name: dataclasses.asdict(effective_regime(REGIMES[name], args.epochs, args.quick, args.lr,
                                                       args.batch_size)) for name in regimes}
    run = open_run(args, {"training": {"regimes": plans, "seed": args.seed, "device": str(device),
                                       "dtype": args.dtype}})
    progress.log(f"softmax-bench train: writing to {run.path}")
    results = train_into(run, variants, regimes, device, seed=args.seed, epochs=args.epochs, quick=args.quick,
                         dtype=dtype, lr=args.lr, batch_size=args.batch_size, dataset=ds, timeout=timeout)
    table = format_table(results)
    if args.json:
        print(table, file=sys.stderr)
        for r in results:
            print(json.dumps(r.to_json()))
    else:
        print(table)
        first = next((r for r in results if r.status == "ok" and r.predictions), None)
        if first is not None:
            print(f"\npredictions of {first.variant} ({first.regime}, {first.dtype}) on the first test images "
                  "(true -> predicted):")
            print(", ".join(f"{p['label_name']} -> {p['predicted_name']}" for p in first.predictions[:8]))
        print(f"\nrows in {run.path}")
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1
