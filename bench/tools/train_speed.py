"""The chapter's training pipeline against ours, side by side in one invocation: time, accuracy, ratio.

    python -m bench.tools.train_speed                 # both, 10 epochs each (the chapter's takes about a minute)
    python -m bench.tools.train_speed --epochs 2      # a quicker look; the ratio is per epoch either way
    python -m bench.tools.train_speed --epochs 2 --profile   # and where a step's time goes, on both sides

The chapter's pipeline, as written there: torchvision.datasets.FashionMNIST with transforms.ToTensor(),
DataLoader(batch_size=256, shuffle=True, num_workers=4) for training and (shuffle=False) for testing, the
naive softmax, W ~ N(0, 0.01), b = 0, d2l.sgd with lr 0.1, float(l.sum()) and the accuracy pulled out of
every minibatch into a Python Accumulator. Each image goes PIL -> ToTensor -> collate, every epoch.

Ours (bench.studies.training): the dataset decoded once (bench.studies.training.data, cached), flattened and
scaled once into one tensor on the device, minibatches index_select-ed from it, the loss sums kept on the
device until the end of the epoch. Same recipe, same variant (naive), same epochs: the two test accuracies
should agree to within seed noise (~0.01), and ours should be at least 20x faster.

The torchvision side reads uncompressed IDX files under <root>/FashionMNIST/raw; they are written into a
temporary folder from the validated tensors, so both sides train on the same bytes.

--profile adds, after the comparison, where the time goes. Ours: one step of bench.studies.training.model's
train_epoch split into its phases (minibatch index_select, X @ W + b, the variant's cross-entropy, backward,
the SGD update, the loss and accuracy accumulation), each timed with perf_counter, median per phase over a few
epochs of steps, beside the step time of train_epoch itself run uninstrumented (the difference is what the
timing costs); then torch.profiler's top ops by self CPU time. The chapter's: its epochs (the comparison's own,
timed coarsely) split into worker start-up and first batch, waiting for the DataLoader's next batch, the
step's own work, and the test-set evaluation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench import UserError
from bench.measure.host import parse_device
from bench.studies.training.data import FashionMNIST, load, write_idx
from bench.studies.training.model import effective_regime, prepare, train_one
from bench.studies.training.presets import REGIMES
from bench.tools.step_profile import CHAPTER_WORKERS, ChapterTimings, format_profiles, profile_ours


def write_idx_folder(ds: FashionMNIST, root: Path) -> None:
    """Uncompressed IDX files in torchvision's layout, root/FashionMNIST/raw, from the loaded tensors."""
    write_idx(ds, root / "FashionMNIST" / "raw")


# --- the chapter's code, nearly verbatim (d2l's softmax regression from scratch) ---------------------------

def softmax(X):
    X_exp = torch.exp(X)
    partition = X_exp.sum(1, keepdim=True)
    return X_exp / partition


def cross_entropy(y_hat, y):
    return -torch.log(y_hat[range(len(y_hat)), y])


class Accumulator:
    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]  # noqa: B905 (the chapter's code)

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat, y):
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy(net, data_iter):
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def sgd(params, lr, batch_size):
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def train_epoch_ch3(net, train_iter, loss, updater):
    metric = Accumulator(3)
    for X, y in train_iter:
        y_hat = net(X)
        l = loss(y_hat, y)  # noqa: E741 (the chapter's name)
        l.sum().backward()
        updater(X.shape[0])
        metric.add(float(l.sum()), accuracy(y_hat, y), y.numel())
    return metric[0] / metric[2], metric[1] / metric[2]



