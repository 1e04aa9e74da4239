"""The job behind ``latentvi rl latent-q``: train a :class:`~latentvi.rl.latent_q.LatentQAgent`.

The run folder gets ``curve.csv`` / ``curve.png`` (evaluation return against environment steps),
``reconstructions.png`` (vae variants: real frames above their reconstructions), ``metrics.jsonl``
/ ``metrics.csv`` / TensorBoard scalars (:class:`latentvi.train.MetricsLogger`), ``summary.json``
and ``checkpoints/step-*`` (safetensors + JSON through :mod:`latentvi.train.checkpoint`, named by
environment step; they hold the networks, the optimizers, the replay buffer and every random
state). ``--resume`` continues from the latest checkpoint. Periodic checkpoints are taken at the
end of the first episode after each ``checkpoint_every`` steps, so a run resumed from one is
identical, on CPU, to one that never stopped; the final checkpoint may fall inside an episode,
and a run extended from it starts a new episode there.

Environment steps count the underlying environment's steps (an agent step with action repeat R
counts R). Every episode's reset is seeded from (seed, episode number); evaluation uses 10 fixed
seeds apart from training's and runs under its own random state.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import option, require, to_dict
from latentvi.data.replay import ReplayBuffer
from latentvi.envs.pixels import make_env, newest_frame
from latentvi.rl.latent_q import PIXEL_VARIANTS, LatentQAgent, LatentQConfig
from latentvi.train.checkpoint import find_latest, load_checkpoint, save_checkpoint
from latentvi.train.metrics import MetricsLogger
from latentvi.train.rng import isolated_rng, mixed_seed, seed_everything
from latentvi.train.runs import check_run_folder, space_info, write_run
from latentvi.train.storage import read_json, read_tensors, replace_text, write_json, write_tensors

__all__ = [
    "RunConfig",
    "collect_prior_data",
    "evaluate_policy",
    "make_run_env",
    "new_replay_buffer",
    "plot_learning_curves",
    "run_latent_q",
]

logger = logging.getLogger(__name__)

EVAL_SEED = 1_000_000
PRIOR_SEED = 2_000_000


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The environment, the step budget and the run folder of a latent-Q run."""

    env: str = option("Pendulum-v1", "Gymnasium environment id")
    pixels: bool | None = option(
        None, "observe rendered 64×64 frames (default: from the variant — all but state)"
    )
    image_size: int = option(64, "height and width of the pixel observations")
    grayscale: bool = option(True, "one grayscale channel per frame instead of RGB")
    frame_stack: int = option(3, "frames per pixel observation (1 for states)")
    action_repeat: int = option(2, "environment steps per agent action")
    steps: int = option(30_000, "environment steps of training (action repeat included)")
    buffer_size: int = option(100_000, "replay buffer capacity (frames / transitions)")
    learning_starts: int = option(1000, "environment steps of uniform random actions first")
    update_every: int = option(2, "agent steps between updates (one batch each)")
    eval_every: int = option(2500, "environment steps between evaluations")
    eval_episodes: int = option(10, "episodes per evaluation (deterministic policy)")
    prior_data: str | None = option(
        None,
        "vae-pretrained: observations file (.safetensors) to pretrain on; written there first, "
        "from a uniform random policy, when missing (default: RUN/prior-data.safetensors)",
    )
    prior_steps: int = option(10_000, "environment steps of prior data to collect when missing")
    pretrain_updates: int = option(2000, "vae-pretrained: VAE updates on prior data before RL")
    log_every: int = option(1000, "environment steps between training-metric rows")
    checkpoint_every: int = option(10_000, "environment steps between checkpoints")
    keep_checkpoints: int = option(2, "newest checkpoints kept on disk")
    seed: int = option(0, "seed of the networks, the replay sampler and the episodes")
    device: str = option("cpu", "cpu, cuda or auto", choices=("cpu", "cuda", "auto"))
    out: str | None = option(None, "run folder (required)")
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(True, "also write TensorBoard scalars")

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "frame_stack",
            "action_repeat",
            "steps",
            "buffer_size",
            "update_every",
            "eval_every",
            "eval_episodes",
            "prior_steps",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "use a positive integer")
        require(self.learning_starts >= 0, "learning_starts", self.learning_starts, "use >= 0")
        require(self.pretrain_updates >= 0, "pretrain_updates", self.pretrain_updates, "use >= 0")
        require(
            self.device in ("cpu", "cuda", "auto"), "device", self.device, "use cpu, cuda or auto"
        )


