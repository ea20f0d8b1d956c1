"""The training section: readings, curves, the last epochs and the prediction grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.fmt import _nan, fmt
from bench.report import figures as F
from bench.report.bundle import Bundle
from bench.report.render import Doc
from bench.store.rows import CHAPTER_BATCH_SIZE, FASHION_LABELS, REGIME_NAMES

# --- training ------------------------------------------------------------------------------------------

TR_KEY = ["run", "host", "device_name", "device", "variant", "regime", "dtype", "seed"]


def training_final(bundle: Bundle) -> pd.DataFrame:
    """One row per training run: last epoch's metrics, seconds, and where (if) it diverged."""
    tr = bundle.tables["training"]
    cols = TR_KEY + ["epochs", "train_loss", "train_acc", "test_acc", "seconds", "diverged_step", "diverged",
                     "status", "message"]
    if tr.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for k, g in tr.groupby(TR_KEY, sort=True, dropna=False):
        rec: dict[str, Any] = dict(zip(TR_KEY, k, strict=False))
        per_epoch = g[g["epoch"].notna() & (g["status"] == "ok")]
        whole = g[g["epoch"].isna() & (g["status"] == "ok")]
        rec["epochs"] = int(per_epoch["epoch"].max()) if len(per_epoch) else 0
        for m in ("train_loss", "train_acc", "test_acc"):
            s = per_epoch[per_epoch["metric"] == m].sort_values("epoch")["value"]
            rec[m] = float(s.iloc[-1]) if len(s) else float("nan")
        for m in ("seconds", "diverged_step"):
            s = whole[whole["metric"] == m]["value"]
            rec[m] = float(s.iloc[-1]) if len(s) else float("nan")
        loss = per_epoch[per_epoch["metric"] == "train_loss"]["value"]
        rec["diverged"] = bool(not _nan(rec["diverged_step"]) or (len(loss) and not np.isfinite(loss).all()))
        bad = g[g["status"] != "ok"]
        rec["status"] = str(bad["status"].iloc[0]) if len(bad) else "ok"
        rec["message"] = str(bad["message"].iloc[0])[:200] if len(bad) else ""
        out.append(rec)
    return pd.DataFrame(out, columns=cols)


def training_table(final: pd.DataFrame) -> pd.DataFrame:
    if final.empty:
        return pd.DataFrame()
    rows = []
    for _, r in final.iterrows():
        div = f"step {int(r['diverged_step'])}" if not _nan(r["diverged_step"]) else ("yes" if r["diverged"] else "no")
        rows.append({"host": r["host"], "device": r["device_name"], "regime": r["regime"], "variant": r["variant"],
                     "dtype": r["dtype"], "seed": r["seed"], "epochs": r["epochs"],
                     "train loss": fmt(r["train_loss"]), "train acc": fmt(r["train_acc"]),
                     "test acc": fmt(r["test_acc"]), "diverged": div, "seconds": fmt(r["seconds"]),
                     "status": r["status"] if r["status"] == "ok" else f"{r['status']}: {r['message']}"})
    return pd.DataFrame(rows)


def training_reading(final: pd.DataFrame) -> list[str]:
    if final.empty:
        return ["No training row is stored, so there is nothing to read yet."]
    out = []
    for regime, g in final.groupby("regime", sort=False):
        # A skipped or failed run trained nothing: it neither kept a finite loss nor diverged.
        not_run = g[g["status"] != "ok"]
        g = g[g["status"] == "ok"]
        kept = g[~g["diverged"]]
        div = g[g["diverged"]]
        text = f"{regime}: "
        if len(kept):
            lo, hi = kept["test_acc"].min(), kept["test_acc"].max()
            several = g["dtype"].nunique() > 1  # name the dtype when a regime trains in more than one
            names = ", ".join(sorted(set(kept["variant"] + (" (" + kept["dtype"] + ")" if several else ""))))
            text += (f"{names} kept finite losses and reached test accuracy {fmt(lo)}"
                     + (f" to {fmt(hi)}" if hi - lo > 5e-4 else ""))
        if len(div):
            parts = []
            for _, r in div.iterrows():
                at = f"step {int(r['diverged_step'])}" if not _nan(r["diverged_step"]) else "an unknown step"
                parts.append(f"{r['variant']} ({r['dtype']}) at {at}, ending at test accuracy {fmt(r['test_acc'])}")
            text += ("; " if len(kept) else "") + "diverged to a non-finite loss: " + "; ".join(parts)
        if len(not_run):
            names = ", ".join(sorted(set(not_run["variant"] + " (" + not_run["status"] + ")")))
            text += ("; " if len(g) else "") + f"not trained: {names}"
        out.append(text + ".")
    return out


