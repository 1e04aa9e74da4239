"""The job behind ``latentvi world-model train``: PlaNet, Dreamer or SLAC on pixels.

A run (Hafner et al. 2019, PlaNet §5; Hafner et al. 2020, Dreamer §5):

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
episodes, so the episode files on disk (``episodes/``) are exactly those the checkpoint counts.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from latentvi.config import from_dict, option, require, require_int, to_dict
from latentvi.data.episodes import EpisodeRunner, EpisodeStore
from latentvi.envs.pixels import make_env
from latentvi.models.ssm import RSSMConfig
from latentvi.rl.dreamer import DreamerAgent, DreamerConfig
from latentvi.rl.planet import PlanetAgent, PlanetConfig
from latentvi.rl.slac import SlacAgent, SlacConfig
from latentvi.rl.world_model_agent import ModelTrainingConfig, WorldModelAgent
from latentvi.train.checkpoint import find_latest, load_checkpoint, save_checkpoint
from latentvi.train.config import resolve_device
from latentvi.train.errors import TrainingDivergedError
from latentvi.train.metrics import MetricsLogger
from latentvi.train.rng import isolated_rng, mixed_seed, seed_everything
from latentvi.train.runs import check_run_folder, read_run, write_run
from latentvi.train.storage import replace_text

__all__ = [
    "AGENTS",
    "WorldModelRunConfig",
    "load_run",
    "train_world_model",
]

logger = logging.getLogger(__name__)

EVAL_SEED = 1_000_000
OPEN_LOOP_SEED = 3_000_000
# Run options a resume may change; the others (and every other config) must be the run's.
RESUMABLE_RUN_FIELDS = (
    "steps", "train_steps", "eval_every", "eval_episodes", "checkpoint_every",
    "keep_checkpoints", "open_loop_context", "open_loop_horizon", "device", "out", "progress",
    "tensorboard",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WorldModelRunConfig:
    """The environment, the schedule and the run folder of a world-model run."""

    env: str = option("Pendulum-v1", "Gymnasium environment id (continuous actions, rendered)")
    image_size: int = option(64, "height and width of the pixel observations")
    grayscale: bool = option(False, "one grayscale channel instead of RGB")
    action_repeat: int = option(2, "environment steps per agent action")
    steps: int = option(
        50_000, "environment steps in all (seed episodes and action repeat included)"
    )
    seed_episodes: int = option(5, "episodes of a uniform random policy first")
    train_steps: int = option(100, "updates before each collected episode")
    eval_every: int = option(5000, "environment steps between evaluations")
    eval_episodes: int = option(10, "episodes per evaluation (no exploration noise)")
    checkpoint_every: int = option(10_000, "environment steps between checkpoints")
    keep_checkpoints: int = option(2, "newest checkpoints kept on disk")
    open_loop_context: int = option(5, "observed frames before the open-loop prediction")
    open_loop_horizon: int = option(45, "steps predicted open loop (figure and error curve)")
    seed: int = option(0, "seed of the networks, the chunk sampler and the episodes")
    device: str = option("cpu", "cpu, cuda or auto", choices=("cpu", "cuda", "auto"))
    out: str | None = option(None, "run folder (required)")
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(True, "also write TensorBoard scalars")

    def __post_init__(self) -> None:
        for name in (
            "image_size", "action_repeat", "steps", "seed_episodes", "train_steps", "eval_every",
            "eval_episodes", "checkpoint_every", "keep_checkpoints", "open_loop_context",
            "open_loop_horizon",
        ):  # fmt: skip
            require_int(getattr(self, name), name, 1, "use a positive integer")
        require(
            self.device in ("cpu", "cuda", "auto"), "device", self.device, "use cpu, cuda or auto"
        )


# The agents: name -> (agent config type, factory(model config, training config, agent config)).
AgentFactory = Callable[[RSSMConfig, ModelTrainingConfig, Any], WorldModelAgent]
AGENTS: dict[str, tuple[type, AgentFactory]] = {
    "planet": (PlanetConfig, PlanetAgent),
    "dreamer": (DreamerConfig, DreamerAgent),
    "slac": (SlacConfig, SlacAgent),
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
    agent = factory(model, training, agent_config)
    source = run_dir if checkpoint is None else checkpoint
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
    out = Path(run.out)
    latest = find_latest(out) if out.is_dir() else None
    episodes_found = any((out / "episodes").glob("episode-*.npz"))
    check_run_folder(out, resume, holds_run=episodes_found)
    env = make_run_env(run)
    eval_env = make_run_env(run)
    model_config = dataclasses.replace(
        model_config,
        action_dim=int(env.action_space.shape[0]),
        obs_shape=tuple(int(s) for s in env.observation_space.shape),
    )
    require(
        training.chunk_length <= 1 + (env.spec.max_episode_steps or 10**9) // run.action_repeat,
        "chunk_length",
        training.chunk_length,
        "use at most the observations of one episode",
    )
    configs = {"run": run, "model": model_config, "training": training, "agent": agent_config}
    check_run_folder(
        out, resume, kind="world-model", configs=configs,
        fixed=("run", "model", "training", "agent"), ignore={"run": RESUMABLE_RUN_FIELDS},
    )  # fmt: skip
    device = resolve_device(run.device)
    seed_everything(run.seed)
    agent = factory(model_config, training, agent_config).to(device)
    store = EpisodeStore(out / "episodes", seed=mixed_seed(run.seed, 1))
    generator = np.random.default_rng(mixed_seed(run.seed, 2))
    spec = {
        "agent": agent_name,
        "run": to_dict(run),
        "model": to_dict(model_config),
        "training": to_dict(training),
        agent_name: to_dict(agent_config),
    }
    state: dict[str, Any] = {
        "env_steps": 0, "episodes": 0, "updates": 0, "curve": [], "wall": 0.0,
        "timing": {"model": 0.0, "env": 0.0, "act": 0.0},
        "next_eval": 0, "next_checkpoint": run.checkpoint_every,
    }  # fmt: skip
    if latest is not None:
        loaded = load_checkpoint(latest, agent, map_location=device)
        agent.load_optimizer_state(loaded["optimizers"])
        state = loaded["counters"]
        removed = store.discard_after(state["episodes"])
        if removed:
            logger.info("dropped %d episodes written after the checkpoint", removed)
        store.load_sampler_state(loaded["sampler"])
        generator.bit_generator.state = loaded["action_generator"]
        logger.info("resumed %s at environment step %d", latest, state["env_steps"])
    else:
        write_run(out, "world-model", configs, agent=agent_name)
        replace_text(out / "config.json", json.dumps(spec, indent=2) + "\n")
    metrics_logger = MetricsLogger(
        out, tensorboard=run.tensorboard, resume_step=state["env_steps"] if latest else None
    )
    episodes = EpisodeRunner(env, state["timing"])
    evaluator = EpisodeRunner(eval_env, state["timing"])
    try:
        _loop(agent, run, training, store, episodes, evaluator, generator, state, out,
              metrics_logger, spec)  # fmt: skip
        files = _write_outputs(agent, agent_name, run, evaluator, state, out)
    finally:
        metrics_logger.close()
        env.close()
        eval_env.close()
    final = state["curve"][-1] if state["curve"] else {}
    timing = state["timing"]
    busy = max(sum(timing.values()), 1e-9)
    summary = {
        "run_dir": str(out),
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
    replace_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _loop(agent, run, training, store, episodes, evaluator, generator, state, out, log, spec):
    """Seed episodes, then train / collect / evaluate / checkpoint until ``run.steps``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=run.steps, initial=state["env_steps"], disable=not run.progress, unit="step")
    started = time.perf_counter() - state["wall"]
    timing = state["timing"]

    def evaluate_now() -> None:
        returns = []
        with isolated_rng(mixed_seed(run.seed, EVAL_SEED)):
            for index in range(run.eval_episodes):
                seed = mixed_seed(run.seed, EVAL_SEED, index)
                returns.append(evaluator.run(seed, agent, explore=False)[1])
        state["wall"] = time.perf_counter() - started
        values = np.asarray(returns)
        row = {"env_step": state["env_steps"], "return_mean": float(values.mean()),
               "return_std": float(values.std()), "episodes": state["episodes"],
               "wall_seconds": state["wall"]}  # fmt: skip
        state["curve"].append(row)
        log.log(state["env_steps"], {"eval/return_mean": row["return_mean"],
                                     "eval/return_std": row["return_std"]})  # fmt: skip
        bar.set_postfix(eval_return=f"{row['return_mean']:.1f}")
        state["next_eval"] = _next(state["env_steps"], run.eval_every)

    def collect(agent_or_none, explore: bool) -> float:
        seed = mixed_seed(run.seed, 0, state["episodes"])
        episode, total, taken = episodes.run(seed, agent_or_none, explore, generator)
        store.add(episode)
        state["episodes"] += 1
        state["env_steps"] += taken
        bar.update(taken)
        return total

    while len(store) < run.seed_episodes and state["env_steps"] < run.steps:
        log.log(state["env_steps"] or 0, {"train/episode_return": collect(None, False)})
    while state["env_steps"] < run.steps:
        window: dict[str, list[float]] = {}
        began = time.perf_counter()
        for _ in range(run.train_steps):
            batch = store.sample(training.batch_size, training.chunk_length)
            try:
                metrics = agent.update(batch)
            except FloatingPointError as error:
                raise _diverged(error, state, out) from error
            for key, value in metrics.items():
                window.setdefault(key, []).append(value)
        timing["model"] += time.perf_counter() - began
        state["updates"] += run.train_steps
        episode_return = collect(agent, True)
        state["wall"] = time.perf_counter() - started
        row = {key: float(np.mean(values)) for key, values in window.items()}
        row["train/episode_return"] = episode_return
        row["perf/updates"] = state["updates"]
        row["perf/env_steps_per_second"] = state["env_steps"] / max(state["wall"], 1e-9)
        busy = max(sum(timing.values()), 1e-9)
        row.update({f"perf/share_{key}": value / busy for key, value in timing.items()})
        log.log(state["env_steps"], row)
        if state["env_steps"] >= state["next_eval"]:
            evaluate_now()
        if state["env_steps"] >= state["next_checkpoint"]:
            state["next_checkpoint"] = _next(state["env_steps"], run.checkpoint_every)
            _checkpoint(agent, store, generator, state, out, run, spec, started)
    if not state["curve"] or state["curve"][-1]["env_step"] != state["env_steps"]:
        evaluate_now()
    bar.close()
    _checkpoint(agent, store, generator, state, out, run, spec, started)


