"""Fault injection: full disks, read-only folders and files in the way, at each write a tiny run
makes. Every failure is one line on stderr naming the path and the cause, exit code 2 before a
run starts and 1 during one, and every file that was there is byte-identical afterwards.

The tests run as root here, where ``chmod`` does not stop writes: the disk errors are injected
by patching the two functions every run-folder write goes through
(:func:`latentvi.train.storage.write_bytes` and :func:`~latentvi.train.storage.replace_file`).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from latentvi import cli
from latentvi.train import find_latest, storage
from latentvi.train.lock import LOCK_FILE

TINY = ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16"]
TINY += ["--seed", "0", "--no-progress", "--no-tensorboard", "--checkpoint-every", "2"]


def snapshot(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    code = cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


class FullStream:
    """A real file whose ``write`` fails as on a full (or read-only) disk: no file name."""

    def __init__(self, stream, code: int) -> None:
        self.stream, self.code = stream, code

    def write(self, data) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


class Faults:
    """Counts the writes of a run; in the ``fail_at``-th (1-based) the file's ``write`` raises
    ``OSError(code)``, as the kernel does when the disk is full."""

    def __init__(self, monkeypatch, fail_at: int | None = None, code: int = errno.ENOSPC):
        self.count, self.fail_at, self.code, self.paths = 0, fail_at, code, []
        write_bytes, replace_file = storage.write_bytes, storage.replace_file

        def counted(original):
            def write(path, *args):
                self.count += 1
                self.paths.append(str(path))
                if self.count != self.fail_at:
                    return original(path, *args)
                real_open, real_fdopen = open, os.fdopen
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(
                        storage, "open", lambda *a, **k: FullStream(real_open(*a, **k), code),
                        raising=False,
                    )  # fmt: skip
                    patch.setattr(
                        os, "fdopen", lambda *a, **k: FullStream(real_fdopen(*a, **k), code)
                    )
                    return original(path, *args)

            return write

        monkeypatch.setattr(storage, "write_bytes", counted(write_bytes))
        monkeypatch.setattr(storage, "replace_file", counted(replace_file))


@pytest.fixture(scope="module")
def writes_of_a_run(tmp_path_factory) -> int:
    """How many writes a fresh 4-step run makes (21 today: run.json, config, metrics, two
    checkpoints of six files, the pointers)."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        faults = Faults(monkeypatch)
        out = tmp_path_factory.mktemp("count") / "run"
        assert cli.main([*TINY, "--max-steps", "4", "--out", str(out)]) == 0
        return faults.count
    finally:
        monkeypatch.undo()


def check_fresh_run_fails_cleanly(tmp_path, monkeypatch, capsys, fail_at, code) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own notes, kept whatever happens\n")
    before = snapshot(out)
    Faults(monkeypatch, fail_at, code)
    status, err = run_cli([*TINY, "--max-steps", "4", "--out", str(out)], capsys)
    assert status == 1, err
    assert len(err) == 1, err
    assert err[0].startswith("latentvi train: error: cannot write ")
    assert os.strerror(code) in err[0] and str(out) in err[0]
    after = snapshot(out)
    assert {k: after[k] for k in before} == before  # nothing that was there changed
    assert not (out / LOCK_FILE).exists()  # the lock went with the job
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written files
    monkeypatch.undo()
    # nothing lost: a checkpoint that was published still resumes, or the folder starts afresh
    resume = ["--resume"] if find_latest(out) is not None else []
    if not resume and (out / "run.json").exists():
        (out / "run.json").unlink()  # a run with no checkpoint yet: start it again
    assert cli.main([*TINY, "--max-steps", "6", "--out", str(out), *resume]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("fail_at", [1, 5, 11])
def test_disk_full_at_a_write_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys, fail_at):
    check_fresh_run_fails_cleanly(tmp_path, monkeypatch, capsys, fail_at, errno.ENOSPC)


def test_read_only_filesystem_during_a_checkpoint(tmp_path, monkeypatch, capsys):
    check_fresh_run_fails_cleanly(tmp_path, monkeypatch, capsys, 8, errno.EROFS)


