"""E2C on pixel 2-D navigation (``latentvi/PointNav-v0``): random episodes, the model, latent iLQR.

``latentvi world-model train --agent e2c --env latentvi/PointNav-v0`` runs this instead of the
pixel-pendulum experiment of :mod:`latentvi.jobs.e2c`, with the same options
(:class:`~latentvi.jobs.e2c.E2CRunConfig`, :class:`~latentvi.models.e2c.E2CConfig`) read for
this task:

* **data** — ``transitions`` environment steps of episodes of uniform random actions in
  [−1, 1]², each from the task's fixed start (the environment's own resets: E2C here sees only
  what an agent collecting that many steps could see); observations are single grayscale frames
  ``[1, S, S]`` in [0, 1] (the point has no velocity: one frame is its state);
* **training** — :func:`latentvi.train.fit` on :meth:`latentvi.models.e2c.E2C.loss`, ``steps``
  updates of ``batch_size`` transitions, resumable;
* **control** — receding-horizon iLQR (:class:`latentvi.control.lqr.MPC`, Watter et al.'s
  controller; ``controller`` is not read) on the encoder's means toward the latent of the goal
  image (the point drawn at the goal), stage cost ``state_cost · I`` and ``action_cost · I``,
  ``final_cost · I`` at the end of the ``horizon``, ``iterations`` warm-started iterations per
  step, Jacobians as ``linearization`` says; ``trials`` 50-step episodes on the reset seeds of
  :func:`latentvi.train.env_loop.evaluation_returns`, all planned in one batch. **Success**: the
  point ends the episode in the goal region (the environment's ``info["success"]``).

Pendulum options (``zoom``, ``action_repeat``, ``upright_share``, ``episode_steps``,
``success_*``, ``start_*``, the value controller's) are not read; ``prediction_steps`` must be 1.
``summary.json`` holds the success rate, the mean return and final distance, the seconds of each
part and the model's losses on the data; ``run.json`` / ``config.json`` / metrics / checkpoints
as every E2C run (kind ``e2c``, with ``env`` in ``run.json``'s info; ``latentvi.load`` builds
the pendulum's model and cannot load these: :func:`load_model` does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import require, to_dict
from latentvi.control.lqr import MPC, jacobians
from latentvi.envs.navigation import ENV_ID, MAX_EPISODE_STEPS
from latentvi.envs.pixels import make_env
from latentvi.jobs.e2c import RESUMABLE_RUN_FIELDS, E2CRunConfig, train_model
from latentvi.models.e2c import E2C, E2CConfig
from latentvi.presets import DEFAULT_PRESET, resolve
from latentvi.train.checkpoint import load_checkpoint
from latentvi.train.env_loop import evaluation_returns
from latentvi.train.lock import run_lock
from latentvi.train.rng import mixed_seed, seed_everything
from latentvi.train.runs import check_run_folder, write_run
from latentvi.train.storage import write_json

__all__ = ["KIND", "collect_episodes", "control", "load_model", "run_e2c_nav"]

KIND = "e2c"  # the run folder of an E2C run; run.json's info says env = latentvi/PointNav-v0
ACTION_DIM = 2
CONTROL_SEED = 5_000_000


def _pixel_env(run: E2CRunConfig):
    return make_env(ENV_ID, pixels=True, size=run.image_size, grayscale=True)


def _to_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(frames)).float() / 255.0


def collect_episodes(run: E2CRunConfig, seed: int) -> dict[str, torch.Tensor]:
    """``x [N, 1, S, S]``, ``u [N, 2]``, ``x_next [N, 1, S, S]`` from ``N = transitions``
    environment steps of uniform random episodes (the last one cut short to fit)."""
    env = _pixel_env(run)
    rng = np.random.default_rng(seed)
    xs, us, nexts = [], [], []
    episode = 0
    while len(us) < run.transitions:
        obs, _ = env.reset(seed=mixed_seed(seed, episode))
        episode += 1
        for _ in range(min(MAX_EPISODE_STEPS, run.transitions - len(us))):
            action = rng.uniform(-1.0, 1.0, ACTION_DIM).astype(np.float32)
            following, _, _, _, _ = env.step(action)
            xs.append(obs)
            us.append(action)
            nexts.append(following)
            obs = following
    env.close()
    return {
        "x": _to_input(np.stack(xs)),
        "u": torch.from_numpy(np.stack(us)),
        "x_next": _to_input(np.stack(nexts)),
    }


@torch.no_grad()
def control(model: E2C, run: E2CRunConfig, seed: int) -> dict[str, Any]:
    """``run.trials`` episodes under latent iLQR toward the goal (module docstring): per-trial
    ``success``, ``returns``, ``final_distance`` and the newest frame of trial 0 each step."""
    envs = [_pixel_env(run) for _ in range(run.trials)]
    envs[0].reset(seed=0)
    base = envs[0].unwrapped
    base.position = base.goal.copy()  # the goal image: the point drawn at the goal
    goal = model.encode(_to_input(envs[0].observation(None))[None]).mean[0]
    eye = torch.eye(model.latent_dim)
    linearize = model.linearization if run.linearization == "e2c" else jacobians(model.step)
    mpc = MPC(
        model.step, goal, run.state_cost * eye, run.action_cost * torch.eye(ACTION_DIM),
        run.final_cost * eye, horizon=run.horizon, action_dim=ACTION_DIM, low=-1.0, high=1.0,
        iterations=run.iterations, linearize=linearize,
    )  # fmt: skip
    seeds: list[int] = []
    evaluation_returns(lambda s: seeds.append(s) or 0.0, run.trials, run.seed, seed)
    frames = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
    returns, infos, strip = np.zeros(run.trials), [{}] * run.trials, [frames[0]]
    for _ in range(MAX_EPISODE_STEPS):
        actions = mpc(model.encode(_to_input(frames)).mean).clamp(-1, 1).numpy()
        steps = [env.step(a) for env, a in zip(envs, actions, strict=True)]
        frames = np.stack([s[0] for s in steps])
        returns += [s[1] for s in steps]
        infos = [s[4] for s in steps]
        strip.append(frames[0])
    for env in envs:
        env.close()
    return {
        "success": np.array([info["success"] for info in infos]),
        "returns": returns,
        "final_distance": np.array([info["distance"] for info in infos]),
        "strip": np.stack(strip),
    }


def load_model(run_dir: str | Path, run: E2CRunConfig, model_config: E2CConfig) -> E2C:
    """The trained model of a navigation E2C run folder (its latest checkpoint), in eval mode."""
    model = E2C((1, run.image_size, run.image_size), ACTION_DIM, model_config)
    load_checkpoint(run_dir, model, restore_rng=False)
    return model.eval()


def run_e2c_nav(
    config: E2CRunConfig,
    out: str | Path,
    model_config: E2CConfig | None = None,
    preset: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Collect, train, control (module docstring); returns and writes ``summary.json``."""
    require(
        config.prediction_steps == 1,
        "prediction_steps",
        config.prediction_steps,
        "use 1 on latentvi/PointNav-v0",
    )
    with run_lock(out):
        return _run(config, Path(out), model_config, preset, resume)


