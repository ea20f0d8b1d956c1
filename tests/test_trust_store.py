"""What a user has is never lost, the registry cannot be hijacked, and bad options are refused.

Real run folders (written by the studies or by bench.store), real plugin distributions (tests/plugin_fixtures),
real processes for the lock, a real full device (/dev/full) for a disk that fills mid-run.

    .venv/bin/pytest -q tests/test_trust_store.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from plugin_fixtures import install_plugin

import softmax_impls
from bench import UserError
from bench.cli import main as cli_main
from bench.measure.host import parse_device
from bench.store import lock
from bench.store.recover import recover
from bench.store.rows import StabilityRow, ThresholdRow, columns
from bench.store.run import Run
from bench.studies.common import pick, select_variants
from bench.studies.throughput.presets import THROUGHPUT_PRESETS

ROOT = Path(__file__).resolve().parents[1]
# The smallest real study: one variant, one family, one dtype (about a second on a 2-core CPU).
TINY = ["stability", "--quick", "--family", "translation", "--dtype", "float32"]


def _stability_row(variant: str = "naive", param: float = 1.0) -> StabilityRow:
    return StabilityRow(variant, "cpu", "float32", "softmax", "translation", param, 10, "nonfinite", 0.0, "count")


def _threshold_row(variant: str = "naive") -> ThresholdRow:
    return ThresholdRow(variant, "cpu", "float32", "softmax", "overflow", 88.7, "[c, c-1, ..., c-9]")


def _one_paragraph(err: str) -> str:
    """The CLI's closing message (after any progress lines), joined into one line; never a traceback."""
    assert "Traceback" not in err and "softmax-bench:" in err, err
    return " ".join(err[err.rindex("softmax-bench:"):].split())


