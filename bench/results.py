"""The row schema and the run folder.

One run is one folder ``results/<UTC timestamp>-<host>/`` holding ``run.json`` (machine, versions, git
commit, every command that wrote into it and its presets) and one tidy CSV per table, one measurement
per row. Each row type is a dataclass whose field order is the CSV column order. Rows are appended and
flushed as they are measured, so an interrupted run keeps everything it finished, and ``--resume RUN``
asks :meth:`Run.done` which keys are already there.

A row that could not be measured is still a row: status ``oom``, ``error`` (message says why) or
``skipped`` (message gives the reason).

Nothing a user has is lost: one process at a time writes into a run folder (an flock on ``.writer.lock``,
taken by :meth:`Run.create`, :meth:`Run.resume` and the first write; readers never lock); a folder that
cannot be written is refused before anything is measured; rows a full disk refuses go to a fallback file
(:func:`recover` puts them back); an archived run (``<table>.csv.gz``) resumes onto its archived rows; and a
lost or damaged ``run.json`` is rebuilt from the tables by :func:`recover` (``softmax-bench recover RUN``).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not detected
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
RESULTS_DIR = Path("results")
STATUSES = ("ok", "oom", "error", "skipped")
LOCK_FILE = ".writer.lock"
# A run folder must have this much free space before a study starts: the largest full run writes a few MB,
# so under this the disk fills mid-run, which costs the measurements of that moment.
MIN_FREE_BYTES = 32 * 2**20
# What run.json must hold for a run to be resumed, and the type of each (a report copes without them).
INFO_KEYS: dict[str, type] = {"schema": int, "created": str, "machine": dict, "commands": list}


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
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a crash or a full disk leaves the previous run.json whole
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({exc.strerror or exc}); it is left as it was. Make "
                        f"{path.parent} writable (or free space on its disk) and run the command again.") from None


# -- one writer per run folder ------------------------------------------------------------------------

class _WriterLock:
    """An exclusive flock on ``<run>/.writer.lock`` while this process writes into the run folder.

    The kernel drops it when the process ends, however it ends, so a killed run never leaves a stale lock.
    Every Run object of one process on one folder shares it (:func:`_writer_lock`): a study may open its
    run twice, but two processes would measure every unit twice and interleave their rows.
    """

    def __init__(self, folder: Path, hint: str) -> None:
        self.fd = -1
        try:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(_cannot_write(folder, exc, hint)) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "its pid is unknown"
                os.close(fd)
                raise UserError(
                    f"{folder} is being written by another softmax-bench process ({holder}). Two writers "
                    f"would measure every unit twice and interleave their rows, so this one stops without "
                    f"writing anything. Wait for the other to finish (or stop it: it keeps what it measured), then "
                    f"complete the run with --resume {folder}.") from None
            except OSError:
                pass  # a file system without flock (some network mounts): write unguarded, as before
        self.fd = fd
        holder = (f"pid {os.getpid()} on {platform.node() or 'this host'} since "
                  f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {' '.join(sys.argv)}")
        # Who holds the lock is a courtesy for the next writer's message, never a failure.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode()[:1000] + b"\n", 0)

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)  # closing the last descriptor releases the flock
            except Exception:  # noqa: BLE001 - at interpreter exit `os` may be gone; the kernel releases it
                pass

    def __del__(self) -> None:
        self.release()


_HELD: weakref.WeakValueDictionary[str, _WriterLock] = weakref.WeakValueDictionary()


def _writer_lock(folder: Path, hint: str = "") -> _WriterLock:
    """This process's write lock on `folder`, taken if not held yet (UserError if another process holds it)."""
    key = str(folder.resolve())
    lock = _HELD.get(key)
    if lock is None or lock.fd < 0:
        lock = _WriterLock(folder, hint)
        _HELD[key] = lock
    return lock


def _cannot_write(where: Path, exc: OSError, hint: str) -> str:
    if isinstance(exc, FileExistsError) or (where.exists() and not where.is_dir()):
        why = f"{exc.filename or where} is a file, not a folder"
    else:
        why = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    return f"cannot write into {where}: {why}. {hint}".strip()


