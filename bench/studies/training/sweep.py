"""Many training runs into a run folder: every (regime, dtype, variant), resumable, rows as they come."""


from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from bench import progress
from bench.measure.host import dtype_name, dtype_skip_reason, parse_dtype
from bench.measure.sandbox import UnitTimeout, contained, deadline
from bench.store.rows import PredictionRow, TrainingRow
from bench.store.run import Run
from bench.studies.common import (
    TRAIN_TIMEOUT_S,
    classify_failure,
    pick,
)
from bench.studies.training.data import FashionMNIST
from bench.studies.training.model import DeviceData, TrainResult, effective_regime, prepare, summary, train_one
from bench.studies.training.presets import NUM_PREDICTIONS, REGIMES, Regime
from softmax_impls import Variant

UNITS = {"train_loss": "nats/sample", "train_acc": "fraction", "test_acc": "fraction", "seconds": "s",
         "diverged_step": "step"}



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
    from bench.studies.training import data as data_module

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
                progress.log(f"[{result.variant} {result.regime} {result.dtype}] " + summary(result))
                results.append(result)
            del prepared  # free the device copy before the next dtype/regime
    return results


