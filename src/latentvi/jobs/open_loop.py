"""How long a world model's open-loop predictions stay recognizable, measured on fresh episodes.

From ``context`` observed frames the model filters a posterior state, then imagines ``horizon``
steps with its prior under the actions the episode actually took, and decodes each imagined
state (:meth:`latentvi.models.ssm.WorldModel.open_loop`). Per step ahead, over a batch of
episodes:

* the mean squared error of the predicted frame (pixels in [0, 1]) beside that of the mean
  context frame (a model that predicts nothing moves);
* on Pendulum-v1, the **rod angle** read off each frame (:func:`pendulum_angle`): the absolute
  error of the predicted frame's angle to the true frame's, beside that of holding the last
  context frame. A prediction is *recognizable* at a step when the median angle error over the
  episodes is below ``threshold`` (default π/6 = 30°); ``recognizable_steps`` is the number of
  steps ahead before it first is not.

:func:`open_loop_report` does this for a run folder's latest checkpoint (`latentvi world-model
train` runs), on episodes of the trained agent acting without noise (``policy="agent"``) or of
uniform random actions (``policy="random"``).

How far ahead an episode *can* be predicted depends on the episode: the agent's episodes swing
the rod up and balance it near upright, where Pendulum is unstable (errors grow ~1.47× per 0.1 s),
while random actions mostly swing it below the pivot, where errors grow slowly.
:func:`pendulum_simulator_errors` measures that limit without a model: the true equations
(:func:`latentvi.envs.pendulum.pendulum_step`) run open loop from the true state at the last context
frame plus Gaussian noise of a given size, under the same actions.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentvi.config import check_positive_int
from latentvi.jobs.prediction_errors import (
    REPORT_SEED,
    open_loop_errors,
    pendulum_angle,
    wrapped_difference,
)
from latentvi.models.ssm import align_episode
from latentvi.train.rng import isolated_rng

__all__ = [
    "REPORT_SEED",
    "open_loop_errors",
    "open_loop_report",
    "pendulum_angle",
    "pendulum_simulator_errors",
    "pendulum_states",
    "recognizable_steps",
    "report_episodes",
    "wrapped_difference",
]

RECOGNIZABLE_ANGLE = math.pi / 6
REPORT_POLICIES = ("agent", "random")
SIMULATOR_NOISE = (0.1, 0.03, 0.01, 0.001)  # σ of the θ (rad) and θ̇ (rad/s) errors


def recognizable_steps(angle_error: np.ndarray, threshold: float = RECOGNIZABLE_ANGLE) -> int:
    """Steps ahead before the (median) angle error first reaches ``threshold``."""
    above = np.flatnonzero(np.asarray(angle_error) >= threshold)
    return int(above[0]) if above.size else len(angle_error)


def report_episodes(
    agent, run, episodes: int, policy: str = "agent", rewards: bool = False
) -> tuple[Tensor, ...]:
    """``episodes`` fresh episodes in ``run``'s environment (reset seeds ``REPORT_SEED`` + i, apart
    from training's and evaluation's), aligned for :func:`open_loop_errors`: ``obs [T, B, C, H,
    W]`` (uint8) and ``actions [T, B, A]`` (in [-1, 1]), and with ``rewards`` also ``rewards [T,
    B]`` (rewards[t] for the step into t, 0 at t = 0). ``policy``: ``"agent"`` (``agent`` acting
    without noise) or ``"random"`` (uniform random actions). The random generators (the agent's
    filter samples from them) are isolated and seeded with ``REPORT_SEED``."""
    from latentvi.data.episodes import EpisodeRunner
    from latentvi.jobs.world_model import make_run_env

    if policy not in REPORT_POLICIES:
        raise ValueError(f"policy = {policy!r} is unknown: use one of {', '.join(REPORT_POLICIES)}")
    env = make_run_env(run)
    runner = EpisodeRunner(env, {"model": 0.0, "env": 0.0, "act": 0.0})
    actor = agent if policy == "agent" else None
    generator = np.random.default_rng(REPORT_SEED)
    try:
        with isolated_rng(REPORT_SEED):
            runs = [
                runner.run(REPORT_SEED + i, actor, explore=False, generator=generator)[0]
                for i in range(episodes)
            ]
    finally:
        env.close()
    aligned = [
        align_episode(*(torch.as_tensor(episode[k]) for k in ("obs", "action", "reward")))
        for episode in runs
    ]
    stacked = tuple(torch.stack(parts, 1) for parts in zip(*aligned, strict=True))
    return stacked if rewards else stacked[:2]


def pendulum_states(seeds: list[int], actions: Tensor, repeat: int) -> np.ndarray:
    """The true (θ, θ̇) of Pendulum-v1 episodes reset with ``seeds`` (B of them) and driven by the
    aligned ``actions [T, B, 1]`` in [-1, 1] (actions[t] led to step t; ``repeat`` environment
    steps each): ``[T, B, 2]``. Gymnasium's reset gives the initial state; the steps are
    :func:`~latentvi.envs.pendulum.pendulum_step`, Pendulum-v1's equations."""
    import gymnasium as gym

    from latentvi.envs.pendulum import MAX_TORQUE, pendulum_step

    if actions.dim() != 3 or actions.shape[1] != len(seeds) or actions.shape[2] != 1:
        raise ValueError(
            f"actions {tuple(actions.shape)} must be [T, B, 1] with B = {len(seeds)} seeds"
        )
    env = gym.make("Pendulum-v1")
    try:
        start = []
        for seed in seeds:
            env.reset(seed=seed)
            start.append(np.array(env.unwrapped.state, dtype=np.float64))
    finally:
        env.close()
    theta, velocity = np.stack(start).T
    torque = MAX_TORQUE * actions[..., 0].double().numpy()
    states = [np.stack([theta, velocity], -1)]
    for t in range(1, actions.shape[0]):
        theta, velocity, _ = pendulum_step(theta, velocity, torque[t], repeat)
        states.append(np.stack([theta, velocity], -1))
    return np.stack(states)