def _only_run(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


# -- 1. resuming an archived run keeps its archived rows ----------------------------------------------------

def test_resuming_an_archived_run_appends_to_its_archived_rows(tmp_path, capsys):
    assert cli_main([*TINY, "--variant", "naive", "--results-dir", str(tmp_path / "results")]) == 0
    measured = Run.open(_only_run(tmp_path / "results"))
    before = measured.read("stability")
    archived = measured.archive(tmp_path / "reports" / "ref" / "runs" / measured.path.name)
    assert not (archived / "stability.csv").exists()

    assert cli_main([*TINY, "--variant", "naive", "--variant", "logsumexp", "--resume", str(archived)]) == 0
    capsys.readouterr()
    after = Run.open(archived).read("stability")
    assert set(after["variant"]) == {"naive", "logsumexp"}
    kept = after[after["variant"] == "naive"].reset_index(drop=True)
    assert kept.equals(before)  # the archived rows are all there, and naive was not measured again
    assert (archived / "stability.csv.gz").exists()  # the user's archive is left as it was


def test_a_plain_csv_begun_beside_an_archive_does_not_hide_it(tmp_path):
    """A folder resumed by an older softmax-bench: rows in <table>.csv.gz and a fresh <table>.csv."""
    run = Run.create(tmp_path / "results", ["test"], {})
    run.append(*[_stability_row(param=float(p)) for p in range(5)])
    archived = Run.open(run.archive(tmp_path / "archived"))
    fresh = archived.csv_path("stability")
    fresh.write_text(",".join(columns("stability")) + "\n"
                     "logsumexp,cpu,float32,softmax,translation,1.0,10,nonfinite,0.0,count,ok,\n")
    assert len(archived.read("stability")) == 6
    resumed = Run.resume(archived.path, ["test"], {})
    resumed.append(_stability_row("online"))
    assert Run.open(archived.path).read("stability")["variant"].tolist() == ["naive"] * 5 + ["logsumexp", "online"]


def test_a_damaged_archive_beside_its_live_copy_does_not_hide_the_live_rows(tmp_path):
    run = Run.create(tmp_path / "results", ["test"], {})
    run.append(_stability_row(param=1.0))
    archived = run.archive(tmp_path / "archived")
    resumed = Run.resume(archived, ["test"], {})  # turns the archive into a live stability.csv
    resumed.append(_stability_row(param=2.0))
    (archived / "stability.csv.gz").write_bytes(b"not gzip")
    df = Run.open(archived).read("stability")
    assert df["param"].tolist() == [1.0, 2.0] and "not a readable gzip file" in df.attrs["problems"][0]


# -- 2. one writer per run folder ---------------------------------------------------------------------------

HOLD = ("import sys; from bench.store.run import Run; run = Run.resume(sys.argv[1]); print('holding', flush=True); "
        "input()")


def test_a_second_writer_is_refused_and_readers_are_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run = Run.create(tmp_path / "results", ["test"], {})
    run.append(_stability_row())
    run.close()
    del run
    path = _only_run(tmp_path / "results")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert cli_main([*TINY, "--variant", "naive", "--resume", str(path)]) == 2
        err = _one_paragraph(capsys.readouterr().err)
        assert f"{path} is being written by another softmax-bench process (pid {holder.pid}" in err
        assert "measure every unit twice" in err and f"--resume {path}" in err
        assert len(Run.open(path).read("stability")) == 1  # nothing was written; a reader still reads
        with pytest.raises(UserError, match="being written by another.*They are saved in"):
            Run.open(path).append(_stability_row(param=9.0))  # a late writer's rows go to a fallback file
        assert (tmp_path / "softmax-bench-unsaved" / f"{path.name}-stability.csv").is_file()
    finally:
        holder.kill()  # even a killed writer leaves no stale lock
        holder.wait()
    assert cli_main([*TINY, "--variant", "naive", "--resume", str(path)]) == 0
    assert len(Run.open(path).read("stability")) > 1


# -- 3. a folder that cannot be written is refused before measuring; a full disk loses no row --------------

def test_a_results_dir_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("not a folder")
    for where in (taken, taken / "sub"):
        assert cli_main([*TINY, "--variant", "naive", "--results-dir", str(where)]) == 2
        err = _one_paragraph(capsys.readouterr().err)
        assert f"cannot write into {where}" in err and "--results-dir" in err and "Nothing was measured" in err
    assert taken.read_text() == "not a folder"


def test_a_nearly_full_disk_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    run = Run.create(tmp_path / "old", ["test"], {})
    run.close()
    monkeypatch.setattr(lock, "MIN_FREE_BYTES", 2**62)  # more than any disk: "nearly full" here
    assert cli_main([*TINY, "--variant", "naive", "--results-dir", str(tmp_path / "results")]) == 2
    assert "MB free on the disk of" in _one_paragraph(capsys.readouterr().err)
    assert list((tmp_path / "results").iterdir()) == []  # no half-made run folder
    assert cli_main([*TINY, "--variant", "naive", "--resume", str(run.path)]) == 2
    assert "Free some space" in _one_paragraph(capsys.readouterr().err)
    assert not run.csv_path("stability").exists()


def test_a_run_folder_this_user_cannot_write_is_refused(tmp_path):
    """Run as another user (root writes through permissions): the CLI refuses before measuring."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop to another user")
        prefix = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*prefix, sys.executable, "-c", "import bench.store.run"], cwd=ROOT,
                               capture_output=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip("this checkout or its venv is not readable by another user")
    base = Path(tempfile.mkdtemp(prefix="softmax-bench-perm-", dir="/tmp"))  # traversable by that user
    try:
        base.chmod(0o755)
        run = Run.create(base / "results", ["test"], {})
        run.close()
        run.path.chmod(0o555)
        home = base / "home"
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        done = subprocess.run([*prefix, sys.executable, "-m", "bench.cli", *TINY, "--variant", "naive",
                               "--resume", str(run.path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": str(home)})
        assert done.returncode == 2, done.stderr
        err = _one_paragraph(done.stderr)
        assert f"cannot write into {run.path}: Permission denied. Nothing was measured." in err
        assert not run.csv_path("stability").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_rows_a_full_disk_refuses_are_saved_elsewhere_and_recovered(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    run = Run.create(tmp_path / "results", ["test"], {})
    run.append(_stability_row(param=1.0))
    run.csv_path("thresholds").symlink_to("/dev/full")  # every write into it fails with ENOSPC
    with pytest.raises(UserError) as info:
        run.append(_threshold_row("naive"), _stability_row(param=2.0))
    message = str(info.value)
    fallbacks = sorted((tmp_path / "tmp" / "softmax-bench-unsaved").iterdir())
    assert [f.name for f in fallbacks] == [f"{run.path.name}-stability.csv", f"{run.path.name}-thresholds.csv"]
    assert "No space left on device" in message and str(run.path) in message
    assert all(str(f) in message for f in fallbacks) and "softmax-bench recover" in message
    with pytest.raises(UserError):  # later rows follow the unsaved ones, in order
        run.append(_threshold_row("logsumexp"))
    assert len(Run.open(run.path).read("stability")) == 1  # what was written before is intact

    run.csv_path("thresholds").unlink()  # the disk has room again
    assert cli_main(["recover", str(run.path), *[a for f in fallbacks for a in ("--add", str(f))]]) == 0
    out = capsys.readouterr().out
    assert "added 1 row(s)" in out and "added 2 row(s)" in out
    again = Run.open(run.path)
    assert again.read("thresholds")["variant"].tolist() == ["naive", "logsumexp"]
    assert again.read("stability")["param"].tolist() == [1.0, 2.0]


# -- 4. a lost or incomplete run.json: a clear message, and `recover` ---------------------------------------

def _run_with_rows(tmp_path: Path) -> Run:
    run = Run.create(tmp_path / "results", ["softmax-bench", "stability"], {})
    run.append(_stability_row(param=1.0), _stability_row(param=2.0), _threshold_row())
    run.close()
    return run


def test_run_json_without_commands_is_read_refused_for_resume_and_recovered(tmp_path, capsys):
    run = _run_with_rows(tmp_path)
    meta = run.path / "run.json"
    info = json.loads(meta.read_text())
    info["commands"] = None
    meta.write_text(json.dumps(info))
    opened = Run.open(run.path)  # a report still reads it
    assert opened.problems == ["run.json has no valid 'commands'"] and opened.info["commands"] == []
    assert len(opened.read("stability")) == 2

    assert cli_main([*TINY, "--variant", "naive", "--resume", str(run.path)]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "run.json is incomplete" in err and f"softmax-bench recover {run.path}" in err

    assert cli_main(["recover", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "could not rebuild: the commands that wrote the run" in out and "kept as it was: machine" in out
    (backup,) = run.path.glob("run.json.damaged-*")
    assert json.loads(backup.read_text())["commands"] is None  # the user's file is kept beside
    resumed = Run.resume(run.path, ["test"], {})
    assert resumed.info["machine"] == info["machine"] and len(resumed.read("stability")) == 2


def test_a_lost_run_json_is_rebuilt_from_the_tables(tmp_path, capsys):
    run = _run_with_rows(tmp_path)
    before = run.read("stability")
    (run.path / "run.json").unlink()
    with pytest.raises(UserError, match=f"has tables but no run.json.*softmax-bench recover {run.path}"):
        Run.open(run.path)
    assert cli_main(["recover", str(run.path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rebuilt: created" in out and "(from the folder name)" in out and "rebuilt: machine host" in out
    assert "could not rebuild: the machine's details" in out and "stability: 2 row(s)" in out
    recovered = Run.open(run.path)
    assert recovered.problems == [] and recovered.read("stability").equals(before)
    assert recovered.info["created"].startswith(run.info["created"][:16])
    assert recovered.info["machine"]["host"] == run.info["machine"]["host"]


def test_recover_keeps_a_damaged_run_json_and_says_when_there_is_nothing_to_do(tmp_path, capsys):
    run = _run_with_rows(tmp_path)
    (run.path / "run.json").write_text("{half a json")
    with pytest.raises(UserError, match="not valid JSON.*softmax-bench recover"):
        Run.open(run.path)
    lines = recover(run.path)
    assert any("could not rebuild: any study settings" in line for line in lines)
    (backup,) = run.path.glob("run.json.damaged-*")
    assert backup.read_text() == "{half a json"
    assert recover(run.path)[0].endswith("is complete; nothing to rebuild.")
    (tmp_path / "empty").mkdir()
    assert cli_main(["recover", str(tmp_path / "empty")]) == 2
    assert "nothing to recover" in _one_paragraph(capsys.readouterr().err)


# -- 5. the registry cannot be hijacked -----------------------------------------------------------------------

def _plugin_source(name: str) -> str:
    return f'''
import torch
from softmax_impls import Variant

variant = Variant(name={name!r}, summary="a plugin", softmax=lambda x, dim=-1: torch.softmax(x, dim),
                  cross_entropy=lambda logits, target: torch.nn.functional.cross_entropy(logits, target,
                                                                                         reduction="none"))
'''


@pytest.fixture
def clean_registry():
    yield
    softmax_impls.reload()  # the monkeypatch has taken the plugins off sys.path by now


def test_a_name_registered_twice_is_a_conflict_and_neither_is_used(tmp_path, monkeypatch, capsys,
                                                                   clean_registry):
    install_plugin(tmp_path, monkeypatch, "fast_softmax_a", _plugin_source("fastest"), {"fastest": "variant"})
    install_plugin(tmp_path, monkeypatch, "fast_softmax_b", _plugin_source("fastest"), {"fastest": "variant"})
    assert "fastest" not in softmax_impls.names()
    assert "fastest" not in [v.name for v in softmax_impls.all_variants()]
    with pytest.raises(softmax_impls.UnknownVariantError) as info:
        softmax_impls.get("fastest")
    for text in ("fast_softmax_a_mod:variant (distribution fast_softmax_a 0.1)",
                 "fast_softmax_b_mod:variant (distribution fast_softmax_b 0.1)", "neither is used"):
        assert text in str(info.value)

    assert cli_main(["list"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fastest ")]
    assert "CONFLICT" in line and "fast_softmax_a_mod:variant" in line and "fast_softmax_b_mod:variant" in line
    assert "fastest" not in [v.name for v in select_variants(None)]
    assert "registered twice" in capsys.readouterr().err
    with pytest.raises(UserError, match="registered twice"):
        select_variants(["fastest"])


def test_a_plugin_cannot_replace_the_torch_baseline(tmp_path, monkeypatch, capsys, clean_registry):
    from softmax_impls import torch_builtin

    install_plugin(tmp_path, monkeypatch, "evil_baseline", _plugin_source("torch"), {"torch": "variant"})
    assert softmax_impls.get("torch") is torch_builtin.variant
    assert "torch" in softmax_impls.names()
    conflict = softmax_impls.conflicts()["torch"]
    assert conflict.kept is not None and conflict.kept.value == "softmax_impls.torch_builtin:variant"
    assert cli_main(["list"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "REJECTED" in ln]
    assert line.startswith("torch ") and "evil_baseline_mod:variant (distribution evil_baseline 0.1)" in line
    assert softmax_impls.get("torch") in select_variants(None)
    assert "is rejected" in capsys.readouterr().err


def test_the_same_registration_listed_twice_is_not_a_conflict(tmp_path, monkeypatch, clean_registry):
    """An editable install beside a build folder lists the same (name, target) twice."""
    install_plugin(tmp_path, monkeypatch, "softmax_bench_build", "", {"naive": "variant"},
                   module="softmax_impls.naive")
    assert softmax_impls.conflicts() == {}
    x = torch.randn(3, 7)
    assert torch.allclose(softmax_impls.get("naive").softmax(x), torch.softmax(x, -1))


# -- 6. SIGTERM stops a study like Ctrl-C --------------------------------------------------------------------

SIGTERM_SOURCE = '''
import os, signal
import torch
from softmax_impls import Variant


def _terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID`, a scheduler or a CI timeout sends mid-run
    raise AssertionError("SIGTERM did not stop the study")


variant = Variant(name="terminated", summary="gets SIGTERM", softmax=_terminated, cross_entropy=_terminated)
'''


class _NotHandled(Exception):
    pass


def _unhandled(signum: int, frame: object) -> None:
    raise _NotHandled("the CLI did not install its SIGTERM handler")


def test_sigterm_keeps_the_rows_and_says_how_to_resume(tmp_path, monkeypatch, capsys, clean_registry):
    install_plugin(tmp_path, monkeypatch, "terminated_plugin", SIGTERM_SOURCE, {"terminated": "variant"})
    previous = signal.signal(signal.SIGTERM, _unhandled)  # if main forgot its handler: a failure, not a kill
    try:
        code = cli_main([*TINY, "--variant", "terminated", "--results-dir", str(tmp_path / "results")])
        assert signal.getsignal(signal.SIGTERM) is _unhandled  # main put the caller's handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143
    err = _one_paragraph(capsys.readouterr().err)
    assert "stopped by SIGTERM; every row measured so far is saved in the run folder (use --resume RUN)" in err
    assert (_only_run(tmp_path / "results") / "run.json").is_file()


def test_a_full_disk_anywhere_is_one_paragraph_and_a_bug_stays_a_traceback(monkeypatch, capsys):
    import errno

    from bench import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "reports/x/index.html")

    monkeypatch.setattr(cli, "run_list", full)
    assert cli_main(["list"]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "No space left on device (reports/x/index.html)" in err and "--resume RUN" in err

    def bug(args):
        raise ValueError("a genuine bug")

    monkeypatch.setattr(cli, "run_list", bug)
    with pytest.raises(ValueError, match="a genuine bug"):
        cli_main(["list"])


# -- 7. bad options ---------------------------------------------------------------------------------------

def test_a_cpu_index_and_an_empty_preset_are_refused(capsys):
    with pytest.raises(UserError, match="use --device cpu"):
        parse_device("cpu:1")
    assert parse_device("cpu") == torch.device("cpu")
    assert cli_main([*TINY, "--variant", "naive", "--device", "cpu:1"]) == 2
    assert "'cpu:1'" in _one_paragraph(capsys.readouterr().err)
    for empty in ("", "  "):
        with pytest.raises(UserError, match="empty throughput preset name.*" + ", ".join(THROUGHPUT_PRESETS)):
            pick("throughput preset", THROUGHPUT_PRESETS, empty, default="quick")
    assert pick("throughput preset", THROUGHPUT_PRESETS, None, default="quick").name == "quick"
