"""The rows of one throughput unit: one metric a row (bench.studies.throughput.ops.METRICS) and its samples."""

from __future__ import annotations

from collections.abc import Sequence

from bench.measure.host import DTYPES
from bench.measure.timer import Measurement
from bench.store.rows import BASELINE, MAX_SAMPLES, SampleRow, ThroughputRow
from bench.studies.throughput.ops import OPS
from bench.studies.throughput.plan import Unit


class UnitRows:
    """Row making for the sweep (a mixin: it reads the sweep's dev, baseline, overhead and baseline_median)."""

    dev: str
    overhead: float | None
    baseline: dict[tuple[str, str, int, int], float | None]

    def baseline_median(self, u: Unit) -> float | None:
        raise NotImplementedError

    def row(self, u: Unit, metric: str, value: float | None, unit: str, status: str = "ok",
            message: str = "") -> ThroughputRow:
        return ThroughputRow(u.variant, self.dev, u.dtype, u.op, u.rows, u.cols, metric, value, unit,
                             status, message)

    def failed(self, u: Unit, status: str, message: str) -> list[ThroughputRow]:
        return [self.row(u, "median_s", None, "s", status, message)]

    def ok_rows(self, u: Unit, m: Measurement, again: Measurement | None, peak: tuple[float | None, str, str],
                copy: tuple[float | None, str, str]) -> list[ThroughputRow | SampleRow]:
        op, dtype = OPS[u.op], DTYPES[u.dtype]
        copy_gbps, copy_status, copy_msg = copy
        s = m.stats
        if u.variant == BASELINE:
            self.baseline[(u.op, u.dtype, u.rows, u.cols)] = s.median
        gbps = op.min_bytes(u.rows, u.cols, dtype.itemsize) / s.median / 1e9
        rows = [
            self.row(u, "median_s", s.median, "s"),
            self.row(u, "p20_s", s.p20, "s"),
            self.row(u, "p80_s", s.p80, "s"),
            self.row(u, "iqr_s", s.iqr, "s"),
            self.row(u, "cv", s.cv, "ratio"),
            self.row(u, "unstable", float(s.unstable), "flag",
                     message=f"IQR is {s.rel_spread:.0%} of the median" if s.unstable else ""),
            self.row(u, "reps", float(s.n), "count", message=f"{m.inner} call(s) per sample, timer {m.timer}"),
            self.row(u, "first_call_s", m.first_call_s, "s"),
            self.row(u, "gbps", gbps, "GB/s", message=op.formula),
        ]
        if copy_gbps is None:
            rows += [self.row(u, "copy_gbps", None, "GB/s", copy_status, copy_msg),
                     self.row(u, "roofline_frac", None, "ratio", copy_status, copy_msg)]
        else:
            rows += [self.row(u, "copy_gbps", copy_gbps, "GB/s", message=copy_msg),
                     self.row(u, "roofline_frac", gbps / copy_gbps, "ratio")]
        base = s.median if u.variant == BASELINE else self.baseline_median(u)
        if base is None:
            rows.append(self.row(u, "speedup_vs_torch", None, "ratio", "skipped",
                                 f"no `{BASELINE}` measurement at this op/shape/dtype in this run"))
        else:
            rows.append(self.row(u, "speedup_vs_torch", base / s.median, "ratio"))
        rows.append(self.row(u, "peak_bytes", peak[0], "bytes", peak[1], peak[2]))
        rows.append(self.row(u, "threads", float(m.threads), "count"))
        rows.append(self.row(u, "overhead_s", self.overhead, "s",
                             message="empty closure through the same timer, per call"))
        if again is not None:
            diff = abs(again.stats.median - s.median) / s.median
            rows += [self.row(u, "repeat_median_s", again.stats.median, "s"),
                     self.row(u, "repeat_diff_frac", diff, "ratio")]
        return rows + self.sample_rows(u, m.samples)

    def sample_rows(self, u: Unit, samples: Sequence[float]) -> list[SampleRow]:
        """At most MAX_SAMPLES of the unit's per-call times, evenly spaced in the order they were taken (a
        drift within the unit stays visible), for compare's rank test."""
        n = len(samples)
        picks = range(n) if n <= MAX_SAMPLES else [round(i * (n - 1) / (MAX_SAMPLES - 1)) for i in range(MAX_SAMPLES)]
        return [SampleRow(u.variant, self.dev, u.dtype, u.op, u.rows, u.cols, k, float(samples[i]))
                for k, i in enumerate(picks)]



