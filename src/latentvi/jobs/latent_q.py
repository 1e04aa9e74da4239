"""The job behind ``latentvi rl latent-q``: train a :class:`~latentvi.rl.latent_q.LatentQAgent`.

It composes the shared environment loop (:class:`latentvi.train.env_loop.EnvLoop`) from a
pixel or state environment, the agent, a replay buffer (:class:`ReplayStorage`) and the
step schedule (:class:`StepSchedule`: an update every ``update_every`` agent steps, checkpoints
at episode boundaries). The run folder gets ``curve.csv`` / ``curve.png`` (evaluation return
against environment steps), ``reconstructions.png`` (vae variants: real frames above their
reconstructions), ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard scalars, ``summary.json`` and
``checkpoints/step-*`` (the networks, the optimizers, the replay buffer and every random state).
``--resume`` continues from the latest checkpoint; see :mod:`latentvi.train.env_schedules` for
when a resumed run is identical to one that never stopped. Evaluation uses 10 fixed seeds apart
from training's and runs under its own random state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import option, require, require_int, to_dict
from latentvi.data.replay import ReplayBuffer
from latentvi.envs.pixels import make_env, newest_frame
from latentvi.plots import plot_learning_curves
from latentvi.rl.dqn import epsilon_at
from latentvi.rl.latent_q import PIXEL_VARIANTS, LatentQAgent, LatentQConfig
from latentvi.train.env_loop import (
    EVAL_SEED,
    EnvLoop,
    EnvRunConfig,
    RunRecord,
    evaluation_returns,
    write_curve,
)
from latentvi.train.env_schedules import (
    ReplayStorage,
    StepSchedule,
    new_replay_buffer,
    play_episode,
    random_action,
)
from latentvi.train.metrics import log_images
from latentvi.train.rng import mixed_seed
from latentvi.train.runs import space_info
from latentvi.train.storage import read_json, read_tensors, replace_text, write_json, write_tensors

__all__ = [
    "EVAL_SEED",
    "RunConfig",
    "collect_prior_data",
    "evaluate_policy",
    "make_run_env",
    "new_replay_buffer",
    "plot_learning_curves",
    "run_latent_q",
]

PRIOR_SEED = 2_000_000


@dataclasses.dataclass(frozen=True)
class RunConfig(EnvRunConfig):
    """The environment, the step budget and the run folder of a latent-Q run (the fields of
    :class:`~latentvi.train.env_loop.EnvRunConfig` and these)."""

    pixels: bool | None = option(
        None, "observe rendered 64×64 frames (default: from the variant — all but state)"
    )
    frame_stack: int = option(3, "frames per pixel observation (1 for states)")
    buffer_size: int = option(100_000, "replay buffer capacity (frames / transitions)")
    learning_starts: int = option(1000, "environment steps of uniform random actions first")
    update_every: int = option(2, "agent steps between rounds of updates")
    gradient_steps: int = option(
        1,
        "updates per round, each on a fresh batch (Stable-Baselines3's gradient_steps per "
        "train_freq; rl-zoo's CartPole DQN: 128 every 256 steps)",
    )
    prior_data: str | None = option(
        None,
        "vae-pretrained: observations file (.safetensors) to pretrain on; written there first, "
        "from a uniform random policy, when missing (default: RUN/prior-data.safetensors)",
    )
    prior_steps: int = option(10_000, "environment steps of prior data to collect when missing")
    pretrain_updates: int = option(2000, "vae-pretrained: VAE updates on prior data before RL")
    log_every: int = option(1000, "environment steps between training-metric rows")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "frame_stack", "buffer_size", "update_every", "gradient_steps", "prior_steps",
            "log_every",
        ):  # fmt: skip
            require_int(getattr(self, name), name, 1, "use a positive integer")
        require(self.learning_starts >= 0, "learning_starts", self.learning_starts, "use >= 0")
        require(self.pretrain_updates >= 0, "pretrain_updates", self.pretrain_updates, "use >= 0")


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


def collect_prior_data(
    run: RunConfig,
    path: str | Path,
    steps: int,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> ReplayBuffer | None:
    """Observations of a uniform random policy, ``steps`` environment steps, saved to ``path``
    (safetensors + a JSON sidecar, each replaced atomically) and returned as a replay buffer;
    None, with nothing saved, when ``should_stop()`` turns true between steps."""
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
            if should_stop is not None and should_stop():
                env.close()
                return None
            action = random_action(env.action_space, generator)
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


def evaluate_policy(agent: LatentQAgent, env, episodes: int, seed: int) -> dict[str, float]:
    """Mean and std of the undiscounted return of the deterministic policy over ``episodes``
    episodes with fixed reset seeds (the run's evaluation, :meth:`EnvLoop.evaluate`)."""
    returns = evaluation_returns(
        lambda reset: play_episode(env, agent, reset), episodes, seed, seed
    )
    values = np.asarray(returns)
    return {"return_mean": float(values.mean()), "return_std": float(values.std())}


def run_latent_q(
    agent_config: LatentQConfig, run: RunConfig, resume: bool = False, preset: str | None = None
) -> dict[str, Any]:
    """Train an agent for ``run.steps`` environment steps; return a JSON-ready summary.
    ``preset``: the name of the preset the configs were resolved with (recorded in run.json)."""
    pixels = _check(agent_config, run)
    stack = run.frame_stack if pixels else 1
    pretrains = agent_config.variant == "vae-pretrained" and not resume and run.prior_data
    if pretrains and Path(f"{run.prior_data}.json").is_file():  # it must have the run's stack
        load_prior_data(run.prior_data, run.frame_stack, check_only=True)
    schedule = StepSchedule(
        learning_starts=run.learning_starts,
        update_every=run.update_every,
        gradient_steps=run.gradient_steps,
        batch_size=agent_config.batch_size,
        log_every=run.log_every,
        explore=functools.partial(_explore, agent_config),
    )
    with EnvLoop(
        run,
        make_env=lambda: make_run_env(run, pixels),
        make_agent=lambda env: LatentQAgent(agent_config, env.observation_space, env.action_space),
        storage=ReplayStorage(run.buffer_size, stack),
        schedule=schedule,
        describe=lambda env: {"agent": to_dict(agent_config), "run": to_dict(run)},
        record=lambda env: RunRecord(
            "latent-q",
            {"agent": agent_config, "run": run},
            fixed=("agent", "run"),
            ignore={"run": RESUMABLE_RUN_FIELDS},
            info={
                "observation_space": space_info(env.observation_space),
                "action_space": space_info(env.action_space),
                "preset": preset,
            },
        ),
        resume=resume,
        eval_rng_seed=run.seed,  # latent-Q's evaluation stream since its first release
        divergence_hint="start again with a lower learning rate (--lr, --vae-lr)",
        network_options=("--hidden", "--latent-dim", "--channels", "--feature-dim"),
    ) as loop:
        if not loop.resumed and agent_config.variant == "vae-pretrained":
            _pretrain(loop.agent, run, loop.out, stack, loop.stop)
        state = loop.train()
        files = _write_outputs(loop.agent, agent_config, loop.storage.buffer, state, loop.out)
        if run.tensorboard and "reconstructions" in files:
            log_images(
                loop.out, state["env_steps"], {"eval/reconstructions": files["reconstructions"]}
            )
    final = loop.final_row()
    summary = {
        "run_dir": str(loop.out),
        "variant": agent_config.variant,
        "env": run.env,
        "env_steps": state["env_steps"],
        "episodes": state["episodes"],
        "final_return_mean": final.get("return_mean"),
        "final_return_std": final.get("return_std"),
        "env_steps_per_second": state["env_steps"] / max(state["wall"], 1e-9),
        "replay_bytes_per_transition": loop.storage.buffer.bytes_per_slot,
        "files": files,
    }
    replace_text(loop.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pretrain(agent: LatentQAgent, run: RunConfig, out: Path, stack: int, stop) -> None:
    """Prior data (collected when missing), then VAE updates on it; a stop request ends the
    run before its first checkpoint (it starts again without --resume)."""
    where = "before the first checkpoint (run the command again, without --resume)"
    path = Path(run.prior_data) if run.prior_data else out / "prior-data.safetensors"
    if path.is_file():
        prior = load_prior_data(path, stack)
    else:
        seed = mixed_seed(run.seed, 3)
        prior = collect_prior_data(run, path, run.prior_steps, seed, stop.__bool__)
        if prior is None:
            raise stop.stopped(f"collecting prior data, {where}", None)

    def sample_observations(batch_size: int) -> torch.Tensor:
        if stop:
            raise stop.stopped(f"in VAE pretraining, {where}", None)
        return prior.sample_observations(batch_size)

    metrics = agent.pretrain(sample_observations, run.pretrain_updates)
    write_json(
        out / "pretrain.json", {"prior_data": str(path), "transitions": len(prior), **metrics}
    )


def _explore(config: LatentQConfig, agent: LatentQAgent, obs, agent_steps: int):
    """ε-greedy (DQN) or the stochastic policy (SAC) after ``learning_starts``."""
    epsilon = epsilon_at(
        agent_steps, config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps
    )
    return agent.act(obs, explore=True, epsilon=epsilon)


def _write_outputs(agent, agent_config, buffer, state, out: Path) -> dict[str, str]:
    from latentvi.plots import plot_image_grid

    files = {"curve_csv": str(out / "curve.csv"), "curve_png": str(out / "curve.png")}
    write_curve(out / "curve.csv", state["curve"])
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