def predictions_table(bundle: Bundle, regime: str = "standard") -> pd.DataFrame:
    from bench.store.rows import FASHION_LABELS

    pr = bundle.tables["predictions"]
    if pr.empty:
        return pd.DataFrame()
    pr = pr[pr["regime"] == regime] if (pr["regime"] == regime).any() else pr
    first = pr.drop_duplicates(["run", "device", "dtype", "seed", "regime"]).iloc[0]
    pr = pr[(pr["run"] == first["run"]) & (pr["device"] == first["device"]) & (pr["seed"] == first["seed"])
            & (pr["dtype"] == first["dtype"]) & (pr["regime"] == first["regime"])]

    def name(i: Any) -> str:
        return FASHION_LABELS[int(i)] if not _nan(i) and 0 <= int(i) < len(FASHION_LABELS) else str(i)

    wide = pr.pivot_table(index=["index", "label"], columns="variant", values="predicted", aggfunc="first")
    out = pd.DataFrame({"test image": [i for i, _ in wide.index], "true": [name(lab) for _, lab in wide.index]})
    for v in wide.columns:
        out[v] = [name(p) + ("" if p == lab else " ✗") for p, (_, lab) in zip(wide[v], wide.index, strict=False)]
    return out


def _steps_per_epoch(bundle: Bundle) -> dict[str, float]:
    """Minibatches per epoch per regime, to place divergence: from run.json's presets, else (a run.json that
    lost them) the chapter's batch size for every regime trained."""
    out: dict[str, float] = {}
    n_train = 60000
    for run in bundle.runs:
        for cmd in run.info.get("commands") or []:
            regimes = ((cmd.get("presets") or {}).get("training") or {}).get("regimes") or {}
            for name, preset in regimes.items():
                if isinstance(preset, dict) and preset.get("batch_size"):
                    out.setdefault(name, math.ceil(n_train / float(preset["batch_size"])))
    tr = bundle.tables["training"]
    for name in [*REGIME_NAMES, *(sorted(set(tr["regime"].astype(str))) if not tr.empty else [])]:
        out.setdefault(name, math.ceil(n_train / CHAPTER_BATCH_SIZE))
    return out


def _grid_rows(pr: pd.DataFrame) -> pd.DataFrame:
    """The chapter's own picture: the standard regime, the chapter's naive variant if present."""
    d = pr[pr["regime"] == "standard"] if (pr["regime"] == "standard").any() else pr
    variant = "naive" if (d["variant"] == "naive").any() else sorted(set(d["variant"]))[0]
    d = d[d["variant"] == variant]
    first = d.iloc[0]
    return d[(d["run"] == first["run"]) & (d["device"] == first["device"]) & (d["dtype"] == first["dtype"])
             & (d["seed"] == first["seed"])]


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """Readings, the curves, the last epochs, the prediction grid and table."""
    doc.h("Training")
    final = training_final(bundle)
    if not bundle.has("training"):
        doc.p("No run holds training.csv: not trained (run `softmax-bench train --regime all --resume RUN`).")
    else:
        doc.ul(training_reading(final))
        doc.figure(F.training_curves,
                   "Train loss (log scale), train accuracy and test accuracy per epoch, one column per regime; "
                   "✕ marks where a run's loss first became non-finite.",
                   bundle.tables["training"], final, _steps_per_epoch(bundle), palette, out / "training.png")
        doc.table(training_table(final), "Last epoch of every training run")
    pr = bundle.tables["predictions"]
    if not pr.empty:
        grid = _grid_rows(pr)
        doc.figure(F.prediction_grid, "The chapter's predict_ch3: the first test images, true and predicted labels.",
                   grid, FASHION_LABELS, out / "predictions.png")
        doc.table(predictions_table(bundle), "Predictions of every variant on the same images (✗ = wrong)")
    elif bundle.has("training"):
        doc.p("No predictions.csv: the prediction grid is not shown.")