@pytest.mark.slow
def test_every_write_of_a_run_fails_cleanly(tmp_path, monkeypatch, capsys, writes_of_a_run):
    assert writes_of_a_run >= 15
    for fail_at in range(1, writes_of_a_run + 1):
        for code in (errno.ENOSPC, errno.EROFS):
            folder = tmp_path / f"{fail_at}-{code}"
            folder.mkdir()
            with pytest.MonkeyPatch.context() as patch:
                check_fresh_run_fails_cleanly(folder, patch, capsys, fail_at, code)


def test_disk_full_during_a_resume_keeps_the_old_checkpoints(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert cli.main([*TINY, "--max-steps", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    kept = {k: v for k, v in snapshot(out).items() if k.startswith("checkpoints/step-")}
    Faults(monkeypatch, 4)  # the first checkpoint file the resumed run writes
    status, err = run_cli([*TINY, "--max-steps", "8", "--out", str(out), "--resume"], capsys)
    assert status == 1 and len(err) == 1 and "No space left on device" in err[0], err
    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"
    monkeypatch.undo()
    assert cli.main([*TINY, "--max-steps", "8", "--out", str(out), "--resume"]) == 0


def test_out_naming_a_file_is_refused_before_anything(tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_bytes(b"precious")
    status, err = run_cli([*TINY, "--max-steps", "2", "--out", str(path)], capsys)
    assert status == 2 and len(err) == 1 and "is a file, not a folder" in err[0], err
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "a-file").write_bytes(b"precious")
    status, err = run_cli([*TINY, "--out", str(tmp_path / "a-file" / "run")], capsys)
    assert status == 2 and len(err) == 1 and "is a file, not a folder" in err[0], err
    assert (tmp_path / "a-file").read_bytes() == b"precious"


def test_a_read_only_location_is_refused_before_anything(tmp_path, capsys, monkeypatch):
    real_access = os.access
    read_only = tmp_path / "read-only"
    read_only.mkdir()

    def access(path, mode, **kwargs):  # root ignores chmod: say what a user would see
        if Path(path) == read_only and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    status, err = run_cli([*TINY, "--out", str(read_only / "run")], capsys)
    assert status == 2 and len(err) == 1 and "cannot write" in err[0], err
    assert list(read_only.iterdir()) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main([*TINY, "--max-steps", "2", "--out", str(out)]) == 0
    return out


def test_sample_out_naming_a_folder_is_refused(trained, tmp_path, capsys):
    capsys.readouterr()
    status, err = run_cli(["sample", str(trained), "--out", str(tmp_path)], capsys)
    assert status == 2 and len(err) == 1 and "is a folder" in err[0], err


def test_plot_on_a_full_disk_is_one_line(trained, tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "figure.png"))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    before = snapshot(trained)
    capsys.readouterr()
    status, err = run_cli(["plot", str(trained), "--out", str(tmp_path / "figs")], capsys)
    assert status == 2 and len(err) == 1, err
    assert "cannot write" in err[0] and "No space left on device" in err[0]
    assert snapshot(trained) == before


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    from latentvi.jobs import vi

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(vi, "run_vi", exhausted)
    status, err = run_cli(["vi", "--out", str(tmp_path / "vi")], capsys)
    assert status == 2 and len(err) == 1 and "out of memory" in err[0], err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, capsys, umask):
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert cli.main([*TINY, "--max-steps", "2", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    for path in [out, *out.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.name == "tensorboard" or "tensorboard" in path.parts:
            continue
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_figures_follow_the_umask(tmp_path, capsys, umask):
    """``plot`` (every figure goes through ``plots.save_figure``) writes PNGs with the mode any
    other file gets, not mkstemp's 0600."""
    out = tmp_path / "run"
    assert cli.main([*TINY, "--max-steps", "2", "--out", str(out)]) == 0
    old = os.umask(umask)
    try:
        assert cli.main(["plot", str(out), "--out", str(tmp_path / "figures")]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert figures
    for path in figures:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))