def _diverged(error: FloatingPointError, state: dict, out: Path) -> TrainingDivergedError:
    latest = find_latest(out)
    where = f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"
    return TrainingDivergedError(
        f"training diverged after {state['updates']} updates ({state['env_steps']} environment "
        f"steps): {error}; that step was not taken. {where}: resume it (--resume) or start again "
        "with lower learning rates (--model-lr; Dreamer: --actor-lr, --critic-lr; SLAC: --sac-lr)",
        step=state["updates"] + 1,
        metric=str(error),
        last_checkpoint=str(latest) if latest else None,
    )


def _next(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def _checkpoint(agent, store, generator, state, out, run, spec, started) -> None:
    state["wall"] = time.perf_counter() - started
    extra = {
        "optimizers": agent.optimizer_state(),
        "sampler": store.sampler_state(),
        "action_generator": generator.bit_generator.state,
        "counters": state,
    }
    save_checkpoint(out, state["env_steps"], agent, extra_state=extra, config=spec,
                    keep=run.keep_checkpoints)  # fmt: skip


def _write_outputs(agent, agent_name, run, evaluator, state, out: Path) -> dict[str, str]:
    from latentvi.jobs.latent_q import plot_learning_curves
    from latentvi.plots import plot_frame_strip

    files = {"curve_csv": str(out / "curve.csv"), "curve_png": str(out / "curve.png")}
    columns = ["env_step", "return_mean", "return_std", "episodes", "wall_seconds"]
    with open(out / "curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(state["curve"])
    plot_learning_curves({agent_name: state["curve"]}, out / "curve.png", f"{run.env} (pixels)")
    with isolated_rng(mixed_seed(run.seed, OPEN_LOOP_SEED)):
        episode, _, _ = evaluator.run(mixed_seed(run.seed, OPEN_LOOP_SEED), agent, explore=False)
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