def chapter_pipeline(root: Path, epochs: int, seed: int, log=print,
                     timings: ChapterTimings | None = None) -> tuple[float, float, float]:
    """The chapter's code, nearly verbatim. Returns (train loss, train acc, test acc) of the last epoch.

    With `timings`, every epoch's training batches go through timings.wrap (the DataLoader waits and the
    steps between them) and its evaluation is timed; without, the loop is exactly the chapter's."""
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:  # optional: only the chapter's own pipeline needs it
        raise UserError(f"the chapter's pipeline needs torchvision, which does not import here ({exc}); "
                        f"install it beside your torch (pip install -e '.[chapter]', or `make setup`, which pins "
                        f"torchvision 0.29.1 with torch 2.14.1).") from None
    from torch.utils import data

    torch.manual_seed(seed)
    trans = transforms.ToTensor()
    mnist_train = torchvision.datasets.FashionMNIST(root=str(root), train=True, transform=trans, download=False)
    mnist_test = torchvision.datasets.FashionMNIST(root=str(root), train=False, transform=trans, download=False)
    batch_size = 256
    train_iter = data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=CHAPTER_WORKERS)
    test_iter = data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=CHAPTER_WORKERS)

    num_inputs, num_outputs = 784, 10
    W = torch.normal(0, 0.01, size=(num_inputs, num_outputs), requires_grad=True)
    b = torch.zeros(num_outputs, requires_grad=True)

    def net(X):
        return softmax(torch.matmul(X.reshape((-1, W.shape[0])), W) + b)

    lr = 0.1
    for epoch in range(epochs):
        batches = train_iter if timings is None else timings.wrap(train_iter)
        train_loss, train_acc = train_epoch_ch3(net, batches, cross_entropy, lambda n: sgd([W, b], lr, n))
        mark = time.perf_counter()
        test_acc = evaluate_accuracy(net, test_iter)
        if timings is not None:
            timings.evaluate_s.append(time.perf_counter() - mark)
        log(f"  chapter epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, train acc {train_acc:.4f}, "
            f"test acc {test_acc:.4f}")
    if timings is not None and timings.kept:
        # The same step again on batches already in memory, with no worker process left: its own cost, without
        # the DataLoader's workers competing for the cores. (W, b train on; the results above are final.)
        start = time.perf_counter()
        train_epoch_ch3(net, timings.kept, cross_entropy, lambda n: sgd([W, b], lr, n))
        timings.alone_step_s = (time.perf_counter() - start) / len(timings.kept)
    return train_loss, train_acc, test_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=REGIMES["standard"].epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for our pipeline (the chapter's runs on the CPU)")
    parser.add_argument("--profile", action="store_true",
                        help="then show where a training step's time goes, ours phase by phase and the chapter's "
                             "DataLoader waits (adds a few seconds)")
    args = parser.parse_args(argv)
    try:
        if args.epochs < 1:
            raise UserError(f"--epochs must be at least 1, not {args.epochs}.")
        device = parse_device(args.device)
        import softmax_impls

        naive = softmax_impls.get("naive")
        regime = effective_regime(REGIMES["standard"], epochs=args.epochs)

        # Ours first: end to end from the files on disk (the cache) to the last epoch's test accuracy.
        start = time.perf_counter()
        ds = load()
        loaded = time.perf_counter()
        data = prepare(ds, device, torch.float32, regime.pixel_scale)
        ours = train_one(naive, regime, data, device, torch.float32, args.seed)
        ours_s = time.perf_counter() - start
        print(f"ours:    {ours_s:7.2f} s (load {loaded - start:.2f} s, training {ours.seconds:.2f} s); "
              f"train loss {ours.train_loss:.4f}, train acc {ours.train_acc:.4f}, test acc {ours.test_acc:.4f}",
              flush=True)
        # Profiled now, while the prepared tensors exist, and printed after the comparison.
        step_profile = profile_ours(naive, regime, data, device, torch.float32, args.seed) if args.profile else None
        timings = ChapterTimings() if args.profile else None

        with tempfile.TemporaryDirectory(prefix="softmax-bench-chapter-") as tmp:
            write_idx_folder(ds, Path(tmp))
            del ds, data
            start = time.perf_counter()
            with warnings.catch_warnings():
                # The chapter's code warns (4 workers on a 2-core box; float() of a tensor that requires
                # grad): that is what it does, so the warnings are silenced rather than the code changed.
                warnings.simplefilter("ignore", UserWarning)
                loss, train_acc, test_acc = chapter_pipeline(Path(tmp), args.epochs, args.seed,
                                                             log=lambda m: print(m, file=sys.stderr, flush=True),
                                                             timings=timings)
            chapter_s = time.perf_counter() - start
        print(f"chapter: {chapter_s:7.2f} s (torchvision + ToTensor + DataLoader, {CHAPTER_WORKERS} workers); "
              f"train loss {loss:.4f}, train acc {train_acc:.4f}, test acc {test_acc:.4f}")
        print(f"speed-up: {chapter_s / ours_s:.1f}x over {args.epochs} epochs "
              f"(test accuracy {ours.test_acc:.4f} vs {test_acc:.4f}, difference {ours.test_acc - test_acc:+.4f})")
        if step_profile is not None and timings is not None:
            print()
            print(format_profiles(step_profile, timings, chapter_s))
    except UserError as exc:
        print(f"softmax-bench: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
