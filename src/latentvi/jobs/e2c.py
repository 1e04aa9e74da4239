"""E2C on pixel Pendulum: learn the locally linear latent model, then swing up with latent iLQR.

The setup of Watter et al. (2015), on Gymnasium's Pendulum-v1 (|torque| ≤ 2: too weak to lift the
pendulum directly, so a controller has to pump energy):

* **observations** — two consecutive grayscale frames stacked, ``[2, S, S]`` with values
  ``1 − gray/255`` in [0, 1], so the velocity is observable; drawn by
  :class:`latentvi.envs.pendulum_pixels.PendulumPixels` from states set directly (so that data
  covers the whole circle) and moved by Pendulum-v1's equations.
* **data** — ``transitions`` tuples ``(x_t, u_t, x_{t+1})``: a start state (θ uniform on the
  circle, θ̇ uniform in [−8, 8]; a share ``upright_share`` of them near upright instead) then two
  uniform random actions (the first gives the previous frame of x_t). Actions are normalized,
  u = torque / 2 ∈ [−1, 1]. With ``prediction_steps`` K > 1 each start is followed by K actions
  and the K observations they lead to, for E2C's multi-step loss (:mod:`latentvi.models.e2c`).
* **training** — :func:`latentvi.train.fit` on :meth:`latentvi.models.e2c.E2C.loss`.
* **control** — from hanging down (θ = π ± ``start_noise``, θ̇ ∈ ±``start_noise``; ``start_angle``
  = 0 starts upright instead, to test balancing alone) for ``episode_steps`` agent steps: encode
  the two newest frames and act with the run's controller toward the latent of the upright goal
  image (:func:`latentvi.rl.e2c.latent_controller`): receding-horizon iLQR (``mpc``, the
  paper's) or value iteration's greedy policy on a grid over the training latents (``value``, the
  default preset's: iLQR is local, and its plans from rest put the swing-up off). **Success**:
  |θ| < ``success_angle`` at each of the last ``success_steps`` agent steps (θ wrapped to
  (−π, π]). ``trials`` episodes with start states from fixed seeds, all planned in one batch.

``run_e2c(config, out, model_config)`` writes ``summary.json``, the run's ``config.json`` /
metrics / checkpoint (from ``fit``) and three figures: ``reconstructions.png`` (x_t, its
reconstruction, x_{t+1} and its prediction), ``latent.png`` (latent means coloured by the angle)
and ``control.png`` (the newest frame of trial 0 every few steps).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import check_positive_int, from_dict, option, require, to_dict
from latentvi.envs.pendulum import MAX_SPEED, MAX_TORQUE
from latentvi.envs.pendulum_pixels import PendulumPixels, to_input, wrap
from latentvi.memory import require_training_memory
from latentvi.models.e2c import E2C, E2CConfig
from latentvi.plots import plot_e2c
from latentvi.presets import DEFAULT_PRESET, resolve
from latentvi.rl.e2c import Controller, check_value_grid, goal_stability, latent_controller
from latentvi.train import TrainConfig, fit
from latentvi.train.checkpoint import load_checkpoint
from latentvi.train.lock import run_lock
from latentvi.train.rng import mixed_seed, seed_everything
from latentvi.train.runs import check_run_folder, read_run, write_run
from latentvi.train.storage import write_json

__all__ = [
    "E2CRunConfig",
    "collect_transitions",
    "control",
    "evaluate_run",
    "load_model",
    "open_loop_error",
    "preset",
    "run_e2c",
    "start_states",
    "successes",
    "train_model",
]

logger = logging.getLogger(__name__)

TRIAL_SEED = 3_000_000
UPRIGHT_ANGLE, UPRIGHT_SPEED = math.pi / 4, 3.0  # the near-upright starts of ``upright_share``
LINEARIZATIONS = ("e2c", "autograd")
CONTROLLERS = ("mpc", "value")
# Options a resume may change (control and display); data and training must be the run's.
RESUMABLE_RUN_FIELDS = (
    "steps", "horizon", "iterations", "state_cost", "action_cost", "linearization", "final_cost",
    "controller", "value_cells", "value_actions", "discount", "regulator", "trials",
    "episode_steps", "success_steps", "success_angle", "start_angle", "start_noise", "progress",
)  # fmt: skip
LATENT_BOX_SAMPLES = 5000  # encoded training observations that span the value grid


@dataclasses.dataclass(frozen=True)
class E2CRunConfig:
    """Data, training and control of an E2C pixel-pendulum run."""

    image_size: int = option(32, "height and width of each frame (Watter et al.: 48)")
    zoom: int = option(
        1,
        "draw the pendulum at zoom × image_size and keep the central image_size × image_size: "
        "Gymnasium's rod spans 0.23 of the frame's width, at zoom 2 it spans 0.45 (the whole "
        "frame, as in Watter et al.'s images)",
    )
    action_repeat: int = option(2, "pendulum steps (dt = 0.05 s) per agent action")
    transitions: int = option(20_000, "random transitions (x_t, u_t, x_{t+1}) to train on")
    upright_share: float = option(
        0.0,
        "share of the transitions that start near upright (|θ| < π/4, |θ̇| < 3) instead of "
        "anywhere: uniform starts put ~2% of the data where balancing happens",
    )
    prediction_steps: int = option(
        1,
        "K: each training example is x_t, K actions and the K observations that follow, and "
        "E2C's prediction terms are averaged over the K-step rollout of the latent (1: the paper)",
    )
    steps: int = option(12_000, "optimizer updates")
    batch_size: int = option(128, "transitions per update")
    lr: float = option(5e-4, "Adam learning rate")
    horizon: int = option(40, "iLQR planning horizon in agent steps")
    iterations: int = option(8, "iLQR iterations per control step (warm-started)")
    state_cost: float = option(
        0.1,
        "Q = state_cost · I: the stage cost on the latent's distance to the goal (small next to "
        "final_cost, or the planner will not spend the motion a swing-up needs)",
    )
    action_cost: float = option(0.1, "R = action_cost · I: the stage cost on u ∈ [−1, 1]")
    linearization: str = option(
        "e2c",
        "iLQR's Jacobians: e2c (the model's own A_t, B_t, as in the paper) or autograd (exact "
        "Jacobians of z -> A(z) z + B(z) u + o(z))",
        choices=LINEARIZATIONS,
    )
    final_cost: float = option(10.0, "Q_H = final_cost · I")
    controller: str = option(
        "mpc",
        "mpc: receding-horizon iLQR toward the goal's latent (Watter et al.); value: the greedy "
        "policy of value iteration on a grid over the latent box of the training data, same "
        "stage cost, discounted (latentvi.control.value_iteration: global, so it finds the swing-up "
        "where iLQR's local plans wait at the bottom)",
        choices=CONTROLLERS,
    )
    value_cells: int = option(60, "value controller: grid nodes per latent dimension")
    value_actions: int = option(
        9, "value controller: actions in [-1, 1] in value iteration (the policy looks at 21)"
    )
    discount: float = option(0.99, "value controller: the discount γ per agent step")
    regulator: bool = option(
        False,
        "each step also run iLQR from the rollout of the LQR regulator of the model linearized at "
        "the goal (latentvi.control.lqr.goal_regulator) and keep the cheaper plan: iLQR started from "
        "an open-loop plan near the unstable upright state only finds plans that fall",
    )
    trials: int = option(20, "control episodes from the bottom (fixed seeds)")
    episode_steps: int = option(100, "agent steps per control episode")
    success_steps: int = option(25, "success: |θ| < success_angle for this many last steps")
    success_angle: float = option(0.3, "success: the angle bound in radians")
    start_angle: float = option(
        math.pi, "start: θ = start_angle ± start_noise (π: hanging down; 0: upright, balance only)"
    )
    start_noise: float = option(0.2, "start: θ = start_angle ± this, θ̇ = ± this (uniform)")
    seed: int = option(0, "seed of the data, the networks and the trials")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )

    def __post_init__(self) -> None:
        for name in (
            "image_size", "zoom", "action_repeat", "transitions", "prediction_steps", "steps",
            "batch_size", "horizon", "iterations", "value_cells", "value_actions", "trials",
            "episode_steps", "success_steps",
        ):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        require(self.lr > 0, "lr", self.lr, "use a positive learning rate")
        require(self.state_cost >= 0, "state_cost", self.state_cost, "use >= 0")
        require(self.action_cost > 0, "action_cost", self.action_cost, "use > 0")
        require(self.final_cost >= 0, "final_cost", self.final_cost, "use >= 0")
        require(
            self.success_steps <= self.episode_steps,
            "success_steps",
            self.success_steps,
            f"use at most episode_steps = {self.episode_steps}",
        )
        for name, allowed in (("linearization", LINEARIZATIONS), ("controller", CONTROLLERS)):
            value = getattr(self, name)
            require(value in allowed, name, value, f"choose one of {', '.join(allowed)}")
        require(self.value_cells >= 2, "value_cells", self.value_cells, "use at least 2")
        require(self.value_actions >= 2, "value_actions", self.value_actions, "use at least 2")
        require(0 < self.discount < 1, "discount", self.discount, "use a discount in (0, 1)")
        require(self.success_angle > 0, "success_angle", self.success_angle, "use > 0 radians")
        require(self.start_noise >= 0, "start_noise", self.start_noise, "use >= 0")
        require(0.0 <= self.upright_share <= 1.0, "upright_share", self.upright_share, "use 0 to 1")


def preset(name: str = DEFAULT_PRESET, **overrides: Any) -> tuple[E2CRunConfig, E2CConfig]:
    """The (run, model) configs of E2C's preset ``name`` (:data:`latentvi.presets.PRESETS`)
    with ``overrides`` (fields of either), which always win."""
    return resolve("e2c", name, (E2CRunConfig, E2CConfig), overrides)


def collect_transitions(run: E2CRunConfig, seed: int) -> dict[str, torch.Tensor]:
    """``x [N, 2, S, S]``, ``u [N, 1]``, ``x_next [N, 2, S, S]`` and the state (``theta``,
    ``velocity``) of x; with ``prediction_steps`` K > 1, ``u [N, K, 1]`` and ``x_next [N, K, 2, S,
    S]`` (the K actions after x and the observations they lead to)."""
    rng = np.random.default_rng(seed)
    pendulum = PendulumPixels(run.image_size, run.action_repeat, run.zoom)
    n, steps = run.transitions, run.prediction_steps
    frames = np.empty((n, steps + 2, run.image_size, run.image_size), np.uint8)
    actions = rng.uniform(-1, 1, (n, steps + 1)).astype(np.float32)
    theta_prev = rng.uniform(-np.pi, np.pi, n)
    velocity_prev = rng.uniform(-MAX_SPEED, MAX_SPEED, n)
    upright = rng.random(n) < run.upright_share
    theta_prev[upright] = rng.uniform(-UPRIGHT_ANGLE, UPRIGHT_ANGLE, upright.sum())
    velocity_prev[upright] = rng.uniform(-UPRIGHT_SPEED, UPRIGHT_SPEED, upright.sum())
    thetas, velocities = np.empty(n), np.empty(n)
    for i in range(n):
        theta, velocity = theta_prev[i], velocity_prev[i]
        frames[i, 0] = pendulum.frame(theta)[0]
        for k in range(steps + 1):
            theta, velocity = pendulum.step(theta, velocity, MAX_TORQUE * actions[i, k])
            frames[i, k + 1] = pendulum.frame(theta)[0]
            if k == 0:
                thetas[i], velocities[i] = wrap(theta), velocity
    pendulum.close()
    x = to_input(np.stack([frames[:, :-1], frames[:, 1:]], axis=2))  # (N, K + 1, 2, S, S)
    u = torch.from_numpy(actions[:, 1:, None])  # (N, K, 1)
    return {
        "x": x[:, 0],
        "u": u[:, 0] if steps == 1 else u,
        "x_next": x[:, 1] if steps == 1 else x[:, 1:],
        "theta": torch.from_numpy(thetas).float(),
        "velocity": torch.from_numpy(velocities).float(),
    }


def train_model(
    data: dict[str, torch.Tensor],
    run: E2CRunConfig,
    model_config: E2CConfig,
    out: Path,
    preset: str | None = None,
    resume: bool = False,
    *,
    obs_shape: tuple[int, ...] | None = None,
    action_dim: int = 1,
) -> tuple[E2C, float]:
    """Train E2C on ``data`` with :func:`latentvi.train.fit` (``resume``: on from the latest
    checkpoint in ``out``); returns (model, seconds). The run folder's ``config.json`` gets both
    configs and the name of the ``preset`` they came from. ``obs_shape``/``action_dim``: the
    pendulum's (two stacked frames, one torque) unless given (e.g. :mod:`latentvi.jobs.e2c_nav`)."""
    size = run.image_size
    model = E2C(obs_shape or (2, size, size), action_dim, model_config)
    n = data["x"].shape[0]
    per_epoch = max(1, n // run.batch_size)

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n, generator=generator)
        for i in range(per_epoch):
            index = order[i * run.batch_size : (i + 1) * run.batch_size]
            yield data["x"][index], data["u"][index], data["x_next"][index]

    train = TrainConfig(
        max_steps=run.steps, lr=run.lr, seed=run.seed, log_every=max(1, min(200, run.steps)),
        progress=run.progress, tensorboard=False, out=str(out),
    )  # fmt: skip
    started = time.perf_counter()
    extra = {"model": to_dict(model_config), "run": to_dict(run), "preset": preset}
    fit(model, batches, per_epoch, train, extra_config=extra, resume=resume)
    return model.eval(), time.perf_counter() - started


