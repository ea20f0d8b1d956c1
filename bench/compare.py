"""softmax-bench compare: the regression gate between two runs (CI).

    softmax-bench compare results/<base> results/<new>                 # exit 1 on a regression
    softmax-bench compare BASE NEW --threshold 5% --allow-missing --fail-on-faster
    softmax-bench compare BASE NEW --base BASE2 --new NEW2             # several runs a side (best evidence)

Exit 0: NEW is no worse than BASE; 1: a regression; 2: bad input. Each figure is judged on its own: a point's
time, then every other stored figure of it (a skipped peak_bytes never hides a time). A point, variant or
figure that BASE has and NEW lacks fails unless --allow-missing; a NaN in NEW fails; a status other than ok in
NEW where BASE was ok (oom, error, skipped, wrong, timeout) fails as "newly <status>".

How a time is judged. A shared machine moves the same code by 15-40% between runs, far beyond the spread of
one run's samples (which are correlated: they share the run's minutes), so a test on samples alone cries
wolf. Measured on this 2-core machine with other jobs running (python -m bench.compare_probe, quick preset,
torch/logsumexp/naive/slowed, 10 identical runs; tests of every design on the stored runs):

- interference only ever adds time, so the figure is the fast end of the samples (their 10th percentile),
  which moves less than the median between identical runs;
- the memory copy of the same buffer, timed beside every unit, measures the machine's own drift: each
  shape's shift is divided by the median shift of the copies at that shape (the variant's code never enters
  it; a reference variant timed beside it imported that variant's own outliers and did worse);
- unchanged code still moved by up to 1.8x at a single point, consistently over all its samples (a mode of
  one process), so one point alone is not evidence: a variant (on one device and dtype) is slower only when
  more than half of its points are over the threshold with a one-sided Mann-Whitney U test at p < 0.05 on
  the samples; an isolated slow point is listed as "slower, unconfirmed" (a warning);
- on CPU, a point timed with a different number of torch threads in BASE and NEW is not comparable (a run
  picks its threads from the load it finds) and fails: pin `softmax-bench throughput --threads N`;
- one run a side still gave false alarms on a heavily loaded machine; two runs a side (--base, --new: their
  samples pooled, as asv times every benchmark in several processes) gave none in 270 pairs.

Runs without a samples table (older runs) are judged on the stored p20/p80 (NEW's p20 above BASE's p80),
and the output says the verdict rests on less evidence.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from bench import UserError
from bench import report_tables as T

ALPHA = 0.05  # per point; three samples a side, fully separated, reach p = 0.040 (the big CPU units)
FAST_END = 0.10  # the quantile of the samples that stands for a point's time
KEY = ("variant", "device", "dtype", "op", "rows", "cols")
MISSING, NEW_POINT = "missing in NEW", "new in NEW"


# --- statistics: pure, tested against hand-computed values -----------------------------------------------

def midranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks, tied values sharing the mean of their ranks, and the size of every tie group (> 1)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks, ties = [0.0] * len(values), []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        if end > start:
            ties.append(end - start + 1)
        start = end + 1
    return ranks, ties


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that `b` tends to lie above `a`: Mann-Whitney U, normal approximation with the tie
    correction and a continuity correction of 1/2. 1.0 when either side is empty or every value ties."""
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return 1.0
    n = na + nb
    ranks, ties = midranks([*a, *b])
    u = sum(ranks[na:]) - nb * (nb + 1) / 2  # pairs (a_i, b_j) with b_j > a_i, ties counting 1/2
    var = na * nb / 12 * ((n + 1) - sum(t ** 3 - t for t in ties) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - na * nb / 2 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def fast_end(samples: Sequence[float]) -> float:
    """The FAST_END quantile (linear interpolation, numpy's default) of the samples."""
    xs = sorted(samples)
    return xs[0] if len(xs) == 1 else statistics.quantiles(xs, n=round(1 / FAST_END), method="inclusive")[0]


def faster_half(samples: Sequence[float]) -> list[float]:
    """The faster ceil(n/2) samples, at least 3 (fewer can never reach p < 0.05): interference only adds time,
    so the slow half holds the neighbours' work, and a rank test on it calls a disturbed BASE 'unchanged'."""
    return sorted(samples)[:max(3, (len(samples) + 1) // 2)]


def parse_threshold(text: str) -> float:
    """'10%' or '0.10' -> 0.10. A bare number of 1 or more is refused: '10' could mean 10% or 10x."""
    s = str(text).strip()
    percent = s.endswith("%")
    try:
        value = float(s.removesuffix("%").strip())
    except ValueError:
        raise UserError(f"--threshold {text!r} is not a number; write a percentage such as 10% or a "
                        f"fraction such as 0.10.") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--threshold {text!r} must be a percentage (10%) or a fraction (0.10) of 0 or more.")
    if not percent and value >= 1:
        raise UserError(f"--threshold {text!r} is ambiguous: a bare number of 1 or more could mean {value:g}% or "
                        f"{value:g} times ({value * 100:g}%). Write it with a percent sign ({value:g}%) for "
                        f"{value:g} percent, or as a fraction below 1 ({value / 100:g}) for the same.")
    return value / 100 if percent else value


# --- throughput: every point of one side, its runs pooled --------------------------------------------------

@dataclass
class Side:
    """One point as one side (BASE or NEW) stored it: each figure's (status, value, message) per run."""

    figures: dict[str, list[tuple[str, float, str]]] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)

    def status(self, metric: str = "median_s") -> tuple[str, str]:
        """('ok', '') when every run has the figure ok, else the first other status and its message."""
        bad = [(s, m) for s, _, m in self.figures.get(metric, []) if s != "ok"]
        return bad[0] if bad else ("ok", "")

    def values(self, metric: str) -> list[float]:
        return [v for s, v, _ in self.figures.get(metric, []) if s == "ok"]


def collect(bundle: T.Bundle) -> dict[tuple[str, ...], Side]:
    points: dict[tuple[str, ...], Side] = {}
    tp = bundle.tables["throughput"]
    for row in tp.itertuples(index=False):
        side = points.setdefault(tuple(str(getattr(row, k)) for k in KEY), Side())
        value = math.nan if T._nan(row.value) else float(row.value)
        side.figures.setdefault(str(row.metric), []).append((str(row.status), value, str(row.message)))
    # the bundle loads every table of bench.results, the samples too (empty for a run older than them)
    for row in bundle.tables.get("samples", pd.DataFrame(columns=KEY)).itertuples(index=False):
        side = points.get(tuple(str(getattr(row, k)) for k in KEY))
        if side is not None:
            side.samples.append(math.nan if T._nan(row.seconds) else float(row.seconds))
    return points


def drift(base: dict[tuple, Side], new: dict[tuple, Side]) -> dict[tuple, float]:
    """(device, dtype, rows, cols) -> the median NEW/BASE ratio of the copy times at that shape (1 if none)."""
    ratios: dict[tuple, list[float]] = {}
    for key in base.keys() & new.keys():
        b, n = base[key].values("copy_gbps"), new[key].values("copy_gbps")
        b, n = [v for v in b if v > 0], [v for v in n if v > 0]
        if b and n:  # copy time is 1/GB/s: the fastest copy of each side over the fastest of the other
            ratios.setdefault(key[1:3] + key[4:], []).append(max(b) / max(n))
    # Only a slower copy counts: a faster one says nothing of compute (4096x4096: copy +19%, softmax +0%).
    return {shape: max(1.0, statistics.median(r)) for shape, r in ratios.items()}


def judge_time(b: Side, n: Side, env: float, threshold: float) -> tuple[str, float, float, str]:
    """(direction 'over' | 'under' | 'same', shift, p, evidence) of one point's time, BASE scaled by `env`."""
    if b.samples and n.samples:
        base = [x * env for x in b.samples]
        shift = fast_end(n.samples) / fast_end(base)
        fast_b, fast_n = faster_half(base), faster_half(n.samples)
        p_slow, p_fast = mann_whitney_greater(fast_b, fast_n), mann_whitney_greater(fast_n, fast_b)
        if shift > 1 + threshold and p_slow < ALPHA:
            return "over", shift, p_slow, "samples"
        if shift * (1 + threshold) < 1 and p_fast < ALPHA:
            return "under", shift, p_fast, "samples"
        return "same", shift, p_slow if shift >= 1 else p_fast, "samples"
    b20, b80, n20, n80 = (min(v) if v else math.nan for v in (b.values("p20_s"), b.values("p80_s"),
                                                               n.values("p20_s"), n.values("p80_s")))
    if not math.isnan(b20 + b80 + n20 + n80):  # older runs: the stored quantiles must not overlap
        shift = n20 / (b20 * env)
        if shift > 1 + threshold and n20 > max(b.values("p80_s")) * env:
            return "over", shift, math.nan, "p20/p80"
        if shift * (1 + threshold) < 1 and max(n.values("p80_s")) < b20 * env:
            return "under", shift, math.nan, "p20/p80"
        return "same", shift, math.nan, "p20/p80"
    shift = min(n.values("median_s")) / (min(b.values("median_s")) * env)
    return ("over" if shift > 1 + threshold else "under" if shift * (1 + threshold) < 1 else "same",
            shift, math.nan, "median only")


def point_verdict(b: Side, n: Side, cpu: bool) -> str | None:
    """The verdict of a point whose time cannot be judged (a status, NaN, threads), else None."""
    (bs, _), (ns, nmsg) = b.status(), n.status()
    if bs == "ok" and ns != "ok":
        return f"newly {ns}" + (f": {nmsg[:80]}" if nmsg else "")
    if bs != "ok":
        return "fixed" if ns == "ok" else f"still {ns}"
    if not n.values("median_s") or any(math.isnan(v) for v in n.values("median_s") + n.samples):
        return "NaN in NEW"
    if not b.values("median_s") or any(math.isnan(v) for v in b.values("median_s")):
        return "NaN in BASE"
    bt, nt = set(b.values("threads")), set(n.values("threads"))
    if cpu and bt and nt and bt != nt:
        return f"threads differ ({'/'.join(f'{t:g}' for t in sorted(bt))} vs {'/'.join(f'{t:g}' for t in sorted(nt))})"
    return None


def figure_rows(key: tuple, b: Side, n: Side) -> list[dict]:
    """Every figure but the time, on its own: missing, newly not ok, or NaN in NEW where BASE had it ok."""
    rows = []
    for metric in sorted(b.figures):
        if metric == "median_s" or b.status(metric)[0] != "ok":
            continue
        if metric not in n.figures:
            verdict = MISSING
        elif n.status(metric)[0] != "ok":
            verdict = f"newly {n.status(metric)[0]}"
        elif any(math.isnan(v) for v in n.values(metric)) and not any(math.isnan(v) for v in b.values(metric)):
            verdict = "NaN in NEW"
        else:
            continue
        rows.append(_row(key, metric, b, n, verdict, metric=metric))
    return rows


def _us(values: list[float]) -> str:
    return "—" if not values else f"{statistics.median(values) * 1e6:.4g}"


def _row(key: tuple, figure: str, b: Side | None, n: Side | None, verdict: str, shift: float = math.nan,
         p: float = math.nan, env: float = 1.0, evidence: str = "", metric: str = "median_s") -> dict:
    def shown(side: Side | None) -> str:
        if side is None:
            return "—"
        status = side.status(metric)[0]
        if metric == "median_s":
            return _us(side.values(metric)) if status == "ok" else status
        vals = side.values(metric)
        return T.fmt(statistics.median(vals)) if status == "ok" and vals else status
    return {"variant": key[0], "device": key[1], "dtype": key[2], "op": key[3], "shape": f"{key[4]}×{key[5]}",
            "figure": figure, "base": shown(b), "new": shown(n),
            "shift": "—" if math.isnan(shift) else f"{100 * (shift - 1):+.0f}%",
            "p": ("—" if math.isnan(p) else f"{p:.1g}") if evidence in ("samples", "") else evidence,
            "drift": "—" if env == 1.0 else f"{100 * (env - 1):+.0f}%", "verdict": verdict}


def compare_throughput(base: T.Bundle, new: T.Bundle, threshold: float) -> pd.DataFrame:
    """One row per point's time (figure 'time µs'), plus one per other figure that went missing/bad/NaN."""
    b, n = collect(base), collect(new)
    env = drift(b, n)
    rows, judged = [], {}
    order = sorted(b.keys() | n.keys(), key=lambda k: (k[0], k[1], k[2], k[3], int(k[4]) * int(k[5]), k[4]))
    for key in order:
        if key not in n or key not in b:
            rows.append(_row(key, "time µs", b.get(key), n.get(key), MISSING if key in b else NEW_POINT))
            continue
        verdict = point_verdict(b[key], n[key], key[1] == "cpu")
        if verdict is None:
            e = env.get(key[1:3] + key[4:], 1.0)
            judged[key] = (*judge_time(b[key], n[key], e, threshold), e)
            rows.append({})  # filled in once the variant's points are counted
        else:
            rows.append(_row(key, "time µs", b[key], n[key], verdict))
        if verdict is None or not verdict.startswith(("newly", "still", "fixed")):
            rows += figure_rows(key, b[key], n[key])
    votes: dict[tuple, list[str]] = {}
    for key, (direction, *_rest) in judged.items():
        votes.setdefault(key[:3], []).append(direction)
    slots = iter(i for i, r in enumerate(rows) if not r)
    for key, (direction, shift, p, evidence, e) in judged.items():
        mine = votes[key[:3]]
        confirmed = 2 * mine.count(direction) > len(mine)
        word = {"over": "slower", "under": "faster", "same": "same"}[direction]
        verdict = word if direction == "same" or confirmed else f"{word}, unconfirmed"
        rows[next(slots)] = _row(key, "time µs", b[key], n[key], verdict, shift, p, e, evidence)
    return pd.DataFrame(rows)


# --- stability and training --------------------------------------------------------------------------------

def compare_stability(base: T.Bundle, new: T.Bundle) -> pd.DataFrame:
    key = ["variant", "device", "dtype", "family"]
    b = T.stability_cells(base).drop_duplicates(key).set_index(key)["result"]
    n = T.stability_cells(new).drop_duplicates(key).set_index(key)["result"]
    rows = []
    for k in sorted(set(b.index) | set(n.index)):
        br, nr = b.get(k, "—"), n.get(k, "—")
        if k not in n.index or k not in b.index:
            verdict = MISSING if k in b.index else NEW_POINT
        elif br == "pass" and nr != "pass":
            verdict = "newly fails" if nr == "fail" else f"newly {nr}"
        elif br != "pass" and nr == "pass":
            verdict = "now passes"
        else:
            verdict = "same"
        rows.append(dict(zip(key, k, strict=True)) | {"base": br, "new": nr, "verdict": verdict})
    return pd.DataFrame(rows)


def compare_training(base: T.Bundle, new: T.Bundle, acc_tolerance: float) -> pd.DataFrame:
    key = ["variant", "regime", "device", "dtype", "seed"]
    b, n = T.training_final(base), T.training_final(new)
    if b.empty and n.empty:
        return pd.DataFrame()
    m = b.merge(n, on=key, suffixes=("_b", "_n"), how="outer", indicator=True)
    rows = []
    for _, r in m.iterrows():
        drop = r["test_acc_b"] - r["test_acc_n"]
        if r["_merge"] != "both":
            verdict = MISSING if r["_merge"] == "left_only" else NEW_POINT
        elif r["status_b"] == "ok" and r["status_n"] != "ok":
            verdict = f"newly {r['status_n']}"
        elif _true(r["diverged_n"]) and not _true(r["diverged_b"]):
            verdict = "newly diverges"
        elif (not T._nan(drop) and drop > acc_tolerance) or (T._nan(r["test_acc_n"]) and not T._nan(r["test_acc_b"])):
            verdict = "accuracy dropped"
        else:
            verdict = "same"
        shown = {s: T.fmt(r[f"test_acc_{s}"]) + (" (diverged)" if _true(r[f"diverged_{s}"]) else "") for s in "bn"}
        rows.append({k: r[k] for k in key} | {"base test acc": shown["b"], "new test acc": shown["n"],
                                              "verdict": verdict})
    return pd.DataFrame(rows)


def _true(value: object) -> bool:
    return not T._nan(value) and bool(value)


# --- the command -------------------------------------------------------------------------------------------

def add_arguments_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="the reference run folder")
    parser.add_argument("new", metavar="NEW", help="the run folder to check against it")
    parser.add_argument("--base", dest="base_more", action="append", default=[], metavar="RUN",
                        help="another run of the base code (repeatable); samples of a side's runs are pooled")
    parser.add_argument("--new", dest="new_more", action="append", default=[], metavar="RUN",
                        help="another run of the new code (repeatable)")
    parser.add_argument("--threshold", default="10%",
                        help="how much slower a time may get before it counts: 10%% or 0.10 (default: %(default)s)")
    parser.add_argument("--acc-tolerance", type=float, default=0.02,
                        help="largest allowed drop of final test accuracy, absolute (default: %(default)s)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="points, variants or figures that BASE has and NEW lacks do not fail")
    parser.add_argument("--fail-on-faster", action="store_true",
                        help="a confirmed faster point fails too (the baseline is stale: record a new one)")
    parser.add_argument("--all", action="store_true", help="print unchanged points too")


def fails(verdict: str, allow_missing: bool, fail_on_faster: bool) -> bool:
    v = str(verdict)
    if v == MISSING:
        return not allow_missing
    return (v.startswith(("slower", "newly", "NaN", "threads differ", "accuracy dropped")) and "unconfirmed" not in v
            ) or (fail_on_faster and v == "faster")


def _print_part(name: str, df: pd.DataFrame, args: argparse.Namespace) -> int:
    bad = df["verdict"].map(lambda v: fails(v, args.allow_missing, args.fail_on_faster))
    quiet = df["verdict"].isin(["same", NEW_POINT]) | df["verdict"].astype(str).str.startswith("still")
    print(f"\n== {name}: {len(df)} compared, {int(bad.sum())} failing, {int(quiet.sum())} unchanged")
    shown = df if args.all else df[~quiet]
    if not shown.empty:
        print(shown.to_string(index=False))
    for variant, g in df[df["verdict"] == MISSING].groupby("variant"):
        if variant not in set(df.loc[df["verdict"] != MISSING, "variant"]):
            print(f"variant {variant}: missing from NEW ({len(g)} rows)")
    return int(bad.sum())


def run_compare(args: argparse.Namespace) -> int:
    threshold = parse_threshold(args.threshold)
    if not (0 <= args.acc_tolerance <= 1):
        raise UserError(f"--acc-tolerance {args.acc_tolerance} must lie between 0 and 1 (an accuracy difference).")
    base, new = T.load([args.base, *args.base_more]), T.load([args.new, *args.new_more])
    if {r.path.resolve() for r in base.runs} & {r.path.resolve() for r in new.runs}:
        print("compare: BASE and NEW share a run folder.", file=sys.stderr)
    print(f"threshold {args.threshold} = {threshold:.0%}: a time counts as slower past {1 + threshold:.2f}x BASE's")
    parts = {"throughput": compare_throughput(base, new, threshold), "stability": compare_stability(base, new),
             "training": compare_training(base, new, args.acc_tolerance)}
    for problem in base.problems + new.problems:
        print(f"warning: {problem}", file=sys.stderr)
    common = sum(int((~df["verdict"].isin([MISSING, NEW_POINT])).sum()) for df in parts.values() if not df.empty)
    if not common:
        raise UserError(f"{args.base} and {args.new} share no measurement (no common variant, device, dtype and "
                        f"shape/family/regime), so there is nothing to compare; compare runs of the same study.")
    failing = sum(_print_part(name, df, args) for name, df in parts.items() if not df.empty)
    _notes(parts["throughput"], len(base.runs), len(new.runs))
    print(f"\ncompare: {failing} regression(s) with threshold {threshold:.0%} and accuracy tolerance "
          f"{args.acc_tolerance}" + ("" if failing else ": OK"))
    return 1 if failing else 0


def _notes(tp: pd.DataFrame, n_base: int, n_new: int) -> None:
    if tp.empty:
        return
    print(f"\nhow: a time is the {FAST_END:.0%} quantile of the samples of {n_base} BASE and {n_new} NEW run(s); "
          f"shift = NEW over BASE, divided by the drift of the copy of the same buffer at that shape; p = one-sided "
          f"Mann-Whitney U on the samples (needs < {ALPHA}); a variant is slower only when more than half of its "
          f"points are (a lone point is 'unconfirmed': unchanged code moved by up to 1.8x at one point here).")
    weak = tp[tp["p"].isin(["p20/p80", "median only"])]
    if not weak.empty:
        print(f"note: {len(weak)} point(s) have no stored samples (a run older than the samples table), so their "
              f"verdict rests on less evidence: {', '.join(sorted(set(weak['p'])))}.")
    if (tp["verdict"].astype(str).str.startswith("threads differ")).any():
        print("note: some points were timed with a different number of torch threads in BASE and NEW (each run "
              "picks them from the load it finds); pin them with `softmax-bench throughput --threads N` on both.")
