"""The report's Findings, generated from stored rows: on the committed reference run (real measurements) and
on hand-made cells where the answer is known.

    .venv/bin/pytest -q tests/test_findings.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report.bundle import load, throughput_wide
from bench.report.sections.findings import WORKLOADS, breakdowns, findings, workload_finding
from bench.report.sections.stability import stability_cells

ROOT = Path(__file__).resolve().parents[1]


def _reference():
    runs = sorted((ROOT / "reports").glob("*/runs/*"))
    bundle = load(runs[:1])
    return throughput_wide(bundle), stability_cells(bundle)


def test_findings_of_the_reference_run_name_the_fastest_stable_and_the_most_accurate() -> None:
    wide, cells = _reference()
    lines = findings(wide, cells)
    chapter = next(line for line in lines if "10-class" in line)
    assert "fastest as stable as `torch`" in chapter and "most accurate: accurate" in chapter
    llm = next(line for line in lines if "LLM vocabularies" in line)
    assert "bfloat16" in llm and "most accurate" in llm
    assert any(line.startswith("jax (JAX/XLA) breaks in") for line in lines)  # a public kernel's breakdowns


def _wide(speeds: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"device_name": "CPU", "dtype": "float32", "op": "softmax_fwd", "rows": 64,
                          "cols": 4096, "variant": v, "speedup_vs_torch": s} for v, s in speeds.items()])


def _cells(failed: dict[str, list[str]], families=("a", "b", "c")) -> pd.DataFrame:
    return pd.DataFrame([{"device_name": "CPU", "dtype": "float32", "variant": v, "family": f,
                          "result": "fail" if f in fails else "pass", "max_err_u": 1.0}
                         for v, fails in failed.items() for f in families])


def test_a_faster_but_less_stable_kernel_is_not_the_recommendation() -> None:
    wide = _wide({"torch": 1.0, "fast": 3.0, "safe": 2.0, "exact": 0.5})
    cells = _cells({"torch": ["a"], "fast": ["a", "b"], "safe": ["a"], "exact": []})
    line = workload_finding(wide, cells, "CPU", WORKLOADS[1])
    assert "fastest as stable as `torch`: safe, 2.00x" in line
    assert "most accurate: exact" in line and "fast 3.00x (also fails b)" in line


def test_public_kernels_breakdowns_link_the_reproducers() -> None:
    cells = _cells({"torch": ["a"], "onnxruntime": ["b"], "jax": []})
    lines = breakdowns(cells)
    assert any(line.startswith("onnxruntime") and "b (float32)" in line and "peers.md" in line
               for line in lines)
    assert any("jax" in line and "passes every family" in line for line in lines)