def _check_writable(folder: Path, hint: str) -> None:
    """Prove the folder takes a new file (permissions, a read-only mount) before anything is measured."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:  # the probe's random name would only confuse the message
        raise UserError(_cannot_write(folder, OSError(exc.errno, exc.strerror), hint)) from None


def _check_free_space(folder: Path, hint: str) -> None:
    """Refuse to start a study on a nearly full disk: it would fill mid-run."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell; the first write will say what is wrong
    if free < MIN_FREE_BYTES:
        raise UserError(f"only {free / 2**20:.1f} MB free on the disk of {folder}; a run needs at least "
                        f"{MIN_FREE_BYTES // 2**20} MB for its rows, or the disk fills mid-run and the study "
                        f"stops. Free some space, then run the command again. {hint}".strip())


CREATE_HINT = "Nothing was measured. Pass --results-dir with a folder you can write to."


def _resume_hint(folder: Path) -> str:
    return f"Nothing was measured. To complete it elsewhere, copy it (cp -r {folder} results/) and resume the copy."


# -- reading run.json -------------------------------------------------------------------------------------

def _salvage_info(folder: Path) -> tuple[dict[str, Any], str | None]:
    """run.json as a dict ({} when absent or unreadable) and what is wrong with the file itself (or None)."""
    meta = folder / "run.json"
    if not meta.is_file():
        return {}, "no run.json"
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return {}, f"{meta} is not valid JSON ({exc})"
    if not isinstance(info, dict):
        return {}, f"{meta} is not valid JSON for a run (it holds a {type(info).__name__}, not an object)"
    return info, None


def _missing_keys(info: dict[str, Any]) -> list[str]:
    return [key for key, kind in INFO_KEYS.items() if not isinstance(info.get(key), kind)]


def _fill_defaults(info: dict[str, Any], missing: list[str]) -> None:
    defaults: dict[str, Any] = {"schema": SCHEMA_VERSION, "created": "", "machine": {}, "commands": []}
    for key in missing:
        info[key] = defaults[key]


def _present_tables(folder: Path) -> list[str]:
    return [t for t in TABLES if (folder / f"{t}.csv").exists() or (folder / f"{t}.csv.gz").exists()]


