"""Reading and writing the tables: CSV (live) or CSV.gz (archived), the repair of a tail cut by a kill,
the fallback file for rows a full disk refuses, and the latest measurement of each unit."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not detected
    fcntl = None  # type: ignore[assignment]
from bench.store.rows import BLOCK_START, TABLES, UNIT_KEYS, columns


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


def append_records(path: Path, table: str, records: list[list[Any]]) -> None:
    """Append CSV records to `path` (with the header when it is new or empty) and flush them to disk."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns(table))
        writer.writerows(records)
        f.flush()
        os.fsync(f.fileno())


def _write_fallback(folder: Path, table: str, records: list[list[Any]], target: Path | None) -> Path:
    """Append rows the run folder refused to a file elsewhere (the temp dir, else home); its path."""
    defaults = [Path(d) / "softmax-bench-unsaved" / f"{folder.name}-{table}.csv"
                for d in (tempfile.gettempdir(), Path.home())]
    errors = []
    for path in dict.fromkeys([*([target] if target else []), *defaults]):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            append_records(path, table, records)
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
