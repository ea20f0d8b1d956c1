"""softmax-bench compare: the regression gate between two runs (CI).

    softmax-bench compare results/<base> results/<new>                 # exit 1 on a regression
    softmax-bench compare BASE NEW --threshold 5% --allow-missing --fail-on-faster
    softmax-bench compare BASE NEW --base BASE2 --new NEW2             # two runs a side: the surer verdict

Exit 0: NEW is no worse than BASE; 1: a regression; 2: bad input. Each figure is judged on its own (a skipped
peak_bytes never hides a time). What BASE has and NEW lacks (point, variant, figure) fails unless
--allow-missing; a NaN in NEW fails; a status other than ok in NEW where BASE was ok (oom, error, skipped,
wrong, timeout) fails as "newly <status>"; a point faster beyond the threshold warns of a stale baseline.

Why a time is judged so. On a shared machine the same code moves by 15-40% between runs, and one run's
samples share its minutes, so a test on them alone cries wolf. Each rule below won on runs of
`python -m bench.tools.compare_probe` (torch, logsumexp, naive and `slowed`, torch's work done 1.5x or 3x over)
taken on this 2-core machine while other jobs ran:

- a time is the 10th percentile of its samples (interference only adds time, so the fast end moves less
  than the median), and the one-sided Mann-Whitney U test (p < 0.05) ranks the faster half of each side's
  samples, so a BASE disturbed half the time is not taken for faster code;
- when the copies of the same buffer, timed beside each unit, got slower in NEW at a shape, the times there
  are divided by that (no variant's code enters it; torch timed beside it brought its own outliers in). A
  faster copy is ignored: at 4096x4096 the copy moved +19% while softmax stayed put;
- unchanged code moved by up to 1.8x at single points, over all their samples (a mode of one process), so a
  point is "slower" only when more than half of its variant's points (device, dtype) are over the threshold
  at p < 0.05; else "slower, unconfirmed" (a warning);
- on CPU, a point timed with other torch thread counts in BASE and NEW (a run picks them from the load) is
  judged against `torch` timed beside it in each run (same threads, same minutes): its time over torch's,
  NEW against BASE. `torch` itself is then not judged (a warning); pin `--threads N` in both to judge it;
- one run a side still gave false "slower" points in 5 of 112 comparisons of unchanged code on a loaded
  machine (one run's torch units all 2x slow); two runs a side (--base/--new, samples pooled, as asv times
  each benchmark in several processes) gave none in 100 and caught more of a 1.5x slowdown.

Runs older than the samples table are judged on p20/p80 (NEW's p20 above BASE's p80): less evidence, it says.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field

import pandas as pd

from bench import UserError
from bench.fmt import _nan, fmt
from bench.report.bundle import Bundle, load
from bench.report.sections.stability import stability_cells
from bench.report.sections.training import training_final
from bench.report.stats import FAST_END, fast_end, faster_half, mann_whitney_greater
from bench.store.rows import BASELINE

ALPHA = 0.05  # per point; three samples a side, fully separated, reach p = 0.040 (the big CPU units)
KEY = ("variant", "device", "dtype", "op", "rows", "cols")
MISSING, NEW_POINT = "missing in NEW", "new in NEW"


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


def collect(bundle: Bundle) -> dict[tuple[str, ...], Side]:
    points: dict[tuple[str, ...], Side] = {}
    tp = bundle.tables["throughput"]
    for row in tp.itertuples(index=False):
        side = points.setdefault(tuple(str(getattr(row, k)) for k in KEY), Side())
        value = math.nan if _nan(row.value) else float(row.value)
        side.figures.setdefault(str(row.metric), []).append((str(row.status), value, str(row.message)))
    # the bundle loads every table of bench.results, the samples too (empty for a run older than them)
    for row in bundle.tables.get("samples", pd.DataFrame(columns=KEY)).itertuples(index=False):
        side = points.get(tuple(str(getattr(row, k)) for k in KEY))
        if side is not None:
            side.samples.append(math.nan if _nan(row.seconds) else float(row.seconds))
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


def _direction(shift: float, threshold: float, slower_sure: bool, faster_sure: bool) -> str:
    if shift > 1 + threshold and slower_sure:
        return "over"
    return "under" if shift * (1 + threshold) < 1 and faster_sure else "same"


def judge_time(b: Side, n: Side, env: float, threshold: float) -> tuple[str, float, float, str]:
    """(direction 'over' | 'under' | 'same', shift, p, evidence) of one point's time, BASE scaled by `env`."""
    if b.samples and n.samples:
        base = [x * env for x in b.samples]
        shift = _ratio(fast_end(n.samples), fast_end(base))
        fast_b, fast_n = faster_half(base), faster_half(n.samples)
        p_slow, p_fast = mann_whitney_greater(fast_b, fast_n), mann_whitney_greater(fast_n, fast_b)
        return (_direction(shift, threshold, p_slow < ALPHA, p_fast < ALPHA), shift,
                p_slow if shift >= 1 else p_fast, "samples")
    (b20, b80), (n20, n80) = ([side.values(q) for q in ("p20_s", "p80_s")] for side in (b, n))
    if b20 and b80 and n20 and n80:  # older runs: the stored quantiles of the two sides must not overlap
        shift = _ratio(min(n20), min(b20) * env)
        sure = (min(n20) > max(b80) * env, max(n80) < min(b20) * env)
        return _direction(shift, threshold, *sure), shift, math.nan, "p20/p80"
    shift = _ratio(min(n.values("median_s")), min(b.values("median_s")) * env)
    return _direction(shift, threshold, True, True), shift, math.nan, "median only"


