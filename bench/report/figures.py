"""The report's figures, drawn with seaborn from the tables in bench/report/ (PNG, Agg backend).

Each function takes the frames it draws and a target path, writes one PNG, and returns the path (or None
when there is nothing to draw). Every figure has a title and axes that say their units.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or a server; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from bench.fmt import shape  # noqa: E402
from bench.report.bundle import REFERENCE  # noqa: E402

DPI = 110
sns.set_theme(context="notebook", style="whitegrid")


def _palette(variants: list[str]) -> dict[str, Any]:
    """One colour per variant name, the same in every figure of a report; the baseline `torch` is black.

    tab10 plus Dark2 gives 18 colours that stay apart (husl's evenly spaced hues made neighbours such as
    narrow and native indistinguishable once a report held eleven variants).
    """
    others = [v for v in variants if v != REFERENCE]
    colours = sns.color_palette("tab10") + sns.color_palette("Dark2")
    palette: dict[str, Any] = {v: colours[i % len(colours)] for i, v in enumerate(others)}
    if REFERENCE in variants:
        palette[REFERENCE] = (0.0, 0.0, 0.0)
    return {v: palette[v] for v in variants}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _largest_per_length(d: pd.DataFrame) -> pd.DataFrame:
    """For each row length keep the shape with the most rows, so one line per variant reads left to right."""
    most = d.groupby("cols")["rows"].transform("max")
    return d[d["rows"] == most].sort_values("cols")


def bandwidth(wide: pd.DataFrame, device_name: str, palette: dict[str, Any], path: Path) -> Path | None:
    """GB/s vs row length per variant, rows of panels = dtype, columns = op; the copy bandwidth as roofline."""
    d = wide[(wide["device_name"] == device_name)]
    if d.empty or "gbps" not in d:
        return None
    d = d[d["gbps"].notna()]
    dtypes, ops = sorted(set(d["dtype"])), sorted(set(d["op"]))
    fig, axes = plt.subplots(len(dtypes), len(ops), figsize=(4.2 * len(ops), 3.4 * len(dtypes)),
                             squeeze=False, sharex=True)
    for i, dtype in enumerate(dtypes):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            cell = _largest_per_length(d[(d["dtype"] == dtype) & (d["op"] == op)])
            if cell.empty:
                ax.set_visible(False)
                continue
            sns.lineplot(cell, x="cols", y="gbps", hue="variant", palette=palette, marker="o", ax=ax,
                         estimator=None, legend=(i == 0 and j == len(ops) - 1))
            if "copy_gbps" in cell:
                roof = cell.groupby("cols")["copy_gbps"].median()
                # a marker too: a panel with one row length has no line to draw, only the point
                ax.plot(roof.index, roof.values, "k--", lw=1.5, marker="_", ms=16, mew=2, label="copy (roofline)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{dtype} · {op}", fontsize=10)
            ax.set_xlabel("row length (elements)")
            ax.set_ylabel("effective bandwidth (GB/s)")
    handles, labels = [], []
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab, strict=False):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
        if ax.get_legend():
            ax.get_legend().remove()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    fig.suptitle(f"Effective bandwidth vs row length on {device_name} (dashed: measured copy bandwidth)",
                 y=1.04, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def speedup(wide: pd.DataFrame, device_name: str, palette: dict[str, Any], path: Path) -> Path | None:
    """Speed relative to torch per shape (bars; > 1 is faster), panels = op, float32 or the first dtype."""
    d = wide[(wide["device_name"] == device_name) & (wide["variant"] != REFERENCE)]
    if d.empty or "speedup_vs_torch" not in d or d["speedup_vs_torch"].notna().sum() == 0:
        return None
    d = d[d["speedup_vs_torch"].notna()]
    dtypes = sorted(set(d["dtype"]))
    ops = sorted(set(d["op"]))
    fig, axes = plt.subplots(len(dtypes), len(ops), figsize=(4.2 * len(ops), 3.4 * len(dtypes)), squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            cell = d[(d["dtype"] == dtype) & (d["op"] == op)].sort_values(["rows", "cols"])
            if cell.empty:
                ax.set_visible(False)
                continue
            cell = cell.assign(shape=[shape(r, c) for r, c in zip(cell["rows"], cell["cols"], strict=False)])
            order = list(dict.fromkeys(cell.sort_values(["cols", "rows"])["shape"]))
            sns.barplot(cell, x="shape", y="speedup_vs_torch", hue="variant", palette=palette, order=order,
                        ax=ax, legend=False)
            ax.axhline(1.0, color="k", lw=1, ls="--")
            ax.set_yscale("log")
            # plain "2×" ticks read faster than 2·10^0
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{dtype} · {op}", fontsize=10)
            ax.set_xlabel("shape (rows × row length)")
            ax.set_ylabel("speed vs torch (×, log)")
            ax.tick_params(axis="x", rotation=45, labelsize=8)
    present = [v for v in palette if v in set(d["variant"])]
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[v]) for v in present]
    fig.legend(handles, present, loc="upper center", ncol=min(6, len(present)), bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    fig.suptitle(f"Speed relative to torch on {device_name} (median time of torch / median time; above 1 = faster)",
                 y=1.04, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# a wrong output is a failure (red); a timeout or out-of-memory is, like an error, no measurement (orange)
RESULT_CODES = {"pass": 0, "fail": 1, "wrong": 1, "error": 2, "timeout": 2, "oom": 2, "skipped": 3, "—": 3}
RESULT_COLOURS = ListedColormap(["#8fd19e", "#f08a8a", "#f5c26b", "#dddddd"])


def stability_heatmap(cells: pd.DataFrame, device_name: str, path: Path) -> Path | None:
    """Variant x family per dtype: green pass, red fail, orange error, grey not measured; text = max error."""
    d = cells[cells["device_name"] == device_name]
    if d.empty:
        return None
    dtypes = [t for t in ("float64", "float32", "float16", "bfloat16") if t in set(d["dtype"])]
    dtypes += sorted(set(d["dtype"]) - set(dtypes))
    families = sorted(set(d["family"]))
    variants = sorted(set(d["variant"]))
    width = max(6.0, 0.9 * len(families) + 2)
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(width, (0.45 * len(variants) + 1.2) * len(dtypes)),
                             squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes, strict=False):
        g = d[d["dtype"] == dtype]
        codes = np.full((len(variants), len(families)), 3.0)
        text = np.full(codes.shape, "", dtype=object)
        for _, r in g.iterrows():
            i, j = variants.index(r["variant"]), families.index(r["family"])
            codes[i, j] = RESULT_CODES.get(r["result"], 3)
            err = r["max_err_u"]
            label = {"pass": "", "fail": "✗ ", "wrong": "wrong ", "error": "err ", "timeout": "timeout",
                     "oom": "oom", "skipped": "skip"}.get(r["result"], "")
            nonfinite = r["nonfinite"]
            if r["result"] == "fail" and isinstance(nonfinite, float) and nonfinite > 0:
                label += "inf/NaN"  # the error of the finite outputs alone would understate the failure
            elif not (isinstance(err, float) and math.isnan(err)):
                label += "∞" if math.isinf(err) else (f"{err:.0e}" if err >= 1e3 else f"{err:.3g}")
            text[i, j] = label
        sns.heatmap(pd.DataFrame(codes, index=variants, columns=families), ax=ax, cmap=RESULT_COLOURS,
                    vmin=-0.5, vmax=3.5, cbar=False, annot=pd.DataFrame(text), fmt="", linewidths=0.5,
                    linecolor="white", annot_kws={"fontsize": 8})
        ax.set_title(f"{dtype}: max relative error in units of u (✗ = failed; inf/NaN = non-finite outputs)",
                     fontsize=10)
        ax.set_xlabel("input family")
        ax.set_ylabel("variant")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.tick_params(axis="y", rotation=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=RESULT_COLOURS(i)) for i in range(4)]
    fig.legend(handles, ["pass", "fail / wrong", "error / timeout / oom", "not measured"], loc="upper center", ncol=4,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(f"Stability on {device_name}: every family per variant and dtype", y=1.03, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def thresholds(th: pd.DataFrame, palette: dict[str, Any], path: Path) -> Path | None:
    """Largest |logit| still handled correctly, per variant (bars) and dtype (panels columns), per kind."""
    d = th[(th["status"] == "ok") & th["threshold"].notna()].copy()
    if d.empty:
        return None
    op = "softmax" if "softmax" in set(d["op"]) else sorted(set(d["op"]))[0]
    d = d[d["op"] == op]
    # "never broke" is stored as inf (or the dtype's max): such bars are drawn hatched at the top of the axis
    top = d["dtype"].map(lambda t: float(torch.finfo(getattr(torch, t)).max) if hasattr(torch, t) else math.inf)
    d["never"] = d["threshold"].abs() >= 0.99 * top
    broke = d.loc[~d["never"], "threshold"].abs().clip(lower=1e-3)
    ceiling = float(broke.max()) * 8 if len(broke) else 1000.0
    floor = max(float(broke.min()) / 4, 1e-3) if len(broke) else 1.0
    d["magnitude"] = d["threshold"].abs().where(~d["never"], ceiling).clip(lower=1e-3)
    kinds = sorted(set(d["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds), 4.0), squeeze=False)
    handles: list[Any] = []
    for ax, kind in zip(axes[0], kinds, strict=False):
        g = d[d["kind"] == kind].groupby(["variant", "dtype"], as_index=False)["magnitude"].min()
        order = [t for t in ("float64", "float32", "float16", "bfloat16") if t in set(g["dtype"])]
        sns.barplot(g, x="dtype", y="magnitude", hue="variant", palette=palette, order=order, ax=ax)
        ax.set_yscale("log")
        ax.set_ylim(floor, ceiling * 3)
        for bar in ax.patches:
            if bar.get_height() >= ceiling * 0.999:
                bar.set_hatch("///")
                bar.set_alpha(0.45)
            elif bar.get_height() > 0:
                ax.annotate(f"{bar.get_height():.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_title(f"{kind} ({op})", fontsize=10)
        ax.set_xlabel("dtype")
        ax.set_ylabel("threshold |logit| (log scale)")
        handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend():
            ax.get_legend().remove()  # one legend beside the panels: inside one, it covered the bars
    if handles:
        fig.legend(handles, labels, title="variant", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Where each variant stops being correct (higher is better; hatched bars at the top: never broke "
                 "within the dtype's range)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


DTYPE_STYLES = {"float32": "-", "float64": "-.", "bfloat16": "--", "float16": ":"}


def training_curves(tr: pd.DataFrame, final: pd.DataFrame, steps_per_epoch: dict[str, float],
                    palette: dict[str, Any], path: Path) -> Path | None:
    """The chapter's Animator as a static figure: loss, train acc, test acc per epoch, per regime.

    A diverged run is marked with an ✕ at the epoch its loss first became non-finite.
    """
    d = tr[(tr["status"] == "ok") & tr["epoch"].notna() & tr["metric"].isin(["train_loss", "train_acc", "test_acc"])]
    if d.empty:
        return None
    d = d.assign(epoch=d["epoch"].astype(float), value=d["value"].astype(float))
    regimes = list(dict.fromkeys(d["regime"]))
    metrics = [("train_loss", "train loss (log)"), ("train_acc", "train accuracy"), ("test_acc", "test accuracy")]
    fig, axes = plt.subplots(3, len(regimes), figsize=(4.3 * len(regimes), 9), squeeze=False, sharex="col")
    for j, regime in enumerate(regimes):
        g = d[d["regime"] == regime]
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            m = g[g["metric"] == metric].replace([np.inf, -np.inf], np.nan)
            if metric == "train_loss":
                m = m[m["value"] > 0]
            for (variant, dtype), s in m.groupby(["variant", "dtype"]):
                s = s.sort_values("epoch")
                ax.plot(s["epoch"], s["value"], marker="o", ms=3, ls=DTYPE_STYLES.get(dtype, "-."),
                        color=palette.get(variant))
            if metric == "train_loss":
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1)
            div = final[(final["regime"] == regime) & final["diverged"]]
            for _, r in div.iterrows():
                step = r["diverged_step"]
                spe = steps_per_epoch.get(regime)
                x = (float(step) / spe) if spe and not (isinstance(step, float) and math.isnan(step)) else 1.0
                y = ax.get_ylim()[1]
                ax.plot([x], [y], marker="X", ms=10, color=palette.get(r["variant"]), clip_on=False,
                        ls="none", markeredgecolor="k")
                ax.axvline(x, color=palette.get(r["variant"]), ls=":", lw=1)
            if i == 0:
                ax.set_title(regime, fontsize=11)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
    # One legend entry per variant (colour) and per dtype (line style), beside the panels so it never covers
    # a curve or a title: a legend entry per (variant, dtype) series grew past the figure and buried it.
    handles = [plt.Line2D([], [], color=palette.get(v), marker="o", ms=4, label=v) for v in sorted(set(d["variant"]))]
    handles += [plt.Line2D([], [], color="grey", ls=style, label=dtype)
                for dtype, style in DTYPE_STYLES.items() if dtype in set(d["dtype"])]
    handles.append(plt.Line2D([], [], marker="X", color="grey", ls="none", markeredgecolor="k", ms=9,
                              label="loss became non-finite"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Training curves per regime: train loss, train accuracy, test accuracy per epoch", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def prediction_grid(pr: pd.DataFrame, labels: tuple[str, ...], path: Path, columns: int = 6) -> Path | None:
    """The chapter's predict_ch3: the first test images with true and predicted labels (red when wrong).

    The images are tiled into one array and drawn on a single axes: one imshow instead of one subplot per
    image keeps the figure cheap to lay out.
    """
    if pr.empty:
        return None
    pr = pr.sort_values("index")
    n = len(pr)
    rows = math.ceil(n / columns)
    cell_w, cell_h = 34, 46  # pixels per tile: the 28x28 image, padding, and room for two lines of text
    mosaic = np.full((rows * cell_h, columns * cell_w), 0, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(1.9 * columns, 2.5 * rows))

    def name(i: Any) -> str:
        return labels[int(i)] if 0 <= int(i) < len(labels) else str(i)

    for k, (_, r) in enumerate(pr.iterrows()):
        y0, x0 = (k // columns) * cell_h + (cell_h - 31), (k % columns) * cell_w + 3
        try:
            image = np.frombuffer(bytes.fromhex(str(r["pixels"])), dtype=np.uint8).reshape(28, 28)
        except ValueError:
            image = np.zeros((28, 28), dtype=np.uint8)  # a damaged cell: show blank, keep the labels
        mosaic[y0:y0 + 28, x0:x0 + 28] = image
        right = int(r["predicted"]) == int(r["label"])
        ax.text(x0 + 14, y0 - 2, f"true: {name(r['label'])}\npred: {name(r['predicted'])}", ha="center",
                va="bottom", fontsize=8, color="black" if right else "#c0392b")
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    first = pr.iloc[0]
    correct = int((pr["predicted"].astype(int) == pr["label"].astype(int)).sum())
    ax.set_title(f"Predictions of {first['variant']} ({first['regime']}, {first['dtype']}) on the first {n} test "
                 f"images: {correct}/{n} right (red = wrong)", fontsize=11)
    return _save(fig, path)
