"""``kill -9`` at moments drawn with a fixed seed: after a given training step, or halfway
through a given file write (a checkpoint's tensors, its state, the ``latest`` pointer, run.json,
…). Each time the process dies with SIGKILL (no handler, no cleanup: its lock is left behind),
the latest checkpoint loads, at most the steps since it are lost, and the run resumed from it
ends bitwise equal to one that was never killed (slow: one process per kill)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import latentvi
from latentvi import cli
from latentvi.train.checkpoint import find_latest
from latentvi.train.storage import read_tensors

from .test_faults import TINY

pytestmark = pytest.mark.slow

STEPS, EVERY = 12, 2
ARGS = [*TINY, "--max-steps", str(STEPS)]  # TINY checkpoints every 2 steps

# Runs the CLI; dies by SIGKILL after training step N ("step"), or halfway through the N-th
# write of a run-folder file ("write": the two functions every such write goes through; the
# run makes 49 writes, e.g. 3: metrics.jsonl, 10: a checkpoint's state.json, 13: its
# optimizer.safetensors, 32: the latest pointer).
DRIVER = """
import io, os, signal, sys, tempfile
from latentvi import cli
from latentvi.train import loop, storage
mode, n, count = sys.argv[1], int(sys.argv[2]), [0]

def due():
    count[0] += 1
    return count[0] == n

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":
    train_step = loop.train_step
    def step(*args, **kwargs):
        values = train_step(*args, **kwargs)
        if due():
            die()
        return values
    loop.train_step = step
else:
    write_bytes, replace_file = storage.write_bytes, storage.replace_file
    def half_bytes(path, data):
        if due():
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            die()
        return write_bytes(path, data)
    def half_replace(path, write):
        if due():
            buffer = io.BytesIO()
            write(buffer)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
            os.write(handle, buffer.getvalue()[: len(buffer.getvalue()) // 2])
            die()
        return replace_file(path, write)
    storage.write_bytes, storage.replace_file = half_bytes, half_replace
sys.exit(cli.main(sys.argv[3:]))
"""

_rng = np.random.default_rng(19)
KILLS = [("step", int(n)) for n in sorted(_rng.choice(np.arange(1, STEPS), 3, replace=False))]
KILLS += [("write", int(n)) for n in sorted(_rng.choice(np.arange(1, 40), 5, replace=False))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill9") / "straight"
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    return read_tensors(find_latest(out) / "model.safetensors")


@pytest.mark.parametrize(("mode", "n"), KILLS, ids=[f"{m}-{n}" for m, n in KILLS])
def test_kill_9_then_resume_loses_at_most_the_steps_since_the_checkpoint(
    tmp_path, capsys, reference, mode, n
):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(n), *ARGS, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    latest = find_latest(out) if out.exists() else None
    done = 0 if latest is None else int(latest.name.split("-")[1])
    if mode == "step":  # killed after step n: the steps since the last checkpoint are lost
        assert n - EVERY <= done <= n
    if latest is not None:  # the kept checkpoint is complete and loads
        model = latentvi.load(out, checkpoint=latest)
        assert model.state_dict().keys() == reference.keys()
    resume = ["--resume"] if latest is not None else []
    assert cli.main([*ARGS, *resume, "--out", str(out)]) == 0, capsys.readouterr().err
    final = read_tensors(find_latest(out) / "model.safetensors")
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)