def point_verdict(b: Side, n: Side, cpu: bool) -> str | None:
    """The verdict of a point whose time cannot be judged (a status, NaN, threads), else None."""
    (bs, _), (ns, nmsg) = b.status(), n.status()
    if bs == "ok" and ns != "ok":
        return f"newly {ns}" + (f": {nmsg[:80]}" if nmsg else "")
    if bs != "ok":
        return "fixed" if ns == "ok" else f"still {ns}"
    if not n.values("median_s") or not all(map(math.isfinite, n.values("median_s") + n.samples)):
        return "NaN in NEW"
    if not b.values("median_s") or not all(map(math.isfinite, b.values("median_s") + b.samples)):
        return "NaN in BASE"
    return None


def threads_differ(b: Side, n: Side) -> str | None:
    """'3 vs 1'-style text when BASE and NEW timed the point with other torch thread counts, else None."""
    bt, nt = set(b.values("threads")), set(n.values("threads"))
    if bt and nt and bt != nt:
        return f"{'/'.join(f'{t:g}' for t in sorted(bt))} vs {'/'.join(f'{t:g}' for t in sorted(nt))}"
    return None


def scale(key: tuple, b: dict[tuple, Side], n: dict[tuple, Side], env: dict[tuple, float]) -> float | None:
    """What BASE's times at `key` are multiplied by before judging: the copies' slowdown at that shape, or,
    when the thread counts differ (CPU), torch's own NEW/BASE ratio at that point; None when nothing can
    stand in (torch itself, or no torch timed there in both runs)."""
    if key[1] != "cpu" or threads_differ(b[key], n[key]) is None:
        return env.get(key[1:3] + key[4:], 1.0)
    ref = (BASELINE, *key[1:])
    if key[0] == BASELINE or ref not in b or ref not in n or threads_differ(b[ref], n[ref]) is None:
        return None
    bs, ns = b[ref].samples or b[ref].values("median_s"), n[ref].samples or n[ref].values("median_s")
    return _ratio(fast_end(ns), fast_end(bs)) if bs and ns else None


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
        rows.append(_row(key, b, n, verdict, metric=metric))
    return rows


