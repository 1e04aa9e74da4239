"""SIGTERM and SIGINT: every long-running command stops within 2 s with a checkpoint it resumes
from, and exits with 143 (SIGTERM) or 130 (SIGINT).

The command-line tests start the real CLI in a subprocess, wait until the run has written its
first metrics row, send the signal and time the exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentvi.train import TrainConfig, fit
from latentvi.train.checkpoint import find_latest, load_checkpoint
from latentvi.train.signals import RunStopped, exit_on_signals, stop_on_signals, stop_request

SRC = Path(__file__).resolve().parents[2] / "src"
STOP_WITHIN = 2.0  # seconds from the signal to the exit


# --- the mechanism, in this process --------------------------------------------------------------
def test_a_signal_becomes_a_request_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as outer:
        assert not outer and stop_request() is outer
        with stop_on_signals() as inner:  # nested: one request
            os.kill(os.getpid(), signal.SIGTERM)
            assert inner is outer and outer.requested == signal.SIGTERM
        with pytest.raises(RunStopped) as raised:  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
        assert raised.value.exit_code == 130
        outer.requested = None  # handled: the block may end normally
    assert signal.getsignal(signal.SIGTERM) is before
    assert not stop_request()  # outside a context: never set


def test_a_request_left_pending_raises_when_the_block_ends():
    with pytest.raises(RunStopped) as raised, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert raised.value.exit_code == 143 and raised.value.checkpoint is None


def test_outside_the_loops_a_signal_raises_at_once():
    with pytest.raises(RunStopped) as raised, exit_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # not reached
    assert raised.value.exit_code == 143


def _fit(tiny, out, resume=False, signal_at=None):
    """20 steps of the tiny regression; SIGTERM while batch ``signal_at`` (0-based) is drawn."""
    data = tiny.data()
    drawn = 0

    def make_batches(epoch, generator):
        nonlocal drawn
        for batch in data(epoch, generator):
            if drawn == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            drawn += 1
            yield batch

    config = TrainConfig(max_steps=20, lr=0.05, seed=3, log_every=4, progress=False,
                         tensorboard=False, out=str(out))  # fmt: skip
    model = tiny.model(seed=0 if not resume else 123)
    fit(model, make_batches, 8, config, resume=resume)
    return model


def test_fit_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(tiny, tmp_path):
    straight = _fit(tiny, tmp_path / "straight")
    with pytest.raises(RunStopped) as raised:
        _fit(tiny, tmp_path / "stopped", signal_at=6)
    assert raised.value.exit_code == 143
    assert raised.value.checkpoint == find_latest(tmp_path / "stopped")
    assert load_checkpoint(raised.value.checkpoint, tiny.model())["step"] == 7  # that step ends
    resumed = _fit(tiny, tmp_path / "stopped", resume=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


# --- the command line, in a subprocess -----------------------------------------------------------
def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "SDL_VIDEODRIVER": "dummy", "OMP_NUM_THREADS": "1"}


def _cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentvi.cli", *argv], env=_environment(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _stop(
    argv: list[str], metrics: Path, number: int, started: bool = False
) -> tuple[int, float, str]:
    """Start the CLI, wait for its first metrics row (``started``: for the metrics file), send
    ``number``: (exit code, seconds from the signal to the exit, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "latentvi.cli", *argv], env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (metrics.is_file() and (started or metrics.stat().st_size > 0)):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no metrics row after 180 s"
            time.sleep(0.05)
        process.send_signal(number)
        sent = time.monotonic()
        code = process.wait(timeout=60)
        return code, time.monotonic() - sent, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _checkpoint_step(out: Path) -> int:
    latest = find_latest(out)
    assert latest is not None, f"no checkpoint in {out}"
    return int(latest.name.split("-")[1])


