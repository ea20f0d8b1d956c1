"""Several run folders loaded and merged into one DataFrame per table (every row keeps its run, host and
device name), plus the typed facts a report reads from run.json; and the report's view of the one
throughput pivot (bench.store.wide). Everything a report section reads comes from here.

    >>> from bench.report.bundle import load
    >>> bundle = load(["results/20250101T000000Z-host"])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import UserError
from bench.store.rows import BASELINE, TABLES, THROUGHPUT_OPS, columns
from bench.store.run import Run, roofline_copies
from bench.store.wide import wide_throughput

# Columns every merged table gets in front, so rows from several machines keep where they came from.
ORIGIN = ["run", "host", "device_name"]
# What a report section needs, and the study command that writes it.
SECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "throughput": (("throughput",), "softmax-bench throughput --resume RUN"),
    "stability": (("stability", "thresholds"), "softmax-bench stability --resume RUN"),
    "training": (("training", "predictions"), "softmax-bench train --resume RUN"),
}
TP_KEY = ["run", "host", "device_name", "device", "variant", "dtype", "op", "rows", "cols"]
REFERENCE = BASELINE  # the builtin every variant's speed is compared against


@dataclass
class RunMeta:
    """One opened run folder: where it is, which machine wrote it, and what it holds."""

    path: Path
    name: str
    host: str
    info: dict[str, Any]
    tables: list[str] = field(default_factory=list)

    @property
    def machine(self) -> dict[str, Any]:
        m = self.info.get("machine")
        return m if isinstance(m, dict) else {}

    def device_name(self, device: str) -> str:
        """The CPU model or GPU name behind a device string such as 'cpu' or 'cuda:1'."""
        device = str(device)
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
            for gpu in self.machine.get("gpus") or []:
                if isinstance(gpu, dict) and gpu.get("index") == index and gpu.get("name"):
                    return str(gpu["name"])
            return device
        if device == "cpu":
            return str(self.machine.get("cpu") or "cpu")
        return device


@dataclass
class Bundle:
    """Several runs merged: one DataFrame per table, plus what is damaged and what is missing."""

    runs: list[RunMeta]
    tables: dict[str, pd.DataFrame]
    problems: list[str]

    def has(self, table: str) -> bool:
        df = self.tables.get(table)
        return df is not None and not df.empty

    def missing(self) -> list[str]:
        """One plain sentence per section part that a run does not hold."""
        out = []
        for section, (tables, command) in SECTIONS.items():
            for run in self.runs:
                lacking = [t for t in tables if t not in run.tables]
                if lacking:
                    out.append(f"run {run.name} has no {', '.join(t + '.csv' for t in lacking)}, so its "
                               f"{section} part is not shown (write it with `{command}`).")
        return out


def load(paths: Iterable[Path | str]) -> Bundle:
    """Open every run folder (UserError for one that is not a run or has another schema) and merge them."""
    runs: list[RunMeta] = []
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    problems: list[str] = []
    seen: set[Path] = set()
    for p in paths:
        run = Run.open(p)
        if run.path.resolve() in seen:
            continue
        seen.add(run.path.resolve())
        machine = run.info.get("machine") if isinstance(run.info.get("machine"), dict) else {}
        # the folder's own name, however the path was spelled (`RUN/sub/..` is RUN, never '..')
        meta = RunMeta(run.path, run.path.resolve().name, str(machine.get("host") or "?"), run.info)
        for table in TABLES:
            df = run.read(table)
            problems += [f"{meta.name}: {msg}" for msg in df.attrs.get("problems", [])]
            if table in run.tables():  # the live .csv or an archived .csv.gz
                meta.tables.append(table)
            if df.empty:
                continue
            df = df.copy()
            df.insert(0, "device_name", [meta.device_name(d) for d in df["device"]])
            df.insert(0, "host", meta.host)
            df.insert(0, "run", meta.name)
            frames[table].append(df)
        runs.append(meta)
    if not runs:
        raise UserError("no run folder given; pass one or more folders under results/.")
    tables = {}
    for table, parts in frames.items():
        if parts:
            merged = pd.concat(parts, ignore_index=True)
        else:
            merged = pd.DataFrame(columns=ORIGIN + columns(table))
        merged.attrs = {}
        tables[table] = merged
    return Bundle(runs, tables, problems)



def variants_in(bundle: Bundle) -> list[str]:
    names: set[str] = set()
    for df in bundle.tables.values():
        if not df.empty:
            names.update(df["variant"].astype(str))
    return sorted(names)




def throughput_wide(bundle: Bundle) -> pd.DataFrame:
    """One row per measured point (TP_KEY) with one column per metric; roofline and speedup derived if absent.

    The one pivot (bench.store.wide.wide_throughput): only rows with status ok carry numbers (a unit whose
    output was wrong or that timed out contributes none, nor does a speedup against a baseline that failed
    there); failed points are in the throughput section's failure table.
    """
    tp = bundle.tables["throughput"]
    if tp.empty:
        return pd.DataFrame(columns=TP_KEY)
    return wide_throughput(tp, TP_KEY)


def cpu_roofline_has_streaming_copy(bundle: Bundle) -> bool:
    """Whether the CPU rooflines of these runs include the streaming copy (run.json's typed field
    ``roofline_copies``; a schema-1 run is converted on read from its copy_gbps messages, bench.store.run)."""
    return any("streaming copy" in roofline_copies(run.info, device)
               for run in bundle.runs for device in (run.info.get("throughput") or {})
               if str(device).startswith("cpu"))


def byte_formulas(bundle: Bundle) -> list[str]:
    """'op: `formula`' for every op measured, read from its gbps rows (the throughput study writes the op's
    byte formula into the message of every gbps row), in the study's op order."""
    tp = bundle.tables["throughput"]
    rows = tp[(tp["metric"] == "gbps") & (tp["message"].fillna("") != "")] if not tp.empty else tp
    if rows.empty:
        return []
    first = rows.drop_duplicates("op").set_index("op")["message"]
    order = {op: i for i, op in enumerate(THROUGHPUT_OPS)}
    return [f"{op}: `{first[op]}`" for op in sorted(first.index, key=lambda o: (order.get(o, 99), o))]