def _size(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _ratio(new: float, base: float) -> float:
    return new / base if base > 0 else math.nan  # a zero time is damaged data: no verdict

def _row(key: tuple, b: Side | None, n: Side | None, verdict: str, shift: float = math.nan, p: float = math.nan,
         env: float = 1.0, evidence: str = "", metric: str = "median_s") -> dict:
    def shown(side: Side | None) -> str:
        if side is None:
            return "—"
        status, vals = side.status(metric)[0], side.values(metric)
        if status != "ok" or not vals:
            return status if status != "ok" else "—"
        return f"{statistics.median(vals) * 1e6:.4g}" if metric == "median_s" else fmt(statistics.median(vals))
    return {"variant": key[0], "device": key[1], "dtype": key[2], "op": key[3], "shape": f"{key[4]}×{key[5]}",
            "figure": "time µs" if metric == "median_s" else metric, "base": shown(b), "new": shown(n),
            "shift": "—" if math.isnan(shift) else f"{100 * (shift - 1):+.0f}%",
            "p": ("—" if math.isnan(p) else f"{p:.1g}") if evidence in ("samples", "") else evidence,
            "drift": "—" if env == 1.0 else f"{100 * (env - 1):+.0f}%", "verdict": verdict}


def compare_throughput(base: Bundle, new: Bundle, threshold: float) -> pd.DataFrame:
    """One row per point's time (figure 'time µs'), plus one per other figure that went missing/bad/NaN."""
    b, n = collect(base), collect(new)
    env = drift(b, n)
    blocked = {k: point_verdict(b[k], n[k], k[1] == "cpu") for k in b.keys() & n.keys()}
    factors = {k: scale(k, b, n, env) for k, verdict in blocked.items() if verdict is None}
    for k, factor in factors.items():
        if factor is None:
            blocked[k] = f"threads differ ({threads_differ(b[k], n[k])}), not judged"
    judged = {k: judge_time(b[k], n[k], factor, threshold) for k, factor in factors.items() if factor is not None}
    votes: dict[tuple, list[str]] = {}
    for key, (direction, *_) in judged.items():
        votes.setdefault(key[:3], []).append(direction)
    rows = []
    for key in sorted(b.keys() | n.keys(), key=lambda k: (*k[:4], _size(k[4]) * _size(k[5]), k[4])):
        if key not in n or key not in b:
            rows.append(_row(key, b.get(key), n.get(key), MISSING if key in b else NEW_POINT))
            continue
        verdict = blocked[key]
        if verdict is None:
            direction, shift, p, evidence = judged[key]
            word, mine = {"over": "slower", "under": "faster", "same": "same"}[direction], votes[key[:3]]
            confirmed = direction == "same" or 2 * mine.count(direction) > len(mine)
            verdict = word if confirmed else f"{word}, unconfirmed"
            rows.append(_row(key, b[key], n[key], verdict, shift, p, factors[key], evidence))
        else:
            rows.append(_row(key, b[key], n[key], verdict))
        if not verdict.startswith(("newly", "still", "fixed")):
            rows += figure_rows(key, b[key], n[key])
    return pd.DataFrame(rows)


# --- stability and training --------------------------------------------------------------------------------

def compare_stability(base: Bundle, new: Bundle) -> pd.DataFrame:
    key = ["variant", "device", "dtype", "family"]
    b = stability_cells(base).drop_duplicates(key).set_index(key)["result"]
    n = stability_cells(new).drop_duplicates(key).set_index(key)["result"]
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


def compare_training(base: Bundle, new: Bundle, acc_tolerance: float) -> pd.DataFrame:
    key = ["variant", "regime", "device", "dtype", "seed"]
    b, n = training_final(base), training_final(new)
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
        elif (not _nan(drop) and drop > acc_tolerance) or (_nan(r["test_acc_n"]) and not _nan(r["test_acc_b"])):
            verdict = "accuracy dropped"
        else:
            verdict = "same"
        shown = {s: fmt(r[f"test_acc_{s}"]) + (" (diverged)" if _true(r[f"diverged_{s}"]) else "") for s in "bn"}
        rows.append({k: r[k] for k in key} | {"base test acc": shown["b"], "new test acc": shown["n"],
                                              "verdict": verdict})
    return pd.DataFrame(rows)


def _true(value: object) -> bool:
    return not _nan(value) and bool(value)


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
    """Whether a verdict fails the gate; 'unconfirmed' ones and the rest only warn or inform."""
    v = str(verdict)
    bad = v.startswith(("slower", "newly", "NaN in NEW", "accuracy drop")) and "unconfirmed" not in v
    return not allow_missing if v == MISSING else bad or (fail_on_faster and v == "faster")


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
    base, new = load([args.base, *args.base_more]), load([args.new, *args.new_more])
    if {r.path.resolve() for r in base.runs} & {r.path.resolve() for r in new.runs}:
        print("compare: BASE and NEW share a run folder.", file=sys.stderr)
    print(f"threshold {args.threshold!r} read as {threshold:.4g} = {threshold:.0%}: a time counts as slower past "
          f"{1 + threshold:.4g}x BASE's")
    parts = {"throughput": compare_throughput(base, new, threshold), "stability": compare_stability(base, new),
             "training": compare_training(base, new, args.acc_tolerance)}
    for problem in base.problems + new.problems:
        print(f"warning: {problem}", file=sys.stderr)
    common = sum(int((~df["verdict"].isin([MISSING, NEW_POINT])).sum()) for df in parts.values() if not df.empty)
    if not common:
        raise UserError(f"{args.base} and {args.new} share no measurement (no common variant, device, dtype and "
                        f"shape/family/regime), so there is nothing to compare; compare runs of the same study.")
    failing = sum(_print_part(name, df, args) for name, df in parts.items() if not df.empty)
    if not parts["throughput"].empty:
        _notes(parts["throughput"], len(base.runs), len(new.runs))
    verdicts = pd.concat([df["verdict"] for df in parts.values() if not df.empty]).astype(str)
    warned = {"unconfirmed slower": int((verdicts == "slower, unconfirmed").sum()),
              "faster (stale baseline)": int((verdicts == "faster").sum())}
    print(f"\ncompare: {failing} regression(s) with threshold {threshold:.0%} and accuracy tolerance "
          f"{args.acc_tolerance}" + ("" if failing else ": OK") + "".join(f"; {n} {w}" for w, n in warned.items() if n))
    return 1 if failing else 0


def _notes(tp: pd.DataFrame, n_base: int, n_new: int) -> None:
    print(f"\nhow: a time is the {FAST_END:.0%} quantile of the samples of {n_base} BASE and {n_new} NEW run(s) "
          f"(base and new show the median); shift = NEW over BASE, divided by the slowdown of the copies at that "
          f"shape (drift); p = one-sided Mann-Whitney U on the faster half of the samples (needs < {ALPHA}). A "
          f"variant is slower only where more than half of its points are: one point of unchanged code moved by "
          f"up to 1.8x here, so a lone one is 'unconfirmed' (re-run, or pass a second run with --base/--new).")
    weak = tp[tp["p"].isin(["p20/p80", "median only"])]
    if not weak.empty:
        print(f"note: {len(weak)} point(s) lack samples (older runs): their verdict rests on less evidence.")
    if tp["verdict"].astype(str).str.startswith("threads differ").any():
        print("note: some points were timed with other torch thread counts in BASE and NEW: judged against torch "
              "timed beside them; torch itself is not judged there. Pin `softmax-bench throughput --threads N` "
              "in both runs to judge every point directly.")
