"""The run folder.

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
import gzip
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not detected
    fcntl = None  # type: ignore[assignment]
from bench.store.lock import (
    CREATE_HINT,
    _cannot_write,
    _check_free_space,
    _check_writable,
    _resume_hint,
    _writer_lock,
    _WriterLock,
)
from bench.store.rows import READABLE_SCHEMAS, SCHEMA_VERSION, TABLE_OF, TABLES, _cell
from bench.store.table import (
    _gzipped,
    _materialise,
    _repair_tail,
    _table_bytes,
    _write_fallback,
    append_records,
    read_table,
)

RESULTS_DIR = Path("results")
# What run.json must hold for a run to be resumed, and the type of each (a report copes without them).
INFO_KEYS: dict[str, type] = {"schema": int, "created": str, "machine": dict, "commands": list}


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
        from bench.measure.host import machine_info

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
        if schema not in READABLE_SCHEMAS:
            raise UserError(f"{path} was written with results schema {schema!r}, but this softmax-bench "
                            f"reads schemas {', '.join(map(str, READABLE_SCHEMAS))}. Re-run the study with this "
                            f"version, or render it with the softmax-bench version that wrote it.")
        if schema == 1:
            _upgrade_from_1(path, info)
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
        append_records(path, table, records)

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



def roofline_copies(info: dict[str, Any], device: str) -> list[str]:
    """The copies whose best was `device`'s roofline in this run (run.json's typed field), [] if not recorded."""
    section = info.get("throughput")
    entry = section.get(str(device)) if isinstance(section, dict) else None
    copies = entry.get("roofline_copies") if isinstance(entry, dict) else None
    return [str(c) for c in copies] if isinstance(copies, list) else []


def _upgrade_from_1(path: Path, info: dict[str, Any]) -> None:
    """Schema 1 -> 2, in memory: the copies of each device's roofline, which schema 1 only wrote into the
    messages of the copy_gbps rows ("best of copy_ ... and streaming copy ... GB/s")."""
    tp = read_table(path / "throughput.csv", "throughput")
    copies = tp[tp["metric"] == "copy_gbps"] if not tp.empty else tp
    section = info.get("throughput") if isinstance(info.get("throughput"), dict) else {}
    for device, rows in copies.groupby("device") if not copies.empty else ():
        entry = section.setdefault(str(device), {})
        if isinstance(entry, dict) and "roofline_copies" not in entry:
            streaming = rows["message"].fillna("").str.contains("streaming copy").any()
            entry["roofline_copies"] = ["copy_", "streaming copy"] if streaming else ["copy_"]
    if section:
        info["throughput"] = section
    info["schema"] = SCHEMA_VERSION