class Run:
    """A run folder. Create with :meth:`create`, reopen with :meth:`resume` (to write: locks it and checks it
    can be completed) or :meth:`open` (to read, e.g. a report; takes the lock only on a first write)."""

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path = Path(path)
        self.info = info
        # What was missing from run.json when it was opened (a report can still read the tables).
        self.problems: list[str] = []
        self._lock: _WriterLock | None = None
        self._unsaved: dict[str, Path] = {}  # table -> fallback file, once a write into the folder failed

    # -- creating and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path | str = RESULTS_DIR, command: list[str] | None = None,
               presets: dict[str, Any] | None = None) -> Run:
        """A new run folder under `root`, locked for this process; refuses an unwritable or full disk."""
        from bench.devices import machine_info

        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(_cannot_write(root, exc, CREATE_HINT)) from None
        _check_free_space(root, CREATE_HINT)
        base = f"{_utc_stamp()}-{platform.node() or 'host'}"
        path, k = root / base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                k += 1
                path = root / f"{base}-{k}"
            except OSError as exc:
                raise UserError(_cannot_write(root, exc, CREATE_HINT)) from None
        info = {"schema": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(),
                "machine": machine_info(), "commands": []}
        run = cls(path, info)
        run._lock = _writer_lock(path, CREATE_HINT)
        run.record_command(command, presets)
        return run

    @classmethod
    def open(cls, path: Path | str) -> Run:
        """A run folder to read. Keys missing from run.json are filled with empty values and listed in
        ``run.problems``; a missing or unreadable run.json is a UserError that says how to rebuild it."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a folder. A run folder is what softmax-bench train/throughput/"
                            f"stability create under results/ (results/<UTC timestamp>-<host>/).")
        info, damage = _salvage_info(path)
        if damage == "no run.json" and not _present_tables(path):
            raise UserError(f"{path} is not a run folder: it has no run.json. Run folders are created by "
                            f"softmax-bench train/throughput/stability under results/.")
        if damage:
            raise UserError(f"{damage.replace('no run.json', f'{path} has tables but no run.json')}; the run "
                            f"folder is damaged. `softmax-bench recover {path}` rebuilds run.json from the tables "
                            f"(keeping any damaged one beside it) and says what it could not rebuild.")
        schema = info.get("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise UserError(f"{path} was written with results schema {schema!r}, but this softmax-bench "
                            f"reads schema {SCHEMA_VERSION}. Re-run the study with this version, or render it "
                            f"with the softmax-bench version that wrote it.")
        run = cls(path, info)
        missing = _missing_keys(info)
        run.problems = [f"run.json has no valid {key!r}" for key in missing]
        _fill_defaults(info, missing)
        return run

    @classmethod
    def resume(cls, path: Path | str, command: list[str] | None = None,
               presets: dict[str, Any] | None = None) -> Run:
        """Reopen a run folder to complete it (--resume): locked for this process, checked writable and
        complete, archived tables turned back into live ones, and this command recorded in run.json."""
        run = cls.open(path)
        if run.problems:
            raise UserError(f"{run.path} cannot be resumed: its run.json is incomplete "
                            f"({'; '.join(run.problems)}). `softmax-bench recover {run.path}` rebuilds it from "
                            f"the tables and says what it could not rebuild; then resume again.")
        hint = _resume_hint(run.path)
        _check_writable(run.path, hint)
        run._lock = _writer_lock(run.path, hint)
        _check_free_space(run.path, hint)
        try:
            for table in run.tables():
                _materialise(run.csv_path(table))
        except OSError as exc:
            raise UserError(_cannot_write(run.path, exc, hint)) from None
        run.record_command(command, presets)
        return run

    def close(self) -> None:
        """Stop writing: this object lets go of the folder's lock (released once no Run of it holds it)."""
        self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _ensure_writer(self) -> None:
        if self._lock is None or self._lock.fd < 0:
            self._lock = _writer_lock(self.path)

    def record_command(self, command: list[str] | None, presets: dict[str, Any] | None = None) -> None:
        """Add one command (and the presets it used) to run.json; a resumed run lists every invocation."""
        self._ensure_writer()
        if not isinstance(self.info.get("commands"), list):
            self.info["commands"] = []
        self.info["commands"].append({
            "argv": command if command is not None else sys.argv,
            "started": datetime.now(timezone.utc).isoformat(),
            "presets": presets or {},
        })
        _write_json_atomic(self.path / "run.json", self.info)

    def save_info(self) -> None:
        """Write self.info back to run.json (after a study adds its own settings to it)."""
        self._ensure_writer()
        _write_json_atomic(self.path / "run.json", self.info)

    # -- writing --------------------------------------------------------------------------------
    def csv_path(self, table: str) -> Path:
        return self.path / f"{table}.csv"

    def append(self, *rows: Any) -> None:
        """Append rows (dataclass instances, possibly of several tables) and flush them to disk.

        Rows the folder refuses (a full disk, lost permissions) go to a fallback file instead, and a
        UserError says where and how to put them back (:func:`recover`); later rows follow them there.
        """
        by_table: dict[str, list[list[Any]]] = {}
        for row in rows:
            by_table.setdefault(TABLE_OF[type(row)], []).append([_cell(v) for v in asdict(row).values()])
        try:
            self._ensure_writer()  # taken at the first write when the run was opened for reading
        except UserError as exc:
            raise UserError(self._save_elsewhere(by_table, f"{exc}".rstrip("."))) from None
        pending = list(by_table.items())
        for i, (table, records) in enumerate(pending):
            if self._unsaved:  # once a write failed, keep every later row with the unsaved ones, in order
                raise UserError(self._save_elsewhere(dict(pending[i:]), "an earlier write into it failed"))
            try:
                self._write_records(table, records)
            except OSError as exc:
                raise UserError(self._save_elsewhere(dict(pending[i:]), f"{exc.strerror or exc}")) from None

    def _write_records(self, table: str, records: list[list[Any]]) -> None:
        path = self.csv_path(table)
        _materialise(path)
        _repair_tail(path)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(columns(table))
            writer.writerows(records)
            f.flush()
            os.fsync(f.fileno())

    def _save_elsewhere(self, unsaved: dict[str, list[list[Any]]], why: str) -> str:
        """Write rows the run folder refused into fallback files; the message says where and how to recover."""
        for table, records in unsaved.items():
            self._unsaved[table] = _write_fallback(self.path, table, records, self._unsaved.get(table))
        files = sorted(set(self._unsaved.values()))
        adds = " ".join(f"--add {f}" for f in files)
        count = sum(len(r) for r in unsaved.values())
        return (f"could not write {count} row(s) into {self.path} ({why}). They are saved in "
                f"{', '.join(map(str, files))}; nothing measured before is lost. To recover: free space on the "
                f"disk of {self.path} (or make it writable), run `softmax-bench recover {self.path} {adds}` to put "
                f"those rows into the run, then complete it with --resume {self.path}.")

    # -- reading --------------------------------------------------------------------------------
    def tables(self) -> list[str]:
        return _present_tables(self.path)

    def archive(self, dest: Path | str) -> Path:
        """Copy this run, read-only, into `dest`: run.json and every table as <table>.csv.gz (a tenth of the
        size), which :meth:`open` and :meth:`read` accept like the live folder. For committing a reference run."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(dest / "run.json", self.info)
        for table in self.tables():
            src = self.csv_path(table)
            if src.exists():
                data = _table_bytes(src)
                # mtime=0: archiving the same run twice gives the same bytes (no churn in git)
                with open(_gzipped(dest / src.name), "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f_out:
                    f_out.write(data or b"")
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


def _gunzip(gz: Path) -> bytes:
    try:
        return gzip.decompress(gz.read_bytes())
    except (OSError, EOFError) as exc:
        raise UserError(f"{gz} is not a readable gzip file ({exc}); the archived run is damaged.") from None


def _table_bytes(path: Path, problems: list[str] | None = None) -> bytes | None:
    """A table's bytes: the live CSV, the archived <table>.csv.gz, or both joined when both hold rows."""
    gz, live = _gzipped(path), path.read_bytes() if path.exists() else None
    if not gz.exists():
        return live
    if live is None or not live.strip():
        return _gunzip(gz)
    try:
        archived = _gunzip(gz)
    except UserError as exc:  # the live CSV was materialised from it, so it is the survivor
        if problems is not None:
            problems.append(f"{exc}; read {path.name} alone")
        return live
    whole = archived[: archived.rfind(b"\n") + 1]
    if live.startswith(whole):
        return live  # materialised by --resume, then appended to
    # A plain CSV begun beside the archive (by --resume before archives were materialised): the archive's
    # rows come first in time, then the CSV's, so resuming never hides what the archive holds.
    head, _, rest = live.partition(b"\n")
    if head.rstrip(b"\r") != whole.partition(b"\n")[0].rstrip(b"\r"):
        raise UserError(f"{path} and {gz.name} have different columns, so they cannot be read as one table; "
                        f"move the one of another softmax-bench version out of {path.parent}.")
    return whole + rest