@torch.no_grad()
def open_loop_error(
    model: E2C, run: E2CRunConfig, seed: int, starts: int = 20, steps: int = 20
) -> list[float]:
    """How far the latent dynamics drift: from ``starts`` random states under random actions,
    ``‖ẑ_t − μ(x_t)‖ / √(Σ_i Var μ_i)`` at t = 1 … ``steps``, averaged over the starts
    (``ẑ`` rolled out with :meth:`E2C.step` from the first encoding; 1 ≈ as far as a random
    encoding)."""
    rng = np.random.default_rng(seed)
    pendulum = PendulumPixels(run.image_size, run.action_repeat, run.zoom)
    actions = rng.uniform(-1, 1, (starts, steps)).astype(np.float32)
    frames = []
    for i in range(starts):
        theta, velocity = rng.uniform(-np.pi, np.pi), rng.uniform(-MAX_SPEED, MAX_SPEED)
        row = [pendulum.frame(theta)]
        theta, velocity = pendulum.step(theta, velocity, 0.0)
        row.append(pendulum.frame(theta))
        for t in range(steps):
            theta, velocity = pendulum.step(theta, velocity, MAX_TORQUE * actions[i, t])
            row.append(pendulum.frame(theta))
        frames.append(np.stack(row))  # (steps + 2, 1, S, S)
    pendulum.close()
    frames = np.stack(frames)
    x = to_input(np.concatenate([frames[:, :-1], frames[:, 1:]], axis=2))  # (starts, T+1, 2, S, S)
    encoded = model.encode(x).mean  # (starts, T+1, Z)
    spread = encoded.reshape(-1, encoded.shape[-1]).var(0).sum().sqrt()
    z, errors = encoded[:, 0], []
    for t in range(steps):
        z = model.step(z, torch.from_numpy(actions[:, t : t + 1]))
        errors.append(float((z - encoded[:, t + 1]).norm(dim=-1).mean() / spread))
    return errors


