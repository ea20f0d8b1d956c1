"""One writer per run folder: an flock on ``<run>/.writer.lock`` (readers never lock), and the checks that
refuse an unwritable or nearly full folder before anything is measured."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import weakref
from datetime import datetime, timezone
from pathlib import Path

from bench import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not detected
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".writer.lock"
# A run folder must have this much free space before a study starts: the largest full run writes a few MB,
# so under this the disk fills mid-run, which costs the measurements of that moment.
MIN_FREE_BYTES = 32 * 2**20


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