def _materialise(path: Path) -> None:
    """Turn an archived table (<table>.csv.gz) into a live <table>.csv, atomically, before the first append,
    so a resumed archived run appends to its archived rows. The .gz stays as the user had it."""
    gz = _gzipped(path)
    if path.exists() or not gz.exists():
        return
    data = _gunzip(gz)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _write_fallback(folder: Path, table: str, records: list[list[Any]], target: Path | None) -> Path:
    """Append rows the run folder refused to a file elsewhere (the temp dir, else home); its path."""
    defaults = [Path(d) / "softmax-bench-unsaved" / f"{folder.name}-{table}.csv"
                for d in (tempfile.gettempdir(), Path.home())]
    errors = []
    for path in dict.fromkeys([*([target] if target else []), *defaults]):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(columns(table))
                writer.writerows(records)
                f.flush()
                os.fsync(f.fileno())
            return path
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    # Nowhere to write: stderr is the last place a user can still copy the rows from.
    text = io.StringIO()
    csv.writer(text).writerows([columns(table), *records])
    print(text.getvalue(), file=sys.stderr, end="")
    raise UserError(f"could not write {len(records)} {table} row(s) into {folder} nor into a fallback file "
                    f"({'; '.join(errors)}); they are printed above on stderr. Copy them into a file and add "
                    f"them with `softmax-bench recover {folder} --add FILE` once the disk has room.")