def start_states(run: E2CRunConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(θ, θ̇) of the ``run.trials`` control trials, each ``[trials]``: θ = ``start_angle`` (π:
    hanging down) and θ̇ = 0, each moved by a uniform draw in ±``start_noise`` from ``seed``."""
    rng = np.random.default_rng(seed)
    theta = run.start_angle + rng.uniform(-run.start_noise, run.start_noise, run.trials)
    velocity = rng.uniform(-run.start_noise, run.start_noise, run.trials)
    return theta, velocity


def successes(angles: np.ndarray, run: E2CRunConfig) -> np.ndarray:
    """Which trials succeeded: ``|angle| < success_angle`` at each of the last ``success_steps``
    steps; ``angles [trials, steps]`` (radians from upright) -> ``bool [trials]``."""
    return (np.abs(angles[:, -run.success_steps :]) < run.success_angle).all(axis=1)


@torch.no_grad()
def control(
    model: E2C, run: E2CRunConfig, seed: int, controller: Controller | None = None
) -> dict[str, Any]:
    """Swing up from the bottom in ``run.trials`` episodes (batched); see the module docstring.
    ``controller`` (default :func:`latent_controller`) maps the encodings of each step to the
    actions; it is called once per step, in order, so it may keep state (a filter, a plan)."""
    pendulum = PendulumPixels(run.image_size, run.action_repeat, run.zoom)
    trials = run.trials
    theta, velocity = start_states(run, seed)
    controller = controller or latent_controller(model, run)
    previous = np.stack([pendulum.frame(t) for t in theta])  # at rest: both frames equal
    current = previous
    angles, torques, strip = [], [], []
    started = time.perf_counter()
    for _ in range(run.episode_steps):
        x = to_input(np.concatenate([previous, current], axis=1))
        z = model.encode(x).mean
        u = controller(z)[:, 0].clamp(-1, 1).numpy()
        previous = current
        frames = []
        for i in range(trials):
            theta[i], velocity[i] = pendulum.step(theta[i], velocity[i], MAX_TORQUE * u[i])
            frames.append(pendulum.frame(theta[i]))
        current = np.stack(frames)
        angles.append(wrap(theta.copy()))
        torques.append(MAX_TORQUE * u)
        strip.append(current[0])
    seconds = time.perf_counter() - started
    pendulum.close()
    angles_array = np.stack(angles, axis=1)  # (trials, steps)
    return {
        "success": successes(angles_array, run),
        "angles": angles_array,
        "torques": np.stack(torques, axis=1),
        "strip": np.stack(strip),
        "seconds": seconds,
    }


def run_e2c(
    config: E2CRunConfig,
    out: str | Path,
    model_config: E2CConfig | None = None,
    preset: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Collect data, train E2C, control from the bottom; write figures and ``summary.json``.

    ``model_config`` defaults to the ``default`` preset's model; :func:`preset` gives both (and
    ``preset``, the name saved in ``config.json``, says which preset they came from). ``resume``
    continues a stopped run in ``out``: the same transitions are drawn again (they come from the
    seed) and training goes on from the latest checkpoint, bitwise as if it had not stopped; the
    data and model options must be the run's, the control options may change.
    """
    with run_lock(out):  # one writer per run folder
        return _run_e2c(config, Path(out), model_config, preset, resume)


def _run_e2c(config, out: Path, model_config, preset, resume: bool) -> dict[str, Any]:
    run = config
    model_config = model_config or resolve("e2c", DEFAULT_PRESET, (E2CConfig,))[0]
    configs = {"run": run, "model": model_config}
    check_run_folder(
        out, resume, kind="e2c", configs=configs, fixed=("run", "model"),
        ignore={"run": RESUMABLE_RUN_FIELDS},
    )  # fmt: skip
    if run.controller == "value":  # the grid's size, checked before anything is written
        check_value_grid(run.value_cells, model_config.latent_dim)
    check_memory(run, model_config)
    if not resume:
        shape = [2, run.image_size, run.image_size]
        write_run(out, "e2c", configs, obs_shape=shape, action_dim=1, preset=preset)
    seed_everything(run.seed)  # seed first, then build anything random
    started = time.perf_counter()
    data = collect_transitions(run, mixed_seed(run.seed, 1))
    collect_seconds = time.perf_counter() - started
    logger.info("collected %d transitions in %.1f s", run.transitions, collect_seconds)
    model, train_seconds = train_model(data, run, model_config, out, preset, resume)
    with torch.no_grad():
        evaluation = {
            f"eval/{name}": float(value[:1000].mean())
            for name, value in model.losses(
                data["x"][:1000], data["u"][:1000], data["x_next"][:1000]
            ).items()
        }
    summary = {
        **_evaluate(model, run, model_config, out, data),
        "collect_seconds": collect_seconds,
        "train_seconds": train_seconds,
        **evaluation,
    }
    write_json(out / "summary.json", summary)
    return summary


def check_memory(run: E2CRunConfig, model_config: E2CConfig) -> None:
    """Refuse in one line a model and data (:func:`collect_transitions`) that cannot fit."""
    size, steps, frames = run.image_size, run.prediction_steps, run.transitions * run.image_size**2
    require_training_memory(
        lambda: E2C((2, size, size), 1, model_config), "E2C", ("--latent-dim", "--hidden"),
        frames * (steps + 2) + 4 * frames * 2 * (steps + 1), f"{run.transitions} transitions",
        ("--transitions", "--image-size", "--prediction-steps"),
    )  # fmt: skip


def load_model(
    run_dir: str | Path, config: E2CRunConfig | None = None, model_config: E2CConfig | None = None
) -> E2C:
    """The trained model of ``run_dir`` (its latest checkpoint), in eval mode; ``model_config``
    and ``config.image_size`` must be those of the trained run (default: from its run.json)."""
    if config is None or model_config is None:
        run = read_run(run_dir)
        require(run.kind == "e2c", "run_dir", str(run_dir), f"it holds a {run.kind} run")
        config = config or from_dict(E2CRunConfig, run.config("run"))
        model_config = model_config or from_dict(E2CConfig, run.config("model"))
    model = E2C((2, config.image_size, config.image_size), 1, model_config)
    load_checkpoint(run_dir, model, restore_rng=False)
    return model.eval()


def evaluate_run(
    run_dir: str | Path,
    config: E2CRunConfig,
    model_config: E2CConfig,
    out: str | Path,
    make_controller: Callable[[E2C, E2CRunConfig], Controller] | None = None,
) -> dict[str, Any]:
    """Control again with the trained model of ``run_dir`` (its latest checkpoint) under the
    control options of ``config`` (horizon, costs, trials ...): figures and ``summary.json`` in
    ``out``. ``model_config`` and ``config.image_size`` must be those of the trained run.
    ``make_controller(model, config)`` replaces :func:`latent_controller` (other controllers on
    the same model)."""
    model = load_model(run_dir, config, model_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    small = dataclasses.replace(config, transitions=min(config.transitions, 3000))
    data = collect_transitions(small, mixed_seed(config.seed, 1))
    controller = make_controller(model, config) if make_controller else None
    summary = {
        **_evaluate(model, config, model_config, out, data, controller),
        "model": str(run_dir),
    }
    write_json(out / "summary.json", summary)
    return summary


def _evaluate(
    model: E2C,
    run: E2CRunConfig,
    model_config: E2CConfig,
    out: Path,
    data: dict,
    controller: Controller | None = None,
) -> dict[str, Any]:
    drift = open_loop_error(model, run, mixed_seed(run.seed, 2))
    started = time.perf_counter()
    if controller is None:
        with torch.no_grad():
            latents = model.encode(data["x"][:LATENT_BOX_SAMPLES]).mean
        controller = latent_controller(model, run, latents=latents)
    setup_seconds = time.perf_counter() - started
    result = control(model, run, TRIAL_SEED + run.seed, controller)
    figures = plot_e2c(model, data, result, out)
    upright = np.abs(result["angles"]) < run.success_angle  # (trials, steps)
    return {
        **goal_stability(model, run),
        "success_rate": float(result["success"].mean()),
        "successes": int(result["success"].sum()),
        "trials": run.trials,
        "success_definition": (
            f"|theta| < {run.success_angle} rad at each of the last {run.success_steps} of "
            f"{run.episode_steps} agent steps (action repeat {run.action_repeat}, dt 0.05 s)"
        ),
        "final_abs_angle_mean": float(np.abs(result["angles"][:, -1]).mean()),
        "reached_upright_rate": float(upright.any(axis=1).mean()),
        "time_upright_fraction": float(upright.mean()),
        "controller_setup_seconds": setup_seconds,
        "control_seconds": result["seconds"],
        "open_loop_latent_error": {
            f"step_{t}": drift[t - 1] for t in (1, 2, 5, 10, 20) if t <= len(drift)
        },
        "figures": [str(p) for p in figures],
        "run_config": to_dict(run),
        "model_config": to_dict(model_config),
    }
