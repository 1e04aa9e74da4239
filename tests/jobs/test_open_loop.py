"""Open-loop prediction errors: the pendulum angle read off frames, the per-step errors against
their baselines, and the report of a trained run's checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from latentvi.cli import main
from latentvi.data.episodes import EpisodeStore
from latentvi.diagnostics import REPORT_SEED, open_loop_errors, pendulum_angle, recognizable_steps
from latentvi.envs.pixels import make_env
from latentvi.jobs.open_loop import (
    open_loop_report,
    pendulum_simulator_errors,
    pendulum_states,
    report_episodes,
)
from latentvi.jobs.world_model import load_run


def _pendulum_frames(steps=60, seed=0):
    """Rendered 64×64 grayscale frames uint8 [T, 1, 64, 64] and the true θ at each."""
    env = make_env("Pendulum-v1", pixels=True, size=64, grayscale=True, action_repeat=1)
    obs, _ = env.reset(seed=seed)
    generator = np.random.default_rng(seed)
    frames, angles = [], []
    for _ in range(steps):
        frames.append(obs)
        angles.append(float(env.unwrapped.state[0]))
        obs, *_ = env.step(generator.uniform(-2, 2, (1,)).astype(np.float32))
    env.close()
    return torch.as_tensor(np.stack(frames)), torch.tensor(angles)


def test_pendulum_angle_reads_the_true_angle_off_rendered_frames():
    frames, angles = _pendulum_frames()
    error = torch.remainder(pendulum_angle(frames) - angles + math.pi, 2 * math.pi) - math.pi
    assert error.abs().mean() < 0.05 and error.abs().max() < 0.15
    # floats in [0, 1] and uint8 give the same angles
    torch.testing.assert_close(pendulum_angle(frames.float() / 255), pendulum_angle(frames))


class _Replay(nn.Module):
    """A stand-in world model whose open-loop 'prediction' is a given set of frames."""

    def __init__(self, frames: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.frames = frames

    def open_loop(self, obs_context, actions_context, actions_future):
        return self.frames[: actions_future.shape[0]]


def test_errors_of_a_perfect_and_of_a_still_prediction():
    frames, _ = _pendulum_frames(40)
    obs = torch.stack([frames, frames.flip(0)], 1)  # two 'episodes' [T, 2, 1, 64, 64]
    actions = torch.zeros(40, 2, 1)
    context, horizon = 5, 30
    truth = obs[context : context + horizon].float() / 255
    perfect = open_loop_errors(_Replay(truth), obs, actions, context, horizon, pendulum=True)
    np.testing.assert_allclose(perfect["mse"], 0.0, atol=1e-12)
    np.testing.assert_allclose(perfect["angle_error"], 0.0, atol=1e-5)
    assert recognizable_steps(perfect["angle_error"]) == horizon
    still = (obs[context - 1].float() / 255)[None].expand(horizon, -1, -1, -1, -1)
    held = open_loop_errors(_Replay(still), obs, actions, context, horizon, pendulum=True)
    np.testing.assert_allclose(held["angle_error"], held["last_context_angle_error"], atol=1e-6)
    assert held["mse"][0] > 0 and perfect["mean_context_frame_mse"][0] > 0
    with pytest.raises(ValueError, match="too short"):
        open_loop_errors(_Replay(truth), obs, actions, context, 40, pendulum=True)


class _Noisy(nn.Module):
    """A stand-in whose prediction is the last context frame plus noise from torch's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def open_loop(self, obs_context, actions_context, actions_future):
        last = obs_context[-1].float() / 255
        noise = 0.1 * torch.randn(actions_future.shape[0], *last.shape)
        return (last + noise).clamp(0, 1)