RESUMABLE_RUN_FIELDS = (  # a resume may change these; the other options must be the run's
    "steps", "eval_every", "eval_episodes", "log_every", "checkpoint_every", "keep_checkpoints",
    "device", "out", "progress", "tensorboard", "prior_data", "prior_steps", "pretrain_updates",
)  # fmt: skip


def _check(agent_config: LatentQConfig, run: RunConfig) -> bool:
    """Validate the combination; return whether observations are pixels."""
    pixel_variant = agent_config.variant in PIXEL_VARIANTS
    pixels = pixel_variant if run.pixels is None else run.pixels
    require(
        pixels == pixel_variant,
        "pixels",
        run.pixels,
        f"variant {agent_config.variant!r} "
        + (
            "observes pixels: drop --no-pixels"
            if pixel_variant
            else "uses the state: drop --pixels"
        ),
    )
    require(run.out is not None, "out", run.out, "give a run folder, e.g. --out runs/latent-q")
    return pixels


def make_run_env(run: RunConfig, pixels: bool):
    return make_env(
        run.env,
        pixels=pixels,
        size=run.image_size,
        grayscale=run.grayscale,
        frame_stack=run.frame_stack if pixels else 1,
        action_repeat=run.action_repeat,
    )


def _random_action(space, generator: np.random.Generator):
    if hasattr(space, "n"):
        return int(generator.integers(space.n))
    return generator.uniform(space.low, space.high).astype(np.float32)


def new_replay_buffer(env, capacity: int, stack: int, seed: int) -> ReplayBuffer:
    space = env.observation_space
    frame_channels = space.shape[0] // stack
    discrete = hasattr(env.action_space, "n")
    return ReplayBuffer(
        capacity,
        (frame_channels, *space.shape[1:]),
        stack=stack,
        frame_dtype=space.dtype,
        action_shape=() if discrete else env.action_space.shape,
        action_dtype=np.int64 if discrete else np.float32,
        seed=seed,
    )