def pendulum_simulator_errors(
    states: np.ndarray,
    actions: Tensor,
    context: int,
    horizon: int,
    repeat: int,
    noise: float,
    draws: int = 20,
    seed: int = REPORT_SEED,
) -> np.ndarray:
    """The predictability limit of episodes with true ``states [T, B, 2]`` (:func:`pendulum_states`)
    and aligned ``actions [T, B, 1]``: Pendulum-v1's own equations run open loop for ``horizon``
    steps from the state at frame ``context − 1`` plus N(0, ``noise``²) errors on θ and θ̇
    (``draws`` per episode), under the episode's actions. Returns the median absolute angle error
    over the B·draws rollouts per step, ``[horizon]`` (radians), as :func:`open_loop_errors`."""
    from latentvi.envs.pendulum import MAX_TORQUE, pendulum_step

    check_positive_int("draws", draws)
    generator = np.random.default_rng(seed)
    start = np.repeat(states[context - 1], draws, 0)  # [B·draws, 2]
    theta, velocity = (start + noise * generator.standard_normal(start.shape)).T
    torque = np.repeat(MAX_TORQUE * actions[..., 0].double().numpy(), draws, 1)  # [T, B·draws]
    truth = np.repeat(states[context : context + horizon, :, 0], draws, 1)
    errors = []
    for t in range(horizon):
        theta, velocity, _ = pendulum_step(theta, velocity, torque[context + t], repeat)
        errors.append(np.abs(wrapped_difference(theta, truth[t])))
    return np.median(np.stack(errors), 1)


def _recognizable(error: np.ndarray, threshold: float, prefix: str = "") -> dict[str, int]:
    """:func:`recognizable_steps` of one error curve at ``threshold`` and at half of it."""
    return {
        f"{prefix}recognizable_steps": recognizable_steps(error, threshold),
        f"{prefix}recognizable_steps_half_threshold": recognizable_steps(error, threshold / 2),
    }


def open_loop_report(
    run_dir: str | os.PathLike,
    episodes: int = 10,
    context: int = 5,
    horizon: int = 45,
    out: str | os.PathLike | None = None,
    threshold: float = RECOGNIZABLE_ANGLE,
    draws: int = 1,
    policy: str = "agent",
) -> dict[str, Any]:
    """Open-loop errors of a world-model run's latest checkpoint on ``episodes`` fresh episodes
    (:func:`report_episodes`: of its agent acting without noise, or of random actions with
    ``policy="random"``; reset seeds apart from training's and evaluation's). Writes
    ``open_loop_report.csv``, ``open_loop_report.png`` (true frames above the predictions of the
    first episode) and ``open_loop_report_errors.png`` to ``out`` (default: the run folder) and
    returns the summary (JSON-ready). ``draws``: predictions per episode (see
    :func:`open_loop_errors`). On Pendulum-v1 the summary also has the recognizable steps at
    half the threshold and those of the true equations from a noisy true state
    (:func:`pendulum_simulator_errors`, noise σ in ``SIMULATOR_NOISE``): the episodes' limit."""
    from latentvi.jobs.world_model import load_run
    from latentvi.plots import plot_image_grid, plot_prediction_errors

    agent_name, agent, run, step = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    obs, actions = report_episodes(agent, run, episodes, policy)
    horizon = min(horizon, obs.shape[0] - context)
    pendulum = run.env.startswith("Pendulum")
    errors = open_loop_errors(agent.model, obs, actions, context, horizon, pendulum, draws)
    columns = [k for k in errors if k != "predicted"]
    with open(out / "open_loop_report.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", *columns])
        for t in range(horizon):
            writer.writerow([t + 1, *(f"{errors[k][t]:.6g}" for k in columns)])
    every = max(1, horizon // 15)
    shown = list(range(every - 1, horizon, every))
    truth = obs[context : context + horizon, 0].float() / 255.0
    grid = torch.cat([truth[shown], errors["predicted"][shown, 0]])
    title = f"{agent_name} at step {step}: true (top) | open loop after {context} frames"
    plot_image_grid(grid, out / "open_loop_report.png", title, columns=len(shown))
    plot_prediction_errors(
        errors["mse"], errors["mean_context_frame_mse"], out / "open_loop_report_errors.png"
    )
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "agent": agent_name,
        "checkpoint_step": step,
        "episodes": episodes,
        "context": context,
        "horizon": horizon,
        "draws": draws,
        "policy": policy,
        "per_step": {k: [float(v) for v in errors[k]] for k in columns},
    }
    if pendulum:
        summary["angle_threshold_rad"] = threshold
        summary.update(_recognizable(errors["angle_error"], threshold))
        summary.update(
            _recognizable(errors["last_context_angle_error"], threshold, prefix="last_context_")
        )
        seeds = [REPORT_SEED + i for i in range(episodes)]
        states = pendulum_states(seeds, actions, run.action_repeat)
        simulator = {}
        for noise in SIMULATOR_NOISE:
            error = pendulum_simulator_errors(
                states, actions, context, horizon, run.action_repeat, noise
            )
            simulator[str(noise)] = _recognizable(error, threshold)
        summary["simulator_from_noisy_state"] = simulator
    (out / "open_loop_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