# -- recover: rebuild run.json from the tables, put back rows a full disk refused ------------------------

def recover(path: Path | str, add: Iterable[Path | str] = ()) -> list[str]:
    """Rebuild a lost, damaged or incomplete run.json from the run's tables (keeping the old file beside
    it), then append the rows of each `add` file (the fallback files a failed append named).

    Returns the lines to print: what was rebuilt, what could not be, and what the run now holds.
    """
    folder, files = Path(path), [Path(f) for f in add]
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the run folder to recover "
                        f"(results/<UTC timestamp>-<host>/).")
    info, damage = _salvage_info(folder)
    if damage == "no run.json" and not _present_tables(folder) and not files:
        raise UserError(f"nothing to recover in {folder}: it holds neither run.json nor any table "
                        f"({', '.join(f'{t}.csv' for t in TABLES)}).")
    schema = info.get("schema")
    if isinstance(schema, int) and schema != SCHEMA_VERSION:
        raise UserError(f"{folder} was written with results schema {schema}; recover it with the "
                        f"softmax-bench version that wrote it (this one writes schema {SCHEMA_VERSION}).")
    lock = _writer_lock(folder, "Nothing was changed.")
    lines = _rebuild_run_json(folder, info, damage)
    run = Run.open(folder)
    run._lock = lock
    lines += [_add_rows(run, f) for f in files]
    lines.append(f"{folder} now holds:" if run.tables() else f"{folder} holds no table yet.")
    for table in run.tables():
        df = run.read(table)
        dropped = len(df.attrs["problems"])
        lines.append(f"  {table}: {len(df)} row(s)" + (f" ({dropped} damaged line(s) dropped)" if dropped else ""))
    return lines


def _rebuild_run_json(folder: Path, info: dict[str, Any], damage: str | None) -> list[str]:
    meta = folder / "run.json"
    missing = _missing_keys(info)
    if damage is None and not missing:
        return [f"{meta} is complete; nothing to rebuild."]
    kept = [k for k in info if k not in missing]
    rebuilt, lost = _rebuild_keys(folder, info, missing)
    if damage is not None:
        lost.append("any study settings run.json held (e.g. throughput's CPU threads and allocator)")
    backup = None
    if meta.exists():  # never lose what the user had, even a damaged file
        backup = meta.with_name(f"run.json.damaged-{_utc_stamp()}")
        try:
            shutil.copyfile(meta, backup)
        except OSError as exc:
            raise UserError(_cannot_write(folder, exc, "Nothing was changed.")) from None
    info["commands"].append({"argv": sys.argv, "started": datetime.now(timezone.utc).isoformat(),
                             "presets": {}, "recovered": {"rebuilt": rebuilt, "could_not_rebuild": lost}})
    _write_json_atomic(meta, info)
    why = "it was missing" if damage == "no run.json" else damage or "it had no valid " + ", ".join(missing)
    lines = [f"rebuilt {meta} ({why})."]
    lines += [f"  rebuilt: {r}" for r in rebuilt] + [f"  kept as it was: {k}" for k in kept]
    lines += [f"  could not rebuild: {m}" for m in lost]
    if backup is not None:
        lines.append(f"  the previous run.json is kept as {backup}")
    return lines


