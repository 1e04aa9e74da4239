"""The job behind ``latentvi world-model train``: PlaNet, Dreamer or SLAC on pixels.

The job composes the shared environment loop (:class:`latentvi.train.env_loop.EnvLoop`) from
the pixel environment, the agent (:data:`AGENTS`), the episode store (:class:`EpisodeStorage`)
and the episode schedule (:class:`EpisodeSchedule`). A run (Hafner et al. 2019, PlaNet §5;
Hafner et al. 2020, Dreamer §5):

1. ``seed_episodes`` episodes of a uniform random policy;
2. repeat until ``steps`` environment steps: ``train_steps`` updates (world model, and Dreamer's
   or SLAC's actor-critic) on random chunks of the stored episodes, then one episode with the agent acting
   under exploration noise, stored on disk (:class:`latentvi.data.episodes.EpisodeStore`);
3. every ``eval_every`` environment steps, ``eval_episodes`` episodes without noise (fixed reset
   seeds apart from training's, under their own random state) → ``curve.csv`` / ``curve.png``.

At the end: ``open_loop.png`` (true frames above the model's open-loop predictions, from
``open_loop_context`` observed frames of a fresh episode, ``open_loop_horizon`` steps ahead),
``open_loop.csv`` / ``open_loop_mse.png`` (per-step mean squared error, pixels in [0, 1], beside
the error of predicting the mean context frame), ``frames.png`` (the agent acting), ``summary.json``;
and throughout ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard (:class:`latentvi.train.MetricsLogger`)
with the share of wall time in model training, environment stepping and acting (planning),
evaluation episodes included.

Checkpoints (``checkpoints/step-*``, safetensors + JSON via :mod:`latentvi.train.checkpoint`) hold
the networks, the optimizers, every random state and the counters; they are taken between
episodes (or between updates, on SIGTERM / SIGINT), so the episode files on disk (``episodes/``)
are exactly those the checkpoint counts.
``--resume`` loads the latest checkpoint and the stored episodes (dropping any written after it)
and continues, e.g. with a larger ``--steps``.

Environment steps count the underlying environment's steps (an agent step with action repeat R
counts R). Agents act in ``[-1, 1]^A``; actions are rescaled to the environment's bounds. Action
repeat 2 is PlaNet's choice for the tasks with fast dynamics; Pendulum's 0.05 s step makes it a
0.1 s control period, which is enough for the swing-up and halves planning cost.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from latentvi.config import from_dict, option, require, require_int, to_dict
from latentvi.data.episodes import EpisodeRunner
from latentvi.envs.pixels import make_env
from latentvi.models.ssm import RSSMConfig
from latentvi.rl.dreamer import DreamerAgent, DreamerConfig
from latentvi.rl.planet import PlanetAgent, PlanetConfig
from latentvi.rl.slac import SlacAgent, SlacConfig
from latentvi.rl.solar import SolarAgent, SolarConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig, WorldModelAgent
from latentvi.train.checkpoint import build_for_checkpoint, find_latest, load_checkpoint
from latentvi.train.env_loop import EnvLoop, EnvRunConfig, RunRecord, write_curve
from latentvi.train.env_schedules import EpisodeSchedule, EpisodeStorage
from latentvi.train.metrics import log_images
from latentvi.train.rng import isolated_rng, mixed_seed
from latentvi.train.runs import read_run
from latentvi.train.storage import replace_text

__all__ = [
    "AGENTS",
    "WorldModelRunConfig",
    "load_run",
    "train_world_model",
]

logger = logging.getLogger(__name__)

OPEN_LOOP_SEED = 3_000_000
# Run options a resume may change; the others (and every other config) must be the run's.
RESUMABLE_RUN_FIELDS = (
    "steps", "train_steps", "eval_every", "eval_episodes", "checkpoint_every",
    "keep_checkpoints", "open_loop_context", "open_loop_horizon", "device", "out", "progress",
    "tensorboard",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WorldModelRunConfig(EnvRunConfig):
    """The environment, the schedule and the run folder of a world-model run (the fields of
    :class:`~latentvi.train.env_loop.EnvRunConfig`, three of them with other defaults, and
    these)."""

    grayscale: bool = option(False, "one grayscale channel instead of RGB")
    steps: int = option(
        50_000, "environment steps in all (seed episodes and action repeat included)"
    )
    eval_every: int = option(5000, "environment steps between evaluations")
    seed_episodes: int = option(5, "episodes of a uniform random policy first")
    train_steps: int = option(100, "updates before each collected episode")
    open_loop_context: int = option(5, "observed frames before the open-loop prediction")
    open_loop_horizon: int = option(45, "steps predicted open loop (figure and error curve)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("seed_episodes", "train_steps", "open_loop_context", "open_loop_horizon"):
            require_int(getattr(self, name), name, 1, "use a positive integer")


# The agents: name -> (agent config type, factory(model config, training config, agent config)).
AgentFactory = Callable[[RSSMConfig, ModelTrainingConfig, Any], WorldModelAgent]
AGENTS: dict[str, tuple[type, AgentFactory]] = {
    "planet": (PlanetConfig, PlanetAgent),
    "dreamer": (DreamerConfig, DreamerAgent),
    "slac": (SlacConfig, SlacAgent),
    "solar": (SolarConfig, SolarAgent.from_world_model),
}


def load_run(
    run_dir: str | Path,
    map_location: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
) -> tuple[str, WorldModelAgent, WorldModelRunConfig, int]:
    """``(agent name, agent in eval mode, run config, environment step)`` of a run folder's latest
    checkpoint (or of ``checkpoint``), optimizer states included (safetensors + JSON: loading runs
    no code from the folder). ``latentvi.load`` gives the same agent."""
    try:
        record = read_run(run_dir)
    except ValueError as error:
        raise ValueError(f"{error} ({str(run_dir)!r} is not a world-model run folder)") from None
    if record.kind != "world-model":
        raise ValueError(f"{str(run_dir)!r} is not a world-model run folder: a {record.kind} run")
    try:
        agent_name = record.info["agent"]
        check_agent(agent_name)
        config_type, factory = AGENTS[agent_name]
        run = from_dict(WorldModelRunConfig, record.config("run"))
        model = from_dict(RSSMConfig, record.config("model"))
        training = from_dict(ModelTrainingConfig, record.config("training"))
        agent_config = from_dict(config_type, record.config("agent"))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{record.path} holds a corrupt world-model run ({error})") from None
    if find_latest(run_dir) is None:
        raise ValueError(f"{str(run_dir)!r} holds no checkpoint yet: wait for the first one")
    source = run_dir if checkpoint is None else checkpoint
    agent = build_for_checkpoint(lambda: factory(model, training, agent_config), source,
                                 record.path / "run.json")  # fmt: skip
    loaded = load_checkpoint(source, agent, map_location=map_location, restore_rng=False)
    agent.load_optimizer_state(loaded["optimizers"])  # so that it can train on from here
    return agent_name, agent.eval(), run, int(loaded["counters"]["env_steps"])


def check_agent(agent: str) -> None:
    if agent not in AGENTS:
        raise ValueError(f"agent = {agent!r} is invalid: use one of {', '.join(AGENTS)}")


def make_run_env(run: WorldModelRunConfig) -> gym.Env:
    """The pixel environment of a run (frames ``uint8 [C, size, size]``, action repeat)."""
    env = make_env(
        run.env,
        pixels=True,
        size=run.image_size,
        grayscale=run.grayscale,
        action_repeat=run.action_repeat,
    )
    space = env.action_space
    if not (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) == 1
        and np.all(np.isfinite(space.low))
        and np.all(np.isfinite(space.high))
    ):
        env.close()
        raise ValueError(
            f"env = {run.env!r} has action space {space}; the world-model agents need continuous "
            "actions in a bounded 1-D Box (e.g. Pendulum-v1)"
        )
    return env


def train_world_model(
    agent_name: str,
    run: WorldModelRunConfig,
    model_config: RSSMConfig,
    training: ModelTrainingConfig,
    agent_config: Any,
    resume: bool = False,
    preset: str | None = None,
) -> dict[str, Any]:
    """Train ``agent_name`` (a key of :data:`AGENTS`) for ``run.steps`` environment steps;
    return a JSON-ready summary. ``model_config``'s ``action_dim`` and ``obs_shape`` are set from
    the environment."""
    check_agent(agent_name)
    config_type, factory = AGENTS[agent_name]
    require(
        isinstance(agent_config, config_type),
        "agent_config",
        type(agent_config).__name__,
        f"agent {agent_name!r} takes a {config_type.__name__}",
    )
    require(run.out is not None, "out", run.out, "give a run folder, e.g. --out runs/planet")

    def model_for(env: gym.Env) -> RSSMConfig:
        return dataclasses.replace(
            model_config,
            action_dim=int(env.action_space.shape[0]),
            obs_shape=tuple(int(s) for s in env.observation_space.shape),
        )

    def make_agent(env: gym.Env) -> WorldModelAgent:
        require(
            training.chunk_length <= 1 + (env.spec.max_episode_steps or 10**9) // run.action_repeat,
            "chunk_length",
            training.chunk_length,
            "use at most the observations of one episode",
        )
        return factory(model_for(env), training, agent_config)

    def describe(env: gym.Env) -> dict[str, Any]:
        return {
            "agent": agent_name,
            "run": to_dict(run),
            "model": to_dict(model_for(env)),
            "training": to_dict(training),
            agent_name: to_dict(agent_config),
        }

    schedule = EpisodeSchedule(
        run.seed_episodes, run.train_steps, training.batch_size, training.chunk_length
    )
    with EnvLoop(
        run,
        make_env=lambda: make_run_env(run),
        make_agent=make_agent,
        storage=EpisodeStorage(),
        schedule=schedule,
        describe=describe,
        record=lambda env: RunRecord(
            "world-model",
            {"run": run, "model": model_for(env), "training": training, "agent": agent_config},
            fixed=("run", "model", "training", "agent"),
            ignore={"run": RESUMABLE_RUN_FIELDS},
            info={"agent": agent_name, "preset": preset},
        ),
        resume=resume,
        divergence_hint="start again with lower learning rates (--model-lr; Dreamer: "
        "--actor-lr, --critic-lr; SLAC: --sac-lr)",
        network_options=("--deter-dim", "--stoch-dim", "--hidden", "--embed-dim", "--channels"),
    ) as loop:
        state = loop.train()
        files = _write_outputs(loop.agent, agent_name, run, loop.eval_env, state, loop.out)
        if run.tensorboard:
            images = {"eval/frames": files["frames"]}
            if "open_loop_png" in files:
                images["eval/open_loop"] = files["open_loop_png"]
            log_images(loop.out, state["env_steps"], images)
    final = loop.final_row()
    timing = state["timing"]
    busy = max(sum(timing.values()), 1e-9)
    summary = {
        "run_dir": str(loop.out),
        "agent": agent_name,
        "env": run.env,
        "env_steps": state["env_steps"],
        "episodes": state["episodes"],
        "updates": state["updates"],
        "final_return_mean": final.get("return_mean"),
        "final_return_std": final.get("return_std"),
        "updates_per_second": state["updates"] / max(timing["model"], 1e-9),
        "time_share": {key: value / busy for key, value in timing.items()},
        "wall_seconds": state["wall"],
        "files": files,
    }
    replace_text(loop.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_outputs(agent, agent_name, run, eval_env, state, out: Path) -> dict[str, str]:
    from latentvi.plots import plot_frame_strip, plot_learning_curves

    files = {"curve_csv": str(out / "curve.csv"), "curve_png": str(out / "curve.png")}
    write_curve(out / "curve.csv", state["curve"])
    plot_learning_curves({agent_name: state["curve"]}, out / "curve.png", f"{run.env} (pixels)")
    evaluator = EpisodeRunner(eval_env, state["timing"])
    with isolated_rng(mixed_seed(run.seed, OPEN_LOOP_SEED)):
        episode, _, _ = evaluator.run(mixed_seed(run.seed, OPEN_LOOP_SEED), agent, explore=False)
        if hasattr(agent, "model"):  # an RSSM's open-loop predictions (SOLAR has none)
            files.update(open_loop_figures(agent, episode, run, out))
    strip = plot_frame_strip(episode["obs"], out / "frames.png", f"{agent_name} acting")
    files["frames"] = str(strip)
    return files


def open_loop_figures(agent, episode, run: WorldModelRunConfig, out: Path) -> dict[str, str]:
    """Open-loop prediction from a stored-layout episode: figure, per-step error CSV and plot
    (errors from :func:`latentvi.diagnostics.open_loop_errors`)."""
    from latentvi.diagnostics import open_loop_errors
    from latentvi.models.ssm import align_episode
    from latentvi.plots import plot_image_grid, plot_prediction_errors

    obs = torch.as_tensor(episode["obs"])[:, None]  # [T+1, 1, C, H, W]
    actions = torch.as_tensor(episode["action"])[:, None]
    rewards = torch.as_tensor(episode["reward"])[:, None]
    obs, actions, _ = align_episode(obs, actions, rewards)
    context = run.open_loop_context
    horizon = min(run.open_loop_horizon, obs.shape[0] - context)
    errors = open_loop_errors(agent.model, obs, actions, context, horizon, pendulum=False)
    predicted = errors["predicted"][:, 0]  # [H, C, H, W] in [0, 1]
    truth = obs[context : context + horizon, 0].float() / 255.0
    mse, baseline = errors["mse"], errors["mean_context_frame_mse"]
    with open(out / "open_loop.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", "mse", "mean_context_frame_mse"])
        for step in range(horizon):
            writer.writerow([step + 1, f"{mse[step]:.6g}", f"{baseline[step]:.6g}"])
    every = max(1, horizon // 15)
    shown = list(range(every - 1, horizon, every))
    grid = torch.cat([truth[shown], predicted[shown]])
    plot_image_grid(grid, out / "open_loop.png", f"true (top) | open-loop prediction, every "
                    f"{every} step(s) after {context} observed frames", columns=len(shown))  # fmt: skip
    plot_prediction_errors(mse, baseline, out / "open_loop_mse.png")
    return {
        "open_loop_png": str(out / "open_loop.png"),
        "open_loop_csv": str(out / "open_loop.csv"),
        "open_loop_mse_png": str(out / "open_loop_mse.png"),
    }