def collect_prior_data(run: RunConfig, path: str | Path, steps: int, seed: int) -> ReplayBuffer:
    """Observations of a uniform random policy, ``steps`` environment steps, saved to ``path``
    (safetensors + a JSON sidecar, each replaced atomically) and returned as a replay buffer."""
    env = make_run_env(run, pixels=True)
    stack = run.frame_stack
    buffer = new_replay_buffer(env, steps + steps // 2 + stack + 1, stack, seed)
    generator = np.random.default_rng(seed)
    frame_channels = buffer.frame_shape[0]
    taken, episode = 0, 0
    while taken < steps:
        obs, _ = env.reset(seed=mixed_seed(seed, PRIOR_SEED, episode))
        buffer.start(newest_frame(obs, frame_channels))
        done = False
        while not done and taken < steps:
            action = _random_action(env.action_space, generator)
            obs, reward, terminated, truncated, info = env.step(action)
            buffer.add(action, reward, newest_frame(obs, frame_channels), terminated, truncated)
            taken += info.get("env_steps", 1)
            done = terminated or truncated
        episode += 1
    env.close()
    save_prior_data(buffer, path, {"env": run.env, "env_steps": taken, "episodes": episode})
    return buffer


def save_prior_data(buffer: ReplayBuffer, path: str | Path, info: dict[str, Any]) -> None:
    """Write a buffer's frames and steps to ``path`` (.safetensors) and ``path + .json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = buffer.state_dict()
    temporary = path.with_name(f".{path.name}.tmp")
    write_tensors(temporary, state.pop("arrays"))
    temporary.replace(path)
    meta = {**info, **state, "frame_shape": list(buffer.frame_shape)}
    replace_text(Path(f"{path}.json"), json.dumps(meta, indent=2) + "\n")


def load_prior_data(path: str | Path, stack: int, check_only: bool = False) -> ReplayBuffer | None:
    """A buffer written by :func:`save_prior_data` (``stack`` must match the run's; with
    ``check_only``, only that is checked, from the JSON sidecar, and None returned)."""
    path = Path(path)
    meta = read_json(Path(f"{path}.json"))
    require(
        int(meta["stack"]) == stack,
        "frame_stack",
        stack,
        f"the prior data {path} was collected with frame_stack {meta['stack']}; use that",
    )
    if check_only:
        return None
    arrays = read_tensors(path)
    buffer = ReplayBuffer(
        int(meta["capacity"]),
        tuple(meta["frame_shape"]),
        stack=stack,
        frame_dtype=arrays["frames"].numpy().dtype,
        action_shape=tuple(arrays["actions"].shape[1:]),
        action_dtype=arrays["actions"].numpy().dtype,
    )
    buffer.load_state_dict({**meta, "arrays": arrays})
    return buffer


@torch.no_grad()
def evaluate_policy(agent: LatentQAgent, env, episodes: int, seed: int) -> dict[str, float]:
    """Mean and std of the undiscounted return of the deterministic policy over ``episodes``
    episodes with fixed reset seeds; environment steps counted with action repeat."""
    returns = []
    with isolated_rng(seed):
        for episode in range(episodes):
            obs, _ = env.reset(seed=mixed_seed(seed, EVAL_SEED, episode))
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    values = np.asarray(returns)
    return {"return_mean": float(values.mean()), "return_std": float(values.std())}


def run_latent_q(
    agent_config: LatentQConfig, run: RunConfig, resume: bool = False
) -> dict[str, Any]:
    """Train an agent for ``run.steps`` environment steps; return a JSON-ready summary."""
    pixels = _check(agent_config, run)
    out = Path(run.out)
    check_run_folder(
        out, resume, kind="latent-q", configs={"agent": agent_config, "run": run},
        fixed=("agent", "run"), ignore={"run": RESUMABLE_RUN_FIELDS},
    )  # fmt: skip
    pretrains = agent_config.variant == "vae-pretrained" and not resume and run.prior_data
    if pretrains and Path(f"{run.prior_data}.json").is_file():  # it must have the run's stack
        load_prior_data(run.prior_data, run.frame_stack, check_only=True)
    device = torch.device(
        "cuda" if run.device == "auto" and torch.cuda.is_available() else
        ("cpu" if run.device == "auto" else run.device)
    )  # fmt: skip
    seed_everything(run.seed)
    env, eval_env = make_run_env(run, pixels), make_run_env(run, pixels)
    stack = run.frame_stack if pixels else 1
    agent = LatentQAgent(agent_config, env.observation_space, env.action_space).to(device)
    buffer = new_replay_buffer(env, run.buffer_size, stack, mixed_seed(run.seed, 1))
    generator = np.random.default_rng(mixed_seed(run.seed, 2))
    spec = {"agent": to_dict(agent_config), "run": to_dict(run)}
    state = {"env_steps": 0, "agent_steps": 0, "episodes": 0, "curve": [], "wall": 0.0}
    latest = find_latest(out) if resume else None
    if latest is not None:
        loaded = load_checkpoint(latest, agent, map_location=device)
        agent.load_optimizer_state(loaded["optimizers"])
        buffer.load_state_dict(loaded["replay"])
        generator.bit_generator.state = loaded["action_generator"]
        state = loaded["counters"]
        logger.info("resumed %s at environment step %d", latest, state["env_steps"])
    else:
        write_run(
            out, "latent-q", {"agent": agent_config, "run": run},
            observation_space=space_info(env.observation_space),
            action_space=space_info(env.action_space),
        )  # fmt: skip
        replace_text(out / "config.json", json.dumps(spec, indent=2) + "\n")
        if agent_config.variant == "vae-pretrained":
            _pretrain(agent, run, out, stack)
    metrics_logger = MetricsLogger(
        out, tensorboard=run.tensorboard, resume_step=state["env_steps"] if latest else None
    )
    try:
        _train(agent, agent_config, run, env, eval_env, buffer, generator, state, out,
               metrics_logger, spec)  # fmt: skip
    finally:
        metrics_logger.close()
        env.close()
        eval_env.close()
    files = _write_outputs(agent, agent_config, buffer, state, out)
    final = state["curve"][-1] if state["curve"] else {}
    summary = {
        "run_dir": str(out),
        "variant": agent_config.variant,
        "env": run.env,
        "env_steps": state["env_steps"],
        "episodes": state["episodes"],
        "final_return_mean": final.get("return_mean"),
        "final_return_std": final.get("return_std"),
        "env_steps_per_second": state["env_steps"] / max(state["wall"], 1e-9),
        "replay_bytes_per_transition": buffer.bytes_per_slot,
        "files": files,
    }
    replace_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pretrain(agent: LatentQAgent, run: RunConfig, out: Path, stack: int) -> None:
    path = Path(run.prior_data) if run.prior_data else out / "prior-data.safetensors"
    if path.is_file():
        prior = load_prior_data(path, stack)
    else:
        prior = collect_prior_data(run, path, run.prior_steps, mixed_seed(run.seed, 3))
    metrics = agent.pretrain(prior.sample_observations, run.pretrain_updates)
    write_json(
        out / "pretrain.json", {"prior_data": str(path), "transitions": len(prior), **metrics}
    )


def _train(agent, agent_config, run, env, eval_env, buffer, generator, state, out, log, spec):
    """The loop: act, store, update every ``update_every`` agent steps; evaluate, log and
    checkpoint on their schedules (kept in ``state``, so a resumed run keeps them too)."""
    from tqdm.auto import tqdm

    frame_channels = buffer.frame_shape[0]
    for key, every in (("next_log", run.log_every), ("next_checkpoint", run.checkpoint_every)):
        state.setdefault(key, every)
    state.setdefault("next_eval", 0)
    state.setdefault("window", {})
    window = state["window"]
    bar = tqdm(total=run.steps, initial=state["env_steps"], disable=not run.progress, unit="step")
    started = time.perf_counter() - state["wall"]

    def evaluate_now() -> None:
        state["wall"] = time.perf_counter() - started
        result = evaluate_policy(agent, eval_env, run.eval_episodes, run.seed)
        row = {"env_step": state["env_steps"], **result, "episodes": state["episodes"],
               "wall_seconds": state["wall"]}  # fmt: skip
        state["curve"].append(row)
        log.log(state["env_steps"], {f"eval/{k}": v for k, v in result.items()})
        bar.set_postfix(eval_return=f"{result['return_mean']:.1f}")
        state["next_eval"] = _next(state["env_steps"], run.eval_every)

    done = True
    while state["env_steps"] < run.steps:
        if state["env_steps"] >= state["next_eval"]:
            evaluate_now()
        if done:
            if state["env_steps"] >= state["next_checkpoint"]:  # an episode boundary
                state["next_checkpoint"] = _next(state["env_steps"], run.checkpoint_every)
                state["wall"] = time.perf_counter() - started
                _checkpoint(agent, buffer, generator, state, out, run, spec)
            obs, _ = env.reset(seed=mixed_seed(run.seed, 0, state["episodes"]))
            buffer.start(newest_frame(obs, frame_channels))
            state["episode_return"], done = 0.0, False
        if state["env_steps"] < run.learning_starts:
            action = _random_action(env.action_space, generator)
        else:
            epsilon = _epsilon(agent_config, state["agent_steps"])
            action = agent.act(obs, explore=True, epsilon=epsilon)
        obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(action, reward, newest_frame(obs, frame_channels), terminated, truncated)
        taken = info.get("env_steps", 1)
        state["env_steps"] += taken
        state["agent_steps"] += 1
        bar.update(taken)
        state["episode_return"] += float(reward)
        if terminated or truncated:
            done = True
            state["episodes"] += 1
            _add(window, {"train/episode_return": state["episode_return"]})
        ready = state["env_steps"] >= run.learning_starts and len(buffer) >= agent_config.batch_size
        if ready and state["agent_steps"] % run.update_every == 0:
            _add(window, agent.update(buffer.sample(agent_config.batch_size)))
        if state["env_steps"] >= state["next_log"]:
            state["wall"] = time.perf_counter() - started
            row = {k: sum(v) / len(v) for k, v in window.items()}
            row["perf/env_steps_per_second"] = state["env_steps"] / max(state["wall"], 1e-9)
            log.log(state["env_steps"], row)
            window.clear()
            state["next_log"] = _next(state["env_steps"], run.log_every)
    if not state["curve"] or state["curve"][-1]["env_step"] != state["env_steps"]:
        evaluate_now()
    bar.close()
    state["wall"] = time.perf_counter() - started
    _checkpoint(agent, buffer, generator, state, out, run, spec)


def _next(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def _epsilon(config: LatentQConfig, agent_steps: int) -> float:
    from latentvi.rl.dqn import epsilon_at

    return epsilon_at(
        agent_steps, config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
    )


def _add(window: dict[str, list[float]], values: dict) -> None:
    for key, value in values.items():
        window.setdefault(key, []).append(float(value))


def _checkpoint(agent, buffer, generator, state, out, run, spec) -> None:
    extra = {
        "optimizers": agent.optimizer_state(),
        "replay": buffer.state_dict(),
        "action_generator": generator.bit_generator.state,
        "counters": state,
    }
    save_checkpoint(out, state["env_steps"], agent, extra_state=extra, config=spec,
                    keep=run.keep_checkpoints)  # fmt: skip


def _write_outputs(agent, agent_config, buffer, state, out: Path) -> dict[str, str]:
    from latentvi.plots import plot_image_grid

    files = {"curve_csv": str(out / "curve.csv"), "curve_png": str(out / "curve.png")}
    columns = ["env_step", "return_mean", "return_std", "episodes", "wall_seconds"]
    with open(out / "curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(state["curve"])
    plot_learning_curves({agent_config.variant: state["curve"]}, out / "curve.png")
    if agent_config.uses_vae and len(buffer) > 0:
        with torch.no_grad():
            obs = buffer.sample_observations(8)
            recon = agent.reconstruct(obs).cpu()
        channels = buffer.frame_shape[0]
        real = obs[:, -channels:].float() / 255.0
        strip = torch.cat([real, recon[:, -channels:]])
        plot_image_grid(strip, out / "reconstructions.png", "real (top) | VAE reconstruction",
                        columns=8)  # fmt: skip
        files["reconstructions"] = str(out / "reconstructions.png")
    return files


def plot_learning_curves(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Evaluation return (mean ± std band) against environment steps, one line per name."""
    from latentvi.plots import plt, save_figure

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        if not rows:
            continue
        steps = np.array([r["env_step"] for r in rows])
        mean = np.array([r["return_mean"] for r in rows])
        std = np.array([r["return_std"] for r in rows])
        axis.plot(steps, mean, label=name, marker="." if len(rows) < 30 else None)
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("evaluation return")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)
