"""The report's opening: what it is, the machines and commands, what is missing or damaged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.bundle import Bundle
from bench.report.render import Doc


def machines(bundle: Bundle) -> pd.DataFrame:
    rows = []
    for run in bundle.runs:
        m = run.machine
        gpus = ", ".join(f"{g.get('name')} ({(g.get('memory_bytes') or 0) / 2**30:.0f} GiB, sm{g.get('capability')})"
                         for g in m.get("gpus") or [] if isinstance(g, dict)) or "none"
        commit = str(m.get("git_commit") or "?")[:10] + (" (dirty)" if m.get("git_dirty") else "")
        rows.append({
            "run": run.name, "host": run.host, "CPU": m.get("cpu", "?"),
            "cores / torch threads": f"{m.get('cpu_count', '?')} / {m.get('torch_threads', '?')}",
            "GPU": gpus, "python": m.get("python", "?"), "torch": m.get("torch", "?"),
            "CUDA / driver": f"{m.get('torch_cuda') or '—'} / {m.get('cuda_driver') or '—'}",
            "triton": m.get("triton") or "—", "commit": commit,
            "tables": ", ".join(run.tables) or "none",
        })
    return pd.DataFrame(rows)


def commands(bundle: Bundle) -> pd.DataFrame:
    rows = []
    for run in bundle.runs:
        for c in run.info.get("commands") or []:
            argv = c.get("argv") or []
            rows.append({"run": run.name, "started": str(c.get("started", ""))[:19],
                         "command": " ".join(["softmax-bench", *map(str, argv[1:])]) if argv else "?"})
    return pd.DataFrame(rows, columns=["run", "started", "command"])


def add(doc: Doc, bundle: Bundle, out: Path, palette: dict[str, Any]) -> None:
    """The opening paragraph, the machines and commands, and what is missing or damaged."""
    doc.p("Softmax and cross-entropy variants measured three ways: throughput against the device's own copy "
          "bandwidth, numerical stability against a high-precision reference, and final accuracy of the d2l "
          "chapter's softmax regression on Fashion-MNIST. Every number below is read from the stored rows of "
          "the run folders listed here; the tidy rows themselves are in `data/` (gzipped CSV).")

    doc.h("Machines and versions")
    doc.table(machines(bundle))
    doc.table(commands(bundle), "Commands that wrote into the run folders")
    missing = bundle.missing()
    if missing or bundle.problems:
        doc.h("What is missing or damaged")
        doc.ul(missing, "missing")
        doc.ul(bundle.problems, "missing")
