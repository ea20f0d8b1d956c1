"""The row schema and the run folder.

One run is one folder ``results/<UTC timestamp>-<host>/`` holding ``run.json`` (machine, versions, git
commit, every command that wrote into it and its presets) and one tidy CSV per table, one measurement
per row. Each row type is a dataclass whose field order is the CSV column order. Rows are appended and
flushed as they are measured, so an interrupted run keeps everything it finished, and ``--resume RUN``
asks :meth:`Run.done` which keys are already there.

A row that could not be measured is still a row: status ``oom``, ``error`` (message says why) or
``skipped`` (message gives the reason).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError

SCHEMA_VERSION = 1
RESULTS_DIR = Path("results")
STATUSES = ("ok", "oom", "error", "skipped")


@dataclass
class ThroughputRow:
    variant: str
    device: str
    dtype: str
    op: str  # softmax_fwd, softmax_fwd_bwd, ce_fwd, ce_fwd_bwd
    rows: int
    cols: int
    metric: str  # median_s, p20_s, ..., gbps, copy_gbps, roofline_frac, speedup_vs_torch, peak_bytes
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class SampleRow:
    """One raw per-call time of a throughput unit (at most MAX_SAMPLES per unit, evenly spaced in time order),
    kept so `compare` can test a shift on samples instead of on two medians."""

    variant: str
    device: str
    dtype: str
    op: str
    rows: int
    cols: int
    index: int  # position among the kept samples, in the order they were taken
    seconds: float


MAX_SAMPLES = 64


@dataclass
class StabilityRow:
    variant: str
    device: str
    dtype: str
    op: str  # softmax, log_softmax, cross_entropy, ce_grad
    family: str
    param: float  # the family's swept parameter (shift c, gap d, ...)
    n: int  # row length
    metric: str  # nonfinite, max_rel_err_u, max_abs_err, sum_err, kl, passed
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class ThresholdRow:
    variant: str
    device: str
    dtype: str
    op: str
    kind: str  # overflow, underflow, far_target
    threshold: float | None
    probe: str  # the probe row, e.g. "[c, c-1, ..., c-9]"
    status: str = "ok"
    message: str = ""


@dataclass
class TrainingRow:
    variant: str
    regime: str
    device: str
    dtype: str
    seed: int
    epoch: int | None  # None for whole-run metrics (seconds, diverged_step)
    metric: str  # train_loss, train_acc, test_acc, seconds, diverged_step
    value: float | None
    unit: str
    status: str = "ok"
    message: str = ""


@dataclass
class PredictionRow:
    variant: str
    regime: str
    device: str
    dtype: str
    seed: int
    index: int  # position in the test set
    label: int
    predicted: int
    pixels: str  # the 28x28 uint8 image as hex, so a report can draw it without the dataset


TABLES: dict[str, type] = {
    "throughput": ThroughputRow,
    "samples": SampleRow,
    "stability": StabilityRow,
    "thresholds": ThresholdRow,
    "training": TrainingRow,
    "predictions": PredictionRow,
}
TABLE_OF = {cls: name for name, cls in TABLES.items()}

# What identifies one measured value in each table. A table may hold a key twice after a run was cut
# mid-write and resumed; the reader keeps only the latest measurement (:func:`latest_measurements`).
UNIT_KEYS: dict[str, tuple[str, ...]] = {
    "throughput": ("variant", "device", "dtype", "op", "rows", "cols"),
    "samples": ("variant", "device", "dtype", "op", "rows", "cols"),
    "stability": ("variant", "device", "dtype", "op", "family", "param", "n", "metric"),
    "thresholds": ("variant", "device", "dtype", "op", "kind"),
    "training": ("variant", "regime", "device", "dtype", "seed", "epoch", "metric"),
    "predictions": ("variant", "regime", "device", "dtype", "seed", "index"),
}
# Tables whose unit is a block of rows written together, and the row that opens a block: a block cut short
# and measured again must not mix with its second measurement, so only each unit's last block counts.
BLOCK_START: dict[str, tuple[str, object]] = {"throughput": ("metric", "median_s"), "samples": ("index", 0)}


def columns(table: str) -> list[str]:
    return [f.name for f in fields(TABLES[table])]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class Run:
    """A run folder. Create with :meth:`create`, reopen (for --resume or a report) with :meth:`open`."""

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path = Path(path)
        self.info = info

    # -- creating and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path | str = RESULTS_DIR, command: list[str] | None = None,
               presets: dict[str, Any] | None = None) -> Run:
        from bench.devices import machine_info

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        base = f"{_utc_stamp()}-{platform.node() or 'host'}"
        path, k = root / base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                k += 1
                path = root / f"{base}-{k}"
        info = {"schema": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(),
                "machine": machine_info(), "commands": []}
        run = cls(path, info)
        run.record_command(command, presets)
        return run

    @classmethod
    def open(cls, path: Path | str) -> Run:
        path = Path(path)
        meta = path / "run.json"
        if not path.is_dir():
            raise UserError(f"{path} is not a folder. A run folder is what softmax-bench train/throughput/"
                            f"stability create under results/ (results/<UTC timestamp>-<host>/).")
        if not meta.is_file():
            raise UserError(f"{path} is not a run folder: it has no run.json. Run folders are created by "
                            f"softmax-bench train/throughput/stability under results/.")
        try:
            info = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{meta} is not valid JSON ({exc}); the run folder is damaged.") from None
        schema = info.get("schema") if isinstance(info, dict) else None
        if schema != SCHEMA_VERSION:
            raise UserError(f"{path} was written with results schema {schema!r}, but this softmax-bench "
                            f"reads schema {SCHEMA_VERSION}. Re-run the study with this version, or render it "
                            f"with the softmax-bench version that wrote it.")
        return cls(path, info)

    def record_command(self, command: list[str] | None, presets: dict[str, Any] | None = None) -> None:
        """Add one command (and the presets it used) to run.json; a resumed run lists every invocation."""
        self.info["commands"].append({
            "argv": command if command is not None else sys.argv,
            "started": datetime.now(timezone.utc).isoformat(),
            "presets": presets or {},
        })
        _write_json_atomic(self.path / "run.json", self.info)

    def save_info(self) -> None:
        """Write self.info back to run.json (after a study adds its own settings to it)."""
        _write_json_atomic(self.path / "run.json", self.info)

    # -- writing --------------------------------------------------------------------------------
    def csv_path(self, table: str) -> Path:
        return self.path / f"{table}.csv"

    def append(self, *rows: Any) -> None:
        """Append rows (dataclass instances, possibly of several tables) and flush them to disk."""
        by_table: dict[str, list[Any]] = {}
        for row in rows:
            by_table.setdefault(TABLE_OF[type(row)], []).append(row)
        for table, items in by_table.items():
            path = self.csv_path(table)
            _repair_tail(path)
            new = not path.exists() or path.stat().st_size == 0
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(columns(table))
                for row in items:
                    writer.writerow([_cell(v) for v in asdict(row).values()])
                f.flush()
                os.fsync(f.fileno())

    # -- reading --------------------------------------------------------------------------------
    def tables(self) -> list[str]:
        return [t for t in TABLES if self.csv_path(t).exists() or _gzipped(self.csv_path(t)).exists()]

    def archive(self, dest: Path | str) -> Path:
        """Copy this run, read-only, into `dest`: run.json and every table as <table>.csv.gz (a tenth of the
        size), which :meth:`open` and :meth:`read` accept like the live folder. For committing a reference run."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(dest / "run.json", self.info)
        for table in self.tables():
            src = self.csv_path(table)
            if src.exists():
                # mtime=0: archiving the same run twice gives the same bytes (no churn in git)
                with open(src, "rb") as f_in, open(_gzipped(dest / src.name), "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f_out:
                    shutil.copyfileobj(f_in, f_out)
            else:
                shutil.copyfile(_gzipped(src), _gzipped(dest / src.name))
        return dest

    def read(self, table: str) -> pd.DataFrame:
        """The table as a DataFrame (empty with the right columns if absent).

        Damaged lines (a truncated last line from an interrupted write) are dropped; what was dropped is
        listed in ``df.attrs["problems"]`` so a report can say so.
        """
        return read_table(self.csv_path(table), table)

    def done(self, table: str, key: Iterable[str]) -> set[tuple[str, ...]]:
        """Keys (as tuples of strings) already present in `table`, for --resume."""
        key = list(key)
        df = self.read(table)
        if df.empty:
            return set()
        return set(map(tuple, df[key].astype(str).itertuples(index=False, name=None)))


def key_of(row: Any, key: Iterable[str]) -> tuple[str, ...]:
    """The resume key of a row object, comparable with :meth:`Run.done`'s tuples."""
    return tuple(str(_cell(getattr(row, k))) for k in key)


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (left by a kill mid-write) so appended rows start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _gzipped(path: Path) -> Path:
    return path.with_name(path.name + ".gz")


def read_table(path: Path, table: str) -> pd.DataFrame:
    expected = columns(table)
    problems: list[str] = []
    if not path.exists() and _gzipped(path).exists():  # an archived run (Run.archive)
        try:
            data = gzip.decompress(_gzipped(path).read_bytes())
        except (OSError, EOFError) as exc:
            raise UserError(f"{_gzipped(path)} is not a readable gzip file ({exc}); the archived run is "
                            f"damaged.") from None
    elif not path.exists():
        df = pd.DataFrame(columns=expected)
        df.attrs["problems"] = problems
        return df
    else:
        data = path.read_bytes()
    raw = data.decode("utf-8", errors="replace")
    if raw and not raw.endswith("\n"):
        problems.append(f"{path.name}: the last line is truncated (the run was interrupted mid-write); dropped")
        raw = raw[: raw.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(raw))
    header = next(reader, None)
    if header is None:
        df = pd.DataFrame(columns=expected)
        df.attrs["problems"] = [f"{path.name} is empty"]
        return df
    if header != expected:
        raise UserError(f"{path} has columns {header}, but this softmax-bench expects {expected} for the "
                        f"{table} table: it was written by another schema version. Re-run the study, or render "
                        f"it with the version that wrote it.")
    good = []
    for lineno, rec in enumerate(reader, start=2):
        if len(rec) != len(expected):
            problems.append(f"{path.name} line {lineno}: {len(rec)} fields instead of {len(expected)}; dropped")
            continue
        good.append(rec)
    df = pd.DataFrame(good, columns=expected)
    for f in fields(TABLES[table]):
        kind = str(f.type)
        if kind.startswith("int"):
            df[f.name] = pd.to_numeric(df[f.name], errors="coerce").astype("Int64")
        elif kind.startswith("float"):
            df[f.name] = pd.to_numeric(df[f.name], errors="coerce")
    df = latest_measurements(table, df)
    df.attrs["problems"] = problems
    return df


def latest_measurements(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each unit's latest measurement only (file order is time order).

    Throughput and samples: a unit's rows from its last block start on (a unit cut mid-write and measured
    again on --resume is never a mix of two measurements). Other tables: the last row of each key.
    """
    if df.empty or table not in UNIT_KEYS:
        return df
    key = list(UNIT_KEYS[table])
    if table in BLOCK_START:
        column, first = BLOCK_START[table]
        starts = (df[column].astype(str) == str(first)).astype(int)
        block = starts.groupby([df[k].astype(str) for k in key]).cumsum()
        last = block.groupby([df[k].astype(str) for k in key]).transform("max")
        return df[block == last].reset_index(drop=True)
    marks = df[key].astype(str)
    return df[~marks.duplicated(keep="last")].reset_index(drop=True)
