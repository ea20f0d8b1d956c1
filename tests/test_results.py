"""bench.store: the run folder - append as measured, read back typed, survive a truncated last line,
resume keys, and clear messages for folders written by another schema.

    .venv/bin/pytest -q tests/test_results.py
"""

from __future__ import annotations

import json
import math

import pytest

from bench import UserError
from bench.store.rows import SCHEMA_VERSION, StabilityRow, ThroughputRow, columns, key_of
from bench.store.run import Run

KEY = ("variant", "device", "dtype", "op", "rows", "cols", "metric")


def _row(variant: str = "torch", metric: str = "median_s", value: float | None = 1.5e-3, status: str = "ok",
         message: str = "") -> ThroughputRow:
    return ThroughputRow(variant, "cpu", "float32", "softmax_fwd", 4096, 4096, metric, value, "s", status, message)


def test_create_append_read_roundtrip(tmp_path):
    run = Run.create(tmp_path, ["softmax-bench", "throughput"], {"name": "quick"})
    assert run.path.parent == tmp_path and (run.path / "run.json").is_file()
    run.append(_row(), _row("naive", value=2.5e-3), _row("bad", value=None, status="error", message="ValueError: x, y"))
    run.append(StabilityRow("naive", "cpu", "float32", "softmax", "translation", 1e3, 10, "nonfinite", 1.0, "count"))
    assert set(run.tables()) == {"throughput", "stability"}
    df = run.read("throughput")
    assert list(df.columns) == columns("throughput")
    assert len(df) == 3
    assert df["rows"].tolist() == [4096] * 3 and str(df["rows"].dtype) == "Int64"
    assert df["value"].iloc[0] == 1.5e-3 and math.isnan(df["value"].iloc[2])
    assert df["message"].iloc[2] == "ValueError: x, y"  # a comma in a message survives the CSV
    assert df.attrs["problems"] == []


def test_header_written_once_and_rows_flushed_per_append(tmp_path):
    run = Run.create(tmp_path)
    run.append(_row())
    first = run.csv_path("throughput").read_text()
    run.append(_row("naive"))
    lines = run.csv_path("throughput").read_text().splitlines()
    assert first.splitlines() == lines[:2]  # what was on disk stays; one header
    assert lines[0] == ",".join(columns("throughput")) and len(lines) == 3


def test_truncated_last_line_is_dropped_then_repaired_on_append(tmp_path):
    run = Run.create(tmp_path)
    run.append(_row(), _row("naive"))
    path = run.csv_path("throughput")
    path.write_bytes(path.read_bytes()[:-17])  # a kill mid-write leaves half a line
    df = run.read("throughput")
    assert df["variant"].tolist() == ["torch"]
    assert any("truncated" in p for p in df.attrs["problems"])
    run.append(_row("logsumexp"))  # the partial line is cut before appending, not glued to the new one
    df = run.read("throughput")
    assert df["variant"].tolist() == ["torch", "logsumexp"] and df.attrs["problems"] == []


def test_line_with_wrong_field_count_is_reported(tmp_path):
    run = Run.create(tmp_path)
    run.append(_row())
    with open(run.csv_path("throughput"), "a") as f:
        f.write("torch,cpu,float32\n")
    df = run.read("throughput")
    assert len(df) == 1 and "line 3" in df.attrs["problems"][0]


def test_resume_keys(tmp_path):
    run = Run.create(tmp_path)
    rows = [_row(), _row(metric="gbps", value=3.0), _row("naive", value=None, status="oom")]
    run.append(*rows)
    done = Run.open(run.path).done("throughput", KEY)
    assert done == {key_of(r, KEY) for r in rows}
    assert key_of(_row(metric="p20_s"), KEY) not in done
    assert ("torch", "cpu", "float32", "softmax_fwd", "4096", "4096", "median_s") in done
    assert Run.create(tmp_path).done("throughput", KEY) == set()  # nothing measured yet


def test_schema_mismatch_in_csv_header_is_a_clear_user_error(tmp_path):
    run = Run.create(tmp_path)
    run.csv_path("throughput").write_text("variant,device,metric,value\ntorch,cpu,median_s,1\n")
    with pytest.raises(UserError, match="another schema version"):
        run.read("throughput")


def test_schema_mismatch_in_run_json_is_a_clear_user_error(tmp_path):
    run = Run.create(tmp_path)
    info = json.loads((run.path / "run.json").read_text())
    info["schema"] = SCHEMA_VERSION + 1
    (run.path / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=f"schema {SCHEMA_VERSION + 1}"):
        Run.open(run.path)


def test_open_rejects_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        Run.open(tmp_path / "missing")
    with pytest.raises(UserError, match="no run.json"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Run.open(tmp_path)


def test_resumed_commands_and_saved_info_persist(tmp_path):
    run = Run.create(tmp_path, ["softmax-bench", "throughput", "--quick"], {"name": "quick"})
    again = Run.open(run.path)
    again.record_command(["softmax-bench", "throughput", "--resume", str(run.path)])
    again.info["throughput"] = {"cpu": {"allocator": "kept"}}
    again.save_info()
    info = Run.open(run.path).info
    assert [c["argv"][-1] for c in info["commands"]] == ["--quick", str(run.path)]
    assert info["throughput"]["cpu"]["allocator"] == "kept"
    assert info["machine"]["cpu_count"] >= 1


def test_archived_run_reads_like_the_live_one_and_a_damaged_archive_is_named(tmp_path):
    run = Run.create(tmp_path / "results", ["softmax-bench", "all"], {})
    run.append(_row(), _row("naive", value=2.5e-3), _row("bad", value=None, status="oom", message="out of memory"))
    run.append(StabilityRow("naive", "cpu", "float16", "softmax", "translation", 12.0, 10, "nonfinite", 3.0, "count"))
    archived = Run.open(run.archive(tmp_path / "reports" / "ref" / "runs" / run.path.name))
    assert sorted(p.name for p in archived.path.iterdir()) == ["run.json", "stability.csv.gz", "throughput.csv.gz"]
    assert set(archived.tables()) == {"throughput", "stability"}
    for table in ("throughput", "stability"):
        assert archived.read(table).equals(run.read(table))
    (archived.path / "stability.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="stability.csv.gz is not a readable gzip file"):
        archived.read("stability")
