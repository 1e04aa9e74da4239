"""One writer per run folder (latentvi.train.lock): a second job is refused in one line naming
the holder and leaves the folder byte-identical; a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentvi import cli
from latentvi.train.lock import LOCK_FILE, RunFolderLockedError, read_lock, run_lock

from .test_faults import TINY, run_cli, snapshot


def write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": "latentvi train vae"}
    (folder / LOCK_FILE).write_text(json.dumps(record) + "\n")


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test (ended by its pid afterwards)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_file_names_the_holder_and_goes_away(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, command="latentvi train vae --out run"):
        holder = read_lock(out)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "latentvi train vae --out run"
        with run_lock(out):  # re-entrant: a job's fit takes it again
            assert (out / LOCK_FILE).is_file()
        assert (out / LOCK_FILE).is_file()
    assert not out.exists()  # created by the lock, left empty: removed again


def test_a_live_holder_refuses_a_second_job_in_one_line(tmp_path, capsys, live_pid):
    out = tmp_path / "run"
    write_lock(out, live_pid)
    (out / "notes.txt").write_text("kept\n")
    before = snapshot(out)
    status, err = run_cli([*TINY, "--max-steps", "2", "--out", str(out)], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"locked by pid {live_pid} on {socket.gethostname()}" in err[0]
    assert snapshot(out) == before  # the holder's lock and every file are untouched
    with pytest.raises(RunFolderLockedError), run_lock(out):
        pass
    assert snapshot(out) == before


def test_a_holder_on_another_host_is_never_taken_over(tmp_path, dead_pid):
    out = tmp_path / "run"
    write_lock(out, dead_pid, host="another-host.example")
    with pytest.raises(RunFolderLockedError, match=r"another-host\.example"), run_lock(out):
        pass


def test_a_stale_lock_from_a_dead_pid_is_taken_over(tmp_path, capsys, dead_pid):
    out = tmp_path / "run"
    write_lock(out, dead_pid)
    status, err = run_cli([*TINY, "--max-steps", "2", "--out", str(out)], capsys)
    assert status == 0, err
    assert not (out / LOCK_FILE).exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert not [p for p in out.iterdir() if p.name.startswith(LOCK_FILE)]


def test_an_unreadable_lock_is_stale_only_when_old(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # a holder between O_EXCL and its write, or a crash there
    with pytest.raises(RunFolderLockedError, match="unknown process"), run_lock(out):
        pass
    old = time.time() - 60
    os.utime(out / LOCK_FILE, (old, old))
    with run_lock(out):
        assert read_lock(out)["pid"] == os.getpid()


@pytest.mark.slow
def test_two_jobs_on_one_folder(tmp_path, capsys):
    """A real second job while the first trains: refused; the first finishes unharmed."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    first = subprocess.Popen(
        [sys.executable, "-m", "latentvi.cli", *TINY, "--max-steps", "400", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while read_lock(out) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert read_lock(out)["pid"] == first.pid
        for argv in ([*TINY, "--max-steps", "2"], [*TINY, "--max-steps", "800", "--resume"]):
            status, err = run_cli([*argv, "--out", str(out)], capsys)
            assert status == 2 and len(err) == 1, err
            assert f"locked by pid {first.pid}" in err[0]
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (out / LOCK_FILE).exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000400"
    assert cli.main([*TINY, "--max-steps", "402", "--out", str(out), "--resume"]) == 0
