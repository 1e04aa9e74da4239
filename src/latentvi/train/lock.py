"""One writer per run folder: a lock file that names its holder.

``with run_lock(out):`` creates ``out/.lock`` atomically (``O_CREAT | O_EXCL``) holding the
holder's pid, host, command and start time as JSON, and removes it on the way out. A second job
on the same folder gets :class:`RunFolderLockedError` (a ValueError: one line, exit code 2, naming
the holder) and writes nothing. A lock left by a process that is gone (its pid is not alive on
this host) is stale and taken over. The lock is re-entrant within a process: a job that holds it
may call :func:`~latentvi.train.loop.fit`, which takes it again.

Inside the lock a filesystem or memory error (``OSError``, ``MemoryError``) becomes
:class:`~latentvi.train.errors.RunFailedError`: one line naming the path and the cause, exit
code 1 from the CLI (the run had started).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from latentvi.train.distributed import current
from latentvi.train.errors import RunFailedError, describe_os_error

__all__ = ["LOCK_FILE", "RunFolderLockedError", "check_unlocked", "read_lock", "run_lock"]

LOCK_FILE = ".lock"
_UNREADABLE_GRACE_S = 5.0  # a lock file still empty after this long was left by a crash
_HELD: dict[str, int] = {}  # resolved folder -> depth, locks this process holds


class RunFolderLockedError(ValueError):
    """Another live process writes the run folder (the message names it)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def read_lock(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The holder recorded in ``folder/.lock`` (``pid``, ``host``, ``command``, ``started``),
    ``{}`` for an unreadable lock file, or None when there is none."""
    path = Path(folder) / LOCK_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(path: Path, holder: dict[str, Any]) -> bool:
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        try:  # being written right now, or left half-written by a crash
            return time.time() - path.stat().st_mtime > _UNREADABLE_GRACE_S
        except FileNotFoundError:
            return True
    return host == socket.gethostname() and not _alive(pid)


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "an unknown process"
    command = str(holder.get("command", "?")).replace("\n", " ")[:200]
    return f"pid {holder['pid']} on {holder.get('host', '?')} ({command})"


def _locked(folder: Path, holder: dict[str, Any]) -> RunFolderLockedError:
    return RunFolderLockedError(
        f"out = {str(folder)!r} is locked by {_describe(holder)}, which is writing it: wait for "
        f"it to finish, or choose another folder (delete {folder / LOCK_FILE} only if that "
        "process is gone)"
    )


def check_unlocked(out: str | os.PathLike) -> None:
    """Refuse, writing nothing, a folder that another live process holds (checked first, so
    that a second job hears about the holder rather than about the holder's files). Ranks > 0
    of a data-parallel run do not check: rank 0 holds the lock for them."""
    if not current().is_main:  # only rank 0 writes (and locks) a data-parallel run's folder
        return
    folder = Path(out)
    holder = read_lock(folder)
    if holder is None or str(folder.resolve()) in _HELD:
        return
    if not _stale(folder / LOCK_FILE, holder):
        raise _locked(folder, holder)


def _acquire(folder: Path, command: str) -> None:
    path = folder / LOCK_FILE
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,
    }
    for _ in range(5):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(folder)
            if holder is None:  # released meanwhile
                continue
            if not _stale(path, holder):
                raise _locked(folder, holder) from None
            # Stale: move it aside under a unique name (one taker wins), then try again.
            aside = folder / f"{LOCK_FILE}.stale-{record['token']}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
                aside.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        return
    raise RunFolderLockedError(f"out = {str(folder)!r}: could not take its lock {path}; try again")


def _release(folder: Path) -> None:
    holder = read_lock(folder)
    if holder and holder.get("pid") == os.getpid():
        (folder / LOCK_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``out``'s lock (creating the folder) for the block; see the module docstring.
    Raises :class:`RunFolderLockedError` when a live process holds it. A folder this call created
    is removed again when the block leaves it empty."""
    folder = Path(out)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _acquire(folder, command if command is not None else " ".join(sys.argv))
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(folder / LOCK_FILE)) from None
    _HELD[key] = 1
    try:
        yield folder
    except (OSError, MemoryError) as error:
        raise RunFailedError(describe_os_error(error)) from error
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            _release(folder)
            if created and not any(folder.iterdir()):
                folder.rmdir()