def _run(run: E2CRunConfig, out: Path, model_config, preset, resume: bool) -> dict[str, Any]:
    model_config = model_config or resolve("e2c", DEFAULT_PRESET, (E2CConfig,))[0]
    configs = {"run": run, "model": model_config}
    check_run_folder(
        out, resume, kind=KIND, configs=configs, fixed=("run", "model"),
        ignore={"run": RESUMABLE_RUN_FIELDS},
    )  # fmt: skip
    if not resume:
        shape = [1, run.image_size, run.image_size]
        write_run(
            out, KIND, configs, obs_shape=shape, action_dim=ACTION_DIM, preset=preset, env=ENV_ID
        )
    seed_everything(run.seed)
    started = time.perf_counter()
    data = collect_episodes(run, mixed_seed(run.seed, 1))
    collected = time.perf_counter()
    size = run.image_size
    model, _ = train_model(
        data,
        run,
        model_config,
        out,
        preset,
        resume,
        obs_shape=(1, size, size),
        action_dim=ACTION_DIM,
    )
    trained = time.perf_counter()
    result = control(model, run, mixed_seed(run.seed, CONTROL_SEED))
    with torch.no_grad():
        losses = model.losses(data["x"][:1000], data["u"][:1000], data["x_next"][:1000])
    summary = {
        "env": ENV_ID,
        "env_steps": run.transitions,
        "success_rate": float(result["success"].mean()),
        "return_mean": float(result["returns"].mean()),
        "final_distance_mean": float(result["final_distance"].mean()),
        "trials": run.trials,
        "collect_seconds": collected - started,
        "train_seconds": trained - collected,
        "control_seconds": time.perf_counter() - trained,
        **{f"eval/{name}": float(value.mean()) for name, value in losses.items()},
        "run_config": to_dict(run),
        "model_config": to_dict(model_config),
    }
    write_json(out / "summary.json", summary)
    return summary