def _stopped_and_resumed(argv, out, metrics, number, steps_option, more):
    code, seconds, stderr = _stop([*argv, steps_option, "1000000"], metrics, number)
    assert code == 128 + number, stderr
    assert seconds < STOP_WITHIN, seconds
    lines = stderr.strip().splitlines()
    assert "stopped by" in lines[-1] and "--resume" in lines[-1], lines[-1]
    step = _checkpoint_step(out)
    resumed = _cli(*argv, steps_option, str(step + more), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    return step, json.loads(resumed.stdout)


@pytest.mark.slow  # ~11 s (fit's stop is also tested in this process above)
def test_train_vae_stops_on_sigterm_and_resumes(tmp_path):
    out = tmp_path / "vae"
    argv = ["train", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "32",
            "--log-every", "5", "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    step, summary = _stopped_and_resumed(argv, out, out / "metrics.jsonl", signal.SIGTERM,
                                         "--max-steps", 10)  # fmt: skip
    assert step >= 5 and summary["steps"] == step + 10


# ~12 s (the command the issue found ignoring signals: pixel Pendulum renders through SDL)
def test_latent_q_on_pixel_pendulum_stops_on_sigint_and_resumes(tmp_path):
    out = tmp_path / "latent-q"
    argv = ["rl", "latent-q", "--env", "Pendulum-v1", "--variant", "vae", "--preset", "debug",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    step, summary = _stopped_and_resumed(argv, out, out / "metrics.jsonl", signal.SIGINT,
                                         "--steps", 100)  # fmt: skip
    assert summary["env_steps"] == step + 100


# ~12 s each: PlaNet in the fast suite, the others with the slow tests
@pytest.mark.parametrize(
    "agent", ["planet", *(pytest.param(a, marks=pytest.mark.slow) for a in ("dreamer", "slac"))]
)
def test_world_model_agents_stop_on_sigterm_and_resume(agent, tmp_path):
    out = tmp_path / agent
    argv = ["world-model", "train", "--agent", agent, "--preset", "debug", "--eval-episodes", "1",
            "--candidates", "32", "--cem-iterations", "2", "--no-progress", "--no-tensorboard",
            "--out", str(out)]  # fmt: skip
    step, summary = _stopped_and_resumed(argv, out, out / "metrics.jsonl", signal.SIGTERM,
                                         "--steps", 200)  # fmt: skip
    assert summary["env_steps"] >= step + 200 and summary["final_return_mean"] is not None


def _signal_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """Send SIGTERM to this process when ``owner.name`` is called the ``call``-th time."""
    original, calls = getattr(owner, name), 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


# ~7 s: three tiny runs
def test_a_world_model_run_stopped_inside_a_block_and_an_episode_resumes_exactly(
    monkeypatch, tmp_path
):
    from latentvi.cli import main
    from latentvi.rl.dreamer import DreamerAgent
    from latentvi.train.storage import read_tensors

    argv = ["world-model", "train", "--agent", "dreamer", "--preset", "debug", "--steps", "400",
            "--eval-episodes", "1", "--no-progress", "--no-tensorboard", "--json"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    stopped = [*argv, "--out", str(tmp_path / "stopped")]
    with monkeypatch.context() as patch:
        _signal_on_call(patch, DreamerAgent, "update", 3)  # inside the block of 5 updates
        assert main(stopped) == 143
    assert _checkpoint_step(tmp_path / "stopped") == 200  # after the seed episode
    with monkeypatch.context() as patch:
        _signal_on_call(patch, DreamerAgent, "act", 50)  # inside the collected episode
        assert main([*stopped, "--resume"]) == 143
    assert _checkpoint_step(tmp_path / "stopped") == 200  # the episode was dropped
    assert main([*stopped, "--resume"]) == 0
    curves = [(tmp_path / run / "curve.csv").read_text().splitlines() for run in
              ("straight", "stopped")]  # fmt: skip
    assert [row.split(",")[:4] for row in curves[0]] == [row.split(",")[:4] for row in curves[1]]
    a, b = (read_tensors(find_latest(tmp_path / run) / "model.safetensors")
            for run in ("straight", "stopped"))  # fmt: skip
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_imitate_stops_on_sigterm_with_a_checkpoint(tmp_path):
    out = tmp_path / "imitate"
    argv = ["imitate", "--policy", "cvae", "--steps", "1000000", "--seeds", "1", "--episodes",
            "4", "--demos", "20", "--out", str(out)]  # fmt: skip
    code, seconds, stderr = _stop(argv, out / "seed-0" / "metrics.jsonl", signal.SIGTERM, True)
    assert code == 143 and seconds < STOP_WITHIN, (code, seconds, stderr)
    assert _checkpoint_step(out / "seed-0") >= 1


# ~6 s: two tiny imitate jobs of two seeds
def test_a_stopped_imitate_job_resumes_to_the_same_policies(monkeypatch, tmp_path):
    import latentvi.jobs.imitation as imitation
    from latentvi.cli import main
    from latentvi.train.storage import read_tensors

    argv = ["imitate", "--policy", "cvae", "--steps", "60", "--seeds", "2", "--episodes", "4",
            "--demos", "20", "--json"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    stopped = [*argv, "--out", str(tmp_path / "stopped")]
    with monkeypatch.context() as patch:  # SIGTERM while the first seed's batch 31 is drawn
        batches = imitation.Batches.make_batches
        drawn = []

        def signalling(self, epoch, generator, **kwargs):
            for batch in batches(self, epoch, generator, **kwargs):
                drawn.append(1)
                if len(drawn) == 31:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        patch.setattr(imitation.Batches, "make_batches", signalling)
        assert main(stopped) == 143
    assert 1 <= _checkpoint_step(tmp_path / "stopped" / "seed-0") < 60
    assert not (tmp_path / "stopped" / "seed-1").exists()
    assert main([*stopped, "--resume"]) == 0
    for seed in ("seed-0", "seed-1"):
        a, b = (read_tensors(find_latest(tmp_path / run / seed) / "model.safetensors")
                for run in ("straight", "stopped"))  # fmt: skip
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), seed
    results = [json.loads((tmp_path / run / "results.json").read_text())
               for run in ("straight", "stopped")]  # fmt: skip
    assert results[0]["summary"]["success"] == results[1]["summary"]["success"]
    # --resume of a job trained with another policy is refused before anything is written
    assert main([*argv, "--out", str(tmp_path / "stopped"), "--hidden", "8", "--resume"]) == 2


def test_a_stop_in_vae_pretraining_ends_before_the_first_checkpoint(monkeypatch, tmp_path, capsys):
    from latentvi.cli import main
    from latentvi.rl.latent_q import LatentQAgent

    out = tmp_path / "pretrained"
    argv = ["rl", "latent-q", "--env", "latentvi/PixelChain-v0", "--variant", "vae-pretrained",
            "--preset", "debug", "--frame-stack", "2", "--action-repeat", "1", "--steps", "20",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    with monkeypatch.context() as patch:
        _signal_on_call(patch, LatentQAgent, "pretrain", 1)
        assert main(argv) == 143
    assert "in VAE pretraining, before the first checkpoint" in capsys.readouterr().err
    assert find_latest(out) is None
    assert main(argv) == 0  # the same command starts again
