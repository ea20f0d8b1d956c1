"""The chapter's training on the real Fashion-MNIST, the raw-pixels stress regime, and `softmax-bench train`.

Seeds are fixed (0), so the numbers asserted here are the ones a user gets with `softmax-bench train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

import softmax_impls
from bench.cli import main as cli_main
from bench.store.rows import FASHION_LABELS
from bench.store.run import Run
from bench.studies.training import command, data, model, sweep
from bench.studies.training.presets import NUM_PREDICTIONS, REGIMES
from softmax_impls import Variant

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def standard_data(fashion: data.FashionMNIST) -> model.DeviceData:
    return model.prepare(fashion, CPU, torch.float32, REGIMES["standard"].pixel_scale)


@pytest.fixture(scope="module")
def raw_data(fashion: data.FashionMNIST) -> model.DeviceData:
    return model.prepare(fashion, CPU, torch.float32, REGIMES["raw-pixels"].pixel_scale)


@pytest.fixture(scope="module")
def small(fashion: data.FashionMNIST) -> data.FashionMNIST:
    """The real data cut to its first 6000 training images: for tests of plumbing, not of accuracy."""
    return dataclasses.replace(fashion, train_images=fashion.train_images[:6000],
                               train_labels=fashion.train_labels[:6000])


def test_the_chapter_is_reproduced(standard_data: model.DeviceData, fashion: data.FashionMNIST) -> None:
    """naive softmax, float32, lr 0.1, batch 256, 10 epochs: the chapter's asserts and the 0.82-0.86 band."""
    r = model.train_one(softmax_impls.get("naive"), REGIMES["standard"], standard_data, CPU, torch.float32,
                           seed=0, images=fashion.test_images[:NUM_PREDICTIONS])
    assert [h["epoch"] for h in r.history] == list(range(1, 11))
    assert r.train_loss < 0.5, r.history
    assert r.train_acc > 0.7 and r.test_acc > 0.7, r.history
    assert 0.82 <= r.test_acc <= 0.86, r.history
    assert r.diverged_step is None and r.status == "ok"
    assert r.history[0]["train_loss"] > r.history[-1]["train_loss"]  # it learns
    # predict_ch3: the first test images with true and predicted label names; the first is an ankle boot.
    assert len(r.predictions) == NUM_PREDICTIONS
    first = r.predictions[0]
    assert first["label"] == 9 and first["label_name"] == "ankle boot"
    assert all(p["predicted_name"] == FASHION_LABELS[p["predicted"]] for p in r.predictions)
    assert sum(p["label"] == p["predicted"] for p in r.predictions) >= NUM_PREDICTIONS * 0.7
    assert bytes.fromhex(first["pixels"]) == fashion.test_images[0].numpy().tobytes()


@pytest.mark.parametrize("name", ["naive", "max_subtracted"])
def test_raw_pixels_unstable_variants_diverge(name: str, raw_data: model.DeviceData) -> None:
    """Pixels 0-255 put logits in the hundreds at once: exp overflows (naive) or p[target] rounds to 0
    (max_subtracted), and the loss turns NaN. One epoch shows it: it happens in the first steps."""
    regime = dataclasses.replace(REGIMES["raw-pixels"], epochs=1)
    r = model.train_one(softmax_impls.get(name), regime, raw_data, CPU, torch.float32, seed=0)
    assert r.status == "ok"  # a diverged run is a result, not a crash
    assert r.diverged_step is not None and r.diverged_step <= 5
    assert math.isnan(r.train_loss)
    assert r.test_acc < 0.2  # NaN weights predict one class
    assert json.loads(json.dumps(r.to_json()))["train_loss"] is None  # strict JSON, no NaN literal


@pytest.mark.parametrize("name", ["logsumexp", "torch"])
def test_raw_pixels_stable_variants_keep_training(name: str, raw_data: model.DeviceData) -> None:
    """The fused log-softmax keeps every loss finite: after the chapter's 10 epochs the model still
    classifies (test accuracy oscillates between ~0.6 and ~0.82 from epoch to epoch in this regime)."""
    r = model.train_one(softmax_impls.get(name), REGIMES["raw-pixels"], raw_data, CPU, torch.float32, seed=0)
    assert r.diverged_step is None
    assert all(math.isfinite(h["train_loss"]) for h in r.history)
    assert len(r.history) == 10 and r.test_acc > 0.6, r.history


def test_seed_makes_runs_repeatable(small: data.FashionMNIST) -> None:
    d = model.prepare(small, CPU, torch.float32, REGIMES["standard"].pixel_scale)
    regime = dataclasses.replace(REGIMES["standard"], epochs=1)
    a, b, c = (model.train_one(softmax_impls.get("torch"), regime, d, CPU, torch.float32, seed=s)
               for s in (3, 3, 4))
    assert a.history == b.history and a.history != c.history


def _rows(run: Run, table: str) -> int:
    return len(run.read(table))