def _rebuild_keys(folder: Path, info: dict[str, Any], missing: list[str]) -> tuple[list[str], list[str]]:
    """Fill the keys of run.json that are `missing` from what the folder shows; (rebuilt, could not rebuild)."""
    rebuilt: list[str] = []
    lost: list[str] = []
    if "schema" in missing:
        foreign = [t for t in _present_tables(folder) if _header(folder / f"{t}.csv") not in ("", ",".join(columns(t)))]
        if foreign:
            raise UserError(f"cannot rebuild run.json of {folder}: {', '.join(foreign)} hold the columns of "
                            f"another softmax-bench version; recover it with the version that wrote it.")
        info["schema"] = SCHEMA_VERSION
        rebuilt.append(f"schema {SCHEMA_VERSION} (every table has this version's columns)")
    if "created" in missing:
        info["created"], source = _created_from(folder)
        rebuilt.append(f"created {info['created']} ({source})")
    if "machine" in missing:
        match = re.match(r"\d{8}T\d{6}Z-(.+)$", folder.name)
        info["machine"] = {"host": match.group(1)} if match else {}
        if match:
            rebuilt.append(f"machine host {match.group(1)!r} (from the folder name)")
        lost.append("the machine's details (CPU and GPU names, memory, library versions, git commit): the "
                    "report names devices by their strings (cpu, cuda:0)")
    if "commands" in missing:
        info["commands"] = []
        lost.append("the commands that wrote the run and their presets: the report's command list starts at "
                    "this recovery, and training figures assume each regime's default batch size")
    return rebuilt, lost


def _header(path: Path) -> str:
    return (_table_bytes(path) or b"").partition(b"\n")[0].rstrip(b"\r").decode("utf-8", "replace")


def _created_from(folder: Path) -> tuple[str, str]:
    match = re.match(r"(\d{8}T\d{6}Z)-", folder.name)
    if match:
        stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return stamp.isoformat(), "from the folder name"
    times = [p.stat().st_mtime for p in folder.iterdir() if p.name.split(".")[0] in TABLES]
    if times:
        return datetime.fromtimestamp(min(times), timezone.utc).isoformat(), "the oldest table file's time"
    return datetime.now(timezone.utc).isoformat(), "the time of this recovery"


def _add_rows(run: Run, file: Path) -> str:
    """Append the rows of a fallback file (a header naming its table, then rows) to the run; what it did."""
    try:
        raw = file.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise UserError(f"cannot read {file} ({exc.strerror or exc}); give the file a failed write named.") from None
    raw = raw[: raw.rfind("\n") + 1]  # a partial last line (killed mid-write) is not a row
    records = list(csv.reader(io.StringIO(raw)))
    header = records[0] if records else []
    table = next((t for t in TABLES if columns(t) == header), None)
    if table is None:
        raise UserError(f"{file} is not a file of unsaved rows: its first line matches the columns of no "
                        f"table ({', '.join(TABLES)}). Give the file named by the 'could not write' message.")
    good = [r for r in records[1:] if len(r) == len(header)]
    try:
        run._write_records(table, good)
    except OSError as exc:
        raise UserError(_cannot_write(run.path, exc, f"{file} is untouched; free space, then recover "
                                                     f"again.")) from None
    dropped = len(records) - 1 - len(good)
    return (f"added {len(good)} row(s) from {file} to {run.csv_path(table)}"
            + (f" ({dropped} damaged line(s) dropped)" if dropped else "") + f"; {file} may be deleted now.")


def read_table(path: Path, table: str) -> pd.DataFrame:
    expected = columns(table)
    problems: list[str] = []
    data = _table_bytes(path, problems)  # the live CSV, an archived .csv.gz (Run.archive), or both
    if data is None:
        df = pd.DataFrame(columns=expected)
        df.attrs["problems"] = problems
        return df
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
