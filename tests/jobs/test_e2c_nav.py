"""Agents on SOLAR's 2-D navigation (latentvi/PointNav-v0): E2C's data and run, PlaNet's run."""

import json

import numpy as np
import torch

from latentvi.cli import main
from latentvi.envs.navigation import ENV_ID, MAX_EPISODE_STEPS
from latentvi.envs.pixels import make_env
from latentvi.jobs.e2c import preset
from latentvi.jobs.e2c_nav import collect_episodes


def test_data_are_random_episodes_from_the_fixed_start():
    run, _ = preset("debug", image_size=16, transitions=2 * MAX_EPISODE_STEPS + 7)
    data = collect_episodes(run, seed=0)
    x, u, x_next = data["x"], data["u"], data["x_next"]
    assert x.shape == (run.transitions, 1, 16, 16) and u.shape == (run.transitions, 2)
    assert float(u.abs().max()) <= 1.0 and float(u.std()) > 0.4  # uniform in [-1, 1]
    start, _ = make_env(ENV_ID, pixels=True, size=16).reset(seed=0)
    first = torch.from_numpy(start).float() / 255.0
    for begin in (0, MAX_EPISODE_STEPS, 2 * MAX_EPISODE_STEPS):  # every episode starts there
        torch.testing.assert_close(x[begin], first)
    inside = np.setdiff1d(np.arange(run.transitions - 1), [MAX_EPISODE_STEPS - 1, 99])
    torch.testing.assert_close(x[inside + 1], x_next[inside])  # consecutive steps chain
    again = collect_episodes(run, seed=0)
    assert torch.equal(again["u"], u) and torch.equal(again["x_next"], x_next)


def test_e2c_runs_on_navigation_through_the_cli(tmp_path, capsys):
    out = tmp_path / "e2c"
    argv = ["world-model", "train", "--agent", "e2c", "--env", ENV_ID, "--preset", "debug"]
    small = ["--steps", "4", "--transitions", "120", "--trials", "2", "--horizon", "4"]
    code = main([*argv, *small, "--no-progress", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["env"] == ENV_ID and summary["env_steps"] == 120 and summary["trials"] == 2
    assert 0.0 <= summary["success_rate"] <= 1.0 and summary["return_mean"] < 0
    assert json.loads((out / "run.json").read_text())["info"]["obs_shape"] == [1, 16, 16]


def test_planet_runs_on_navigation_through_the_cli(tmp_path, capsys):
    out = tmp_path / "planet"
    argv = ["world-model", "train", "--agent", "planet", "--env", ENV_ID, "--preset", "debug"]
    small = ["--steps", "100", "--eval-every", "100", "--eval-episodes", "1", "--no-tensorboard"]
    code = main([*argv, *small, "--no-progress", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["env_steps"] == 100 and summary["episodes"] == 2  # 50-step episodes
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["action_repeat"] == 1  # the task's preset entry
