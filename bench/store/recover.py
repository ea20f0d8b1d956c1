"""Rebuilding a lost or damaged run.json from the tables, and putting back rows a full disk refused
(``softmax-bench recover RUN [--add FILE]``)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not detected
    fcntl = None  # type: ignore[assignment]
from bench.store.lock import _cannot_write, _writer_lock
from bench.store.rows import SCHEMA_VERSION, TABLES, columns
from bench.store.run import Run, _missing_keys, _present_tables, _salvage_info, _utc_stamp, _write_json_atomic
from bench.store.table import _table_bytes


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


