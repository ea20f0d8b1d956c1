"""The chapter's model and training loop: softmax regression, minibatch SGD, one run of one variant."""


from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import progress
from bench.fmt import fixed
from bench.measure.host import dtype_name, sync, torch_threads
from bench.store.rows import FASHION_LABELS
from bench.studies.training.data import FashionMNIST
from bench.studies.training.presets import NUM_PREDICTIONS, Regime
from softmax_impls import Variant

NUM_INPUTS = 28 * 28
NUM_OUTPUTS = 10
QUICK_EPOCHS = 2
EVAL_CHUNK = 8192  # rows per evaluation matmul; bounds memory, not results
# A minibatch step is a 256x784x10 matmul and a few 256x10 ops: too small to gain from intra-op threads,
# and on a loaded machine OpenMP threads waiting for each other make an epoch several times slower than one
# thread. So CPU training runs single-threaded (restored afterwards).
CPU_TRAIN_THREADS = 1


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



def train_threads(device: torch.device) -> int | None:
    """torch's CPU threads while training (bench.measure.host.torch_threads): CPU_TRAIN_THREADS on the CPU
    (never more than torch's own setting), None (left as it is) on a GPU."""
    return min(CPU_TRAIN_THREADS, torch.get_num_threads()) if device.type == "cpu" else None


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
    with torch_threads(train_threads(device)), contextlib.closing(bar):
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
    with torch_threads(train_threads(device)):
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


def summary(r: TrainResult) -> str:
    """One line on a finished run: its accuracy, loss, divergence and time (or why it failed)."""
    if r.status != "ok":
        return f"{r.status}: {r.message}"
    div = f"diverged at step {r.diverged_step}" if r.diverged_step is not None else "finite throughout"
    return (f"test acc {fixed(r.test_acc)}, train loss {fixed(r.train_loss)}, {div}, "
            f"{fixed(r.seconds, '.2f')} s")