def test_train_into_writes_rows_resumes_and_survives_failures(tmp_path: Path, small: data.FashionMNIST) -> None:
    def broken_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this kernel is broken")

    base = softmax_impls.get("torch")
    failing = Variant("fails", "raises in cross_entropy", base.softmax, broken_ce)
    gpu_only = Variant("gpu_only", "declares CUDA only", base.softmax, base.cross_entropy, devices=("cuda",))
    variants = [softmax_impls.get("naive"), failing, gpu_only, softmax_impls.get("logsumexp")]
    run = Run.create(tmp_path, ["test"], {})
    results = sweep.train_into(run, variants, ["standard"], CPU, seed=0, epochs=2, dataset=small)
    by_name = {r.variant: r for r in results}
    assert [r.variant for r in results] == ["naive", "fails", "gpu_only", "logsumexp"]
    assert by_name["fails"].status == "error" and "this kernel is broken" in by_name["fails"].message
    assert by_name["gpu_only"].status == "skipped" and "cuda" in by_name["gpu_only"].message
    assert by_name["naive"].status == by_name["logsumexp"].status == "ok"  # the sweep went on

    rows = run.read("training")
    ok = rows[rows["variant"] == "logsumexp"]
    assert sorted(ok[ok["epoch"].notna()]["metric"]) == sorted(["train_loss", "train_acc", "test_acc"] * 2)
    assert set(ok[ok["epoch"].isna()]["metric"]) == {"seconds", "diverged_step"}
    assert set(rows[rows["variant"] == "fails"]["status"]) == {"error"}
    assert set(rows[rows["variant"] == "gpu_only"]["status"]) == {"skipped"}
    assert _rows(run, "predictions") == 2 * NUM_PREDICTIONS

    # Resuming trains nothing again: the results are rebuilt from the rows, no row is added.
    before = (_rows(run, "training"), _rows(run, "predictions"))
    again = sweep.train_into(Run.open(run.path), variants, ["standard"], CPU, seed=0, epochs=2, dataset=small)
    assert all(r.resumed for r in again)
    assert (_rows(run, "training"), _rows(run, "predictions")) == before
    resumed = {r.variant: r for r in again}
    assert resumed["logsumexp"].test_acc == pytest.approx(by_name["logsumexp"].test_acc)
    assert resumed["logsumexp"].history == by_name["logsumexp"].history  # CSV keeps floats exactly
    assert resumed["fails"].status == "error"
    table = command.format_table(again)
    assert "logsumexp" in table and "(resumed)" in table


def test_low_precision_trains_in_both_dtypes(tmp_path: Path, small: data.FashionMNIST) -> None:
    run = Run.create(tmp_path, ["test"], {})
    results = sweep.train_into(run, [softmax_impls.get("logsumexp")], ["low-precision"], CPU, seed=0,
                                  epochs=1, dataset=small)
    assert [(r.dtype, r.status) for r in results] == [("float16", "ok"), ("bfloat16", "ok")]
    assert all(r.test_acc > 0.6 for r in results)
    # Really trained in that dtype: float16 and bfloat16 round differently, so the runs differ.
    assert results[0].history != results[1].history


def test_train_command_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", "--variant", "torch", "--regime", "high-lr", "--epochs", "1", "--batch-size", "1024",
                     "--json", "--results-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0
    (line,) = out.out.strip().splitlines()  # one JSON object per run, nothing else on stdout
    obj = json.loads(line)
    for key in ("variant", "regime", "device", "dtype", "epochs", "train_loss", "train_acc", "test_acc",
                "diverged_step", "seconds", "history"):
        assert key in obj
    assert (obj["variant"], obj["regime"], obj["device"], obj["dtype"], obj["epochs"]) == \
        ("torch", "high-lr", "cpu", "float32", 1)
    assert obj["lr"] == 10.0 and obj["batch_size"] == 1024 and len(obj["history"]) == 1
    assert "test acc" in out.err  # the table goes to stderr with --json
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "training.csv").is_file() and (run_dir / "predictions.csv").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--regime", "tiny"], "known regimes: standard, raw-pixels, high-lr, low-precision"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be a positive"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--variant", "nope"], "registered variants: "),
    (["--device", "tpu"], "device 'tpu'"),
])
def test_train_command_user_errors(argv: list[str], words: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", *argv, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and words in err.replace("\n", " ") and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_train_speed_runs_both_pipelines_on_the_same_data(capsys):
    # One epoch of each: the chapter's torchvision/DataLoader pipeline and ours, on the real dataset.
    from bench.tools import train_speed

    assert train_speed.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    accs = [float(m) for m in re.findall(r"test acc (0\.\d+)", out)]
    assert len(accs) == 2 and min(accs) > 0.7 and abs(accs[0] - accs[1]) < 0.05  # same recipe, same data
    assert re.search(r"speed-up: \d+\.\dx over 1 epochs", out)
    assert train_speed.main(["--epochs", "0"]) == 2