def test_draws_repeat_each_episode_and_the_seed_makes_them_reproducible():
    frames, _ = _pendulum_frames(40)
    obs = torch.stack([frames, frames.flip(0)], 1)
    actions = torch.zeros(40, 2, 1)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    one = open_loop_errors(_Noisy(), obs, actions, 5, 20, pendulum=True, draws=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert one["predicted"].shape == (20, 6, 1, 64, 64)
    again = open_loop_errors(_Noisy(), obs, actions, 5, 20, pendulum=True, draws=3)
    np.testing.assert_array_equal(one["mse"], again["mse"])
    other = open_loop_errors(_Noisy(), obs, actions, 5, 20, pendulum=True, draws=3, seed=7)
    assert not np.array_equal(one["mse"], other["mse"])
    # the baselines do not depend on the draws: the same as with one draw
    single = open_loop_errors(_Noisy(), obs, actions, 5, 20, pendulum=True)
    np.testing.assert_allclose(single["mean_context_frame_mse"], one["mean_context_frame_mse"])
    with pytest.raises(ValueError, match="draws"):
        open_loop_errors(_Noisy(), obs, actions, 5, 20, pendulum=True, draws=0)


def test_recognizable_steps_counts_until_the_first_miss():
    assert recognizable_steps(np.array([0.1, 0.2, 0.6, 0.1]), 0.5) == 2
    assert recognizable_steps(np.array([0.7]), 0.5) == 0


def _random_episodes(seeds, steps, repeat):
    """Pendulum-v1 under uniform random actions in [-1, 1] (torque 2·a) held ``repeat`` steps:
    aligned actions ``[steps, B, 1]`` (zeros at 0) and the env's own states ``[steps, B, 2]``."""
    env = make_env("Pendulum-v1", action_repeat=repeat)
    generator = np.random.default_rng(1)
    actions, states = [], []
    for seed in seeds:
        env.reset(seed=seed)
        taken, visited = [np.zeros(1, np.float32)], [np.array(env.unwrapped.state)]
        for _ in range(steps - 1):
            action = generator.uniform(-1, 1, (1,)).astype(np.float32)
            env.step(2.0 * action)
            taken.append(action)
            visited.append(np.array(env.unwrapped.state))
        actions.append(np.stack(taken))
        states.append(np.stack(visited))
    env.close()
    return torch.as_tensor(np.stack(actions, 1)), np.stack(states, 1)


def test_pendulum_states_replay_the_environment_exactly():
    actions, visited = _random_episodes([3, 4, 5], 60, repeat=2)
    states = pendulum_states([3, 4, 5], actions, repeat=2)
    assert states.shape == (60, 3, 2)
    np.testing.assert_allclose(states, visited, rtol=0, atol=1e-5)  # the env rounds u to float32
    with pytest.raises(ValueError, match=r"\[T, B, 1\]"):
        pendulum_states([3, 4], actions, repeat=2)


def test_simulator_errors_are_zero_without_noise_and_grow_with_it():
    actions, _ = _random_episodes([0, 1, 2, 3], 80, repeat=2)
    states = pendulum_states([0, 1, 2, 3], actions, repeat=2)
    exact = pendulum_simulator_errors(states, actions, 5, 60, 2, noise=0.0)
    assert exact.shape == (60,) and np.all(exact == 0)
    small = pendulum_simulator_errors(states, actions, 5, 60, 2, noise=0.001)
    large = pendulum_simulator_errors(states, actions, 5, 60, 2, noise=0.3)
    assert small.max() < 0.05  # 1 mrad of state error stays small below the pivot
    assert large[:5].mean() > 10 * small[:5].mean()
    assert recognizable_steps(large, 0.1) <= recognizable_steps(small, 0.1) == 60


def test_report_episodes_rejects_an_unknown_policy():
    with pytest.raises(ValueError, match="policy = 'greedy' is unknown: use one of agent, random"):
        report_episodes(None, None, 1, policy="greedy")


def test_report_of_a_debug_run(tmp_path, capsys):
    out = tmp_path / "dreamer"
    argv = ["world-model", "train", "--agent", "dreamer", "--preset", "debug", "--steps", "400",
            "--eval-episodes", "1", "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    name, agent, run, step = load_run(out)
    assert not agent.training
    assert name == "dreamer" and step == 400 and run.image_size == 32
    # the loaded agent trains on: its fitting config is not nn.Module's train/eval flag
    metrics = agent.train().update(EpisodeStore(out / "episodes").sample(2, 8))
    assert math.isfinite(metrics["loss/total"])
    agent.eval()
    summary = open_loop_report(out, episodes=2, horizon=30, out=tmp_path / "report")
    assert summary["checkpoint_step"] == 400 and summary["horizon"] == 30
    assert all(len(v) == 30 for v in summary["per_step"].values())
    assert 0 <= summary["recognizable_steps"] <= 30
    for name in ("open_loop_report.csv", "open_loop_report.png", "open_loop_report_errors.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert json.loads((tmp_path / "report" / "open_loop_report.json").read_text()) == summary
    assert summary["policy"] == "agent"
    assert summary["recognizable_steps_half_threshold"] <= summary["recognizable_steps"]
    # Pendulum's equations from the exact state predict far: 1 mrad of noise stays recognizable
    assert summary["simulator_from_noisy_state"]["0.001"]["recognizable_steps"] == 30
    random_actions = open_loop_report(
        out, episodes=2, horizon=30, out=tmp_path / "random", policy="random"
    )
    assert random_actions["policy"] == "random" and 0 <= random_actions["recognizable_steps"] <= 30
    # random-action episodes: spread actions, and their frames show the replayed true states
    obs, actions = report_episodes(agent, run, 2, policy="random")
    assert actions[1:].std() > 0.4
    states = torch.as_tensor(
        pendulum_states([REPORT_SEED, REPORT_SEED + 1], actions, run.action_repeat)
    )
    read = pendulum_angle(obs)
    error = torch.remainder(read - states[..., 0] + math.pi, 2 * math.pi) - math.pi
    assert error.abs().median() < 0.1, error.abs().median()
    with pytest.raises(ValueError, match="not a world-model run folder"):
        load_run(tmp_path / "nothing")
