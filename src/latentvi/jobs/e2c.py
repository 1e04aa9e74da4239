"""E2C on pixel Pendulum: learn the locally linear latent model, then swing up with latent iLQR.

The setup of Watter et al. (2015), on Gymnasium's Pendulum-v1 (|torque| ≤ 2: too weak to lift the
pendulum directly, so a controller has to pump energy):

* **observations** — two consecutive grayscale frames stacked, ``[2, S, S]`` with values
  ``1 − gray/255`` in [0, 1] (the rod is bright on a dark background), so the velocity is
  observable. Frames are drawn by :func:`latentvi.envs.pixels.make_env`'s ``PixelObservation``
  with the torque arrow hidden, from states set directly (so that data covers the whole circle)
  and moved by Pendulum-v1's equations (:func:`latentvi.envs.pendulum.pendulum_step`).
* **data** — ``transitions`` tuples ``(x_t, u_t, x_{t+1})``: a start state (θ uniform on the
  circle, θ̇ uniform in [−8, 8]; a share ``upright_share`` of them near upright instead) then two
  uniform random actions (the first gives the previous frame of x_t). Actions are normalized,
  u = torque / 2 ∈ [−1, 1]. With ``prediction_steps`` K > 1 each start is followed by K actions
  and the K observations they lead to, for E2C's multi-step loss (:mod:`latentvi.models.e2c`).
* **training** — :func:`latentvi.train.fit` on :meth:`latentvi.models.e2c.E2C.loss`.
* **control** — from hanging down (θ = π ± ``start_noise``, θ̇ ∈ ±``start_noise``; ``start_angle``
  = 0 starts upright instead, to test balancing alone) for ``episode_steps`` agent steps: encode
  the two newest frames, plan with :class:`latentvi.control.lqr.MPC` toward the latent of the upright
  goal image (two frames at θ = 0), apply the first action. iLQR linearizes the model with
  E2C's own ``A_t, B_t`` (the paper's choice) or by autograd (the default preset: E2C's
  ``A_t`` stays near I at the upright state, whose instability the offset ``o(z)`` carries);
  with ``regulator`` it also starts from the model's LQR regulator at the goal
  (:func:`latentvi.control.lqr.goal_regulator`), without which it cannot balance. With ``controller``
  = ``value`` (the default preset) the action is instead the greedy one under the discounted
  cost-to-go of the same stage cost, computed by value iteration on a grid over the latents of
  the training data (:func:`value_controller`): iLQR is local, and from a pendulum at rest its
  plans tend to put the swing-up at the end of the horizon, which recedes. **Success**:
  |θ| < ``success_angle`` at each of the last ``success_steps`` agent steps (θ wrapped to
  (−π, π]). ``trials`` episodes with start states from fixed seeds, all planned in one batch.

``run_e2c(config, out, model_config)`` writes ``summary.json``, the run's ``config.json`` /
metrics / checkpoint (from ``fit``) and three figures: ``reconstructions.png`` (frames of x_t,
their reconstructions, x_{t+1}, and its prediction through the latent dynamics),
``latent.png`` (latent means coloured by the angle) and ``control.png`` (the newest frame of
trial 0 every few steps).
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
from torch import Tensor

from latentvi.config import check_positive_int, option, require, to_dict
from latentvi.control.lqr import MPC, goal_regulator, jacobians
from latentvi.control.value_iteration import Grid, greedy_policy, value_iteration
from latentvi.envs.pendulum import MAX_SPEED, MAX_TORQUE, pendulum_step
from latentvi.envs.pixels import make_env
from latentvi.models.e2c import E2C, E2CConfig
from latentvi.plots import plot_image_grid, save_figure
from latentvi.train import TrainConfig, fit
from latentvi.train.rng import mixed_seed
from latentvi.train.runs import check_run_folder, write_run
from latentvi.train.storage import write_json

__all__ = [
    "PRESETS",
    "E2CRunConfig",
    "PendulumPixels",
    "collect_transitions",
    "control",
    "evaluate_run",
    "goal_latent",
    "goal_stability",
    "latent_controller",
    "load_model",
    "open_loop_error",
    "plot_e2c",
    "preset",
    "run_e2c",
    "train_model",
    "value_controller",
]

logger = logging.getLogger(__name__)

TRIAL_SEED = 3_000_000
UPRIGHT_ANGLE, UPRIGHT_SPEED = math.pi / 4, 3.0  # the near-upright starts of ``upright_share``
LINEARIZATIONS = ("e2c", "autograd")
CONTROLLERS = ("mpc", "value")
POLICY_ACTIONS = 21  # the value controller's lookahead actions
LATENT_BOX_SAMPLES = 5000  # encoded training observations that span the value grid
MAX_VALUE_NODES = 2_000_000  # 9 actions × 2M nodes × 8 corners of int64 indices ≈ 1.2 GB


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
    progress: bool = option(False, "show a progress bar while training")

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "zoom",
            "action_repeat",
            "transitions",
            "prediction_steps",
            "steps",
            "batch_size",
            "horizon",
            "iterations",
            "value_cells",
            "value_actions",
            "trials",
            "episode_steps",
            "success_steps",
        ):
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
        require(
            self.linearization in LINEARIZATIONS,
            "linearization",
            self.linearization,
            f"choose one of {', '.join(LINEARIZATIONS)}",
        )
        require(
            self.controller in CONTROLLERS,
            "controller",
            self.controller,
            f"choose one of {', '.join(CONTROLLERS)}",
        )
        require(self.value_cells >= 2, "value_cells", self.value_cells, "use at least 2")
        require(self.value_actions >= 2, "value_actions", self.value_actions, "use at least 2")
        require(0 < self.discount < 1, "discount", self.discount, "use a discount in (0, 1)")
        require(self.success_angle > 0, "success_angle", self.success_angle, "use > 0 radians")
        require(self.start_noise >= 0, "start_noise", self.start_noise, "use >= 0")
        require(0.0 <= self.upright_share <= 1.0, "upright_share", self.upright_share, "use 0 to 1")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CPU-sized: 32×32 frames drawn at zoom 2, 256-256 bodies, a strong consistency term (λ = 4),
    # 40,000 transitions (a quarter of them starting near upright) and 24,000 updates; control
    # by the greedy policy of value iteration on a 60³ grid over the training latents (γ = 0.99);
    # with controller = mpc: autograd Jacobians, 80-step (8 s) plans, 16 iLQR iterations and the
    # goal regulator as a second start; 50 trials.
    "default": {
        "run": {
            "controller": "value",
            "zoom": 2,
            "transitions": 40_000,
            "upright_share": 0.25,
            "steps": 24_000,
            "linearization": "autograd",
            "regulator": True,
            "horizon": 80,
            "iterations": 16,
            "trials": 50,
        },
        "model": {"latent_dim": 3, "hidden": (256, 256), "consistency": 4.0},
    },
    # Watter et al.'s pendulum sizes: 48×48 frames, 800-800 bodies, λ = 0.25 (for a GPU).
    "paper": {
        "run": {"image_size": 48, "steps": 30_000},
        "model": {"latent_dim": 3, "hidden": (800, 800), "consistency": 0.25},
    },
    "debug": {
        "run": {
            "image_size": 16,
            "transitions": 512,
            "steps": 40,
            "batch_size": 64,
            "horizon": 8,
            "iterations": 2,
            "trials": 2,
            "episode_steps": 6,
            "success_steps": 2,
        },
        "model": {"latent_dim": 3, "hidden": (32,), "transition_hidden": (16,)},
    },
}


def preset(name: str, **overrides: Any) -> tuple[E2CRunConfig, E2CConfig]:
    """The (run, model) configs of preset ``name`` with ``overrides`` (fields of either)."""
    if name not in PRESETS:
        raise ValueError(f"preset = {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    run_fields = {f.name for f in dataclasses.fields(E2CRunConfig)}
    model_fields = {f.name for f in dataclasses.fields(E2CConfig)}
    unknown = set(overrides) - run_fields - model_fields
    if unknown:
        raise ValueError(f"unknown E2C options {sorted(unknown)}; see E2CRunConfig and E2CConfig")
    run = {**PRESETS[name]["run"], **{k: v for k, v in overrides.items() if k in run_fields}}
    model = {**PRESETS[name]["model"], **{k: v for k, v in overrides.items() if k in model_fields}}
    return E2CRunConfig(**run), E2CConfig(**model)


class PendulumPixels:
    """Pendulum-v1 whose state can be set, drawn as ``uint8 [1, size, size]`` frames.

    Frames come from :func:`latentvi.envs.pixels.make_env`'s ``PixelObservation`` (:meth:`frame`
    hides the torque arrow Gymnasium draws, which would show the action); :meth:`step` applies
    the environment's equations ``action_repeat`` times. With ``zoom`` > 1 the pendulum is drawn
    at ``zoom · size`` and the central ``size × size`` kept.
    """

    def __init__(self, size: int, action_repeat: int, zoom: int = 1) -> None:
        drawn = size * check_positive_int("zoom", zoom)
        self.env = make_env("Pendulum-v1", pixels=True, size=drawn)
        self.env.reset(seed=0)
        self.base = self.env.unwrapped
        self.crop = slice((drawn - size) // 2, (drawn - size) // 2 + size)
        self.action_repeat = check_positive_int("action_repeat", action_repeat)

    def frame(self, theta: float) -> np.ndarray:
        """The image of the pendulum at angle ``theta`` (0 upright)."""
        self.base.state = np.array([theta, 0.0])
        self.base.last_u = None
        return np.ascontiguousarray(self.env.observation(None)[:, self.crop, self.crop])

    def step(self, theta: float, velocity: float, torque: float) -> tuple[float, float]:
        """The state after one agent action (``action_repeat`` pendulum steps) from (θ, θ̇).

        Pendulum-v1's own equations (:func:`latentvi.envs.pendulum.pendulum_step`, checked against
        the environment), not the wrapped environment's ``step``: its time limit would end the
        action repeat early after 200 steps, silently halving the time step.
        """
        theta, velocity, _ = pendulum_step(theta, velocity, torque, repeat=self.action_repeat)
        return float(theta), float(velocity)

    def close(self) -> None:
        self.env.close()


def to_input(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [..., 2, S, S]`` (gray) -> ``float [..., 2, S, S]`` = 1 − gray/255."""
    return 1.0 - torch.from_numpy(np.asarray(frames)).float() / 255.0


def wrap(theta: np.ndarray | float) -> np.ndarray:
    """Angles wrapped to (−π, π]."""
    return np.pi - np.mod(np.pi - np.asarray(theta), 2 * np.pi)


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
    data: dict[str, torch.Tensor], run: E2CRunConfig, model_config: E2CConfig, out: Path
) -> tuple[E2C, float]:
    """Train E2C on ``data`` with :func:`latentvi.train.fit`; returns (model, seconds)."""
    size = run.image_size
    model = E2C((2, size, size), 1, model_config)
    n = data["x"].shape[0]
    per_epoch = max(1, n // run.batch_size)

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(n, generator=generator)
        for i in range(per_epoch):
            index = order[i * run.batch_size : (i + 1) * run.batch_size]
            yield data["x"][index], data["u"][index], data["x_next"][index]

    train = TrainConfig(
        max_steps=run.steps,
        lr=run.lr,
        seed=run.seed,
        log_every=max(1, min(200, run.steps)),
        progress=run.progress,
        tensorboard=False,
        out=str(out),
    )
    started = time.perf_counter()
    fit(model, batches, per_epoch, train, extra_config={"model": to_dict(model_config)})
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


def swing_up_controller(
    run: E2CRunConfig,
    step: Callable[[Tensor, Tensor], Tensor],
    goal: Tensor,
    state_cost: float,
    linearize: Callable | None = None,
) -> MPC:
    """The run's receding-horizon iLQR toward ``goal [X]`` under dynamics ``step(x, u)``:
    stage cost ``state_cost · I`` on the state, ``action_cost`` on the torque in [-1, 1],
    ``final_cost · I`` at the horizon (``linearize``: the model's own Jacobians, or autograd);
    with ``run.regulator``, the goal's LQR regulator as the MPC's fallback start."""
    eye = torch.eye(goal.shape[-1])
    Q, R, Q_final = state_cost * eye, run.action_cost * torch.eye(1), run.final_cost * eye
    box = {"horizon": run.horizon, "action_dim": 1, "low": -1.0, "high": 1.0}
    fallback = None
    if run.regulator:
        fallback = goal_regulator(step, goal, Q, R, Q_final, linearize=linearize, **box)
    return MPC(
        step,
        goal,
        Q,
        R,
        Q_final,
        iterations=run.iterations,
        linearize=linearize,
        fallback=fallback,
        **box,
    )


def value_controller(
    run: E2CRunConfig, step: Callable[[Tensor, Tensor], Tensor], goal: Tensor, latents: Tensor
) -> Controller:
    """The greedy policy of the discounted cost-to-go of ``step`` toward ``goal [Z]``
    (:func:`latentvi.control.value_iteration.value_iteration`): the MPC's stage cost
    ``½ state_cost ‖z − g‖² + ½ action_cost u²``, discount ``run.discount``, on a grid of
    ``run.value_cells`` nodes per dimension over the box of ``latents [N, Z]`` widened by a tenth
    of its size on each side; ``run.value_actions`` actions there, 21 in the policy."""
    nodes = run.value_cells ** latents.shape[-1]
    require(
        nodes <= MAX_VALUE_NODES,
        "value_cells",
        run.value_cells,
        f"the grid would have value_cells^latent_dim = {nodes:,} nodes; the value controller is "
        f"for latents of 2–3 dimensions: use fewer cells or controller = mpc",
    )
    low, high = latents.min(0).values, latents.max(0).values
    margin = 0.1 * (high - low)
    grid = Grid(low - margin, high + margin, run.value_cells)

    def cost(z: Tensor, u: Tensor) -> Tensor:
        return 0.5 * run.state_cost * (z - goal).square().sum(-1) + 0.5 * run.action_cost * (
            u.square().sum(-1)
        )

    actions = torch.linspace(-1.0, 1.0, run.value_actions).unsqueeze(-1)
    value = value_iteration(step, cost, grid, actions, discount=run.discount)
    logger.info("value iteration: %d sweeps, residual %.1e", value.sweeps, value.residual)
    return greedy_policy(step, cost, value, torch.linspace(-1.0, 1.0, POLICY_ACTIONS)[:, None])


@torch.no_grad()
def goal_latent(model: E2C, pendulum: PendulumPixels) -> Tensor:
    """``[Z]``: the mean latent of the goal image, two frames of the pendulum at rest upright."""
    upright = pendulum.frame(0.0)
    return model.encode(to_input(np.concatenate([upright, upright])[None])).mean[0]


@torch.no_grad()
def goal_stability(model: E2C, run: E2CRunConfig) -> dict[str, Any]:
    """How the model sees the upright goal: ``drift`` = ‖f(z_g, 0) − z_g‖ (0 if the goal's latent
    is a fixed point) and the moduli of the eigenvalues of ∂f/∂z there (autograd), largest first
    — Pendulum-v1's own map at upright has 1.47 and 0.68 per agent step of 0.1 s."""
    pendulum = PendulumPixels(run.image_size, run.action_repeat, run.zoom)
    goal = goal_latent(model, pendulum)[None]
    pendulum.close()
    rest = torch.zeros(1, model.action_dim)
    with torch.enable_grad():
        jacobian, _ = jacobians(model.step)(goal, rest)
    moduli = torch.linalg.eigvals(jacobian[0]).abs().sort(descending=True).values
    return {
        "goal_drift": float((model.step(goal, rest) - goal).norm()),
        "goal_eigenvalues": [float(m) for m in moduli],
    }


def successes(angles: np.ndarray, run: E2CRunConfig) -> np.ndarray:
    """Which trials succeeded: ``|angle| < success_angle`` at each of the last ``success_steps``
    steps; ``angles [trials, steps]`` (radians from upright) -> ``bool [trials]``."""
    return (np.abs(angles[:, -run.success_steps :]) < run.success_angle).all(axis=1)


Controller = Callable[[Tensor], Tensor]  # latent means [N, Z] -> actions [N, 1] in [-1, 1]


def latent_controller(
    model: E2C,
    run: E2CRunConfig,
    step: Callable[[Tensor, Tensor], Tensor] | None = None,
    latents: Tensor | None = None,
) -> Controller:
    """The run's controller on the encoder's means toward :func:`goal_latent`, with the model's
    step (or ``step``, e.g. the model's plus a disturbance estimate).

    ``run.controller`` = ``mpc``: :func:`swing_up_controller`, linearized as
    ``run.linearization`` says — always the model's own Jacobians, so a ``step`` that adds a
    constant to the model's plans with the same ones. ``value``: :func:`value_controller` on the
    box that ``latents [N, Z]`` (encoded training observations) span; required then."""
    pendulum = PendulumPixels(run.image_size, run.action_repeat, run.zoom)
    goal = goal_latent(model, pendulum)
    pendulum.close()
    if run.controller == "value":
        require(
            latents is not None,
            "latents",
            latents,
            "give the encoder's means of training observations: they span the value grid",
        )
        return value_controller(run, step or model.step, goal, latents)
    return swing_up_controller(
        run,
        step or model.step,
        goal,
        run.state_cost,
        linearize=model.linearization if run.linearization == "e2c" else jacobians(model.step),
    )


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
    config: E2CRunConfig, out: str | Path, model_config: E2CConfig | None = None
) -> dict[str, Any]:
    """Collect data, train E2C, control from the bottom; write figures and ``summary.json``.

    ``model_config`` defaults to the ``default`` preset's model; :func:`preset` gives both.
    """
    run = config
    model_config = model_config or preset("default")[1]
    out = Path(out)
    check_run_folder(out, resume=False)  # E2C runs do not resume: checkpoints there refuse it
    if run.controller == "value":  # the grid's size, checked before anything is written
        nodes = run.value_cells**model_config.latent_dim
        require(
            nodes <= MAX_VALUE_NODES,
            "value_cells",
            run.value_cells,
            f"the grid would have value_cells^latent_dim = {nodes:,} nodes; the value controller "
            "is for latents of 2–3 dimensions: use fewer cells or controller = mpc",
        )
    write_run(
        out, "e2c", {"run": run, "model": model_config},
        obs_shape=[2, run.image_size, run.image_size], action_dim=1,
    )  # fmt: skip
    torch.manual_seed(run.seed)
    started = time.perf_counter()
    data = collect_transitions(run, mixed_seed(run.seed, 1))
    collect_seconds = time.perf_counter() - started
    logger.info("collected %d transitions in %.1f s", run.transitions, collect_seconds)
    model, train_seconds = train_model(data, run, model_config, out)
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


def load_model(
    run_dir: str | Path, config: E2CRunConfig | None = None, model_config: E2CConfig | None = None
) -> E2C:
    """The trained model of ``run_dir`` (its latest checkpoint), in eval mode; ``model_config``
    and ``config.image_size`` must be those of the trained run (default: from its run.json)."""
    from latentvi.config import from_dict
    from latentvi.train.checkpoint import load_checkpoint
    from latentvi.train.runs import read_run

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
    figures = _figures(model, data, result, out)
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


def plot_e2c(model: E2C, data: dict[str, torch.Tensor], result: dict, out: Path) -> list[Path]:
    """``reconstructions.png``, ``latent.png`` and ``control.png`` (see the module docstring)
    into ``out``, from transitions ``data`` and a :func:`control` ``result``."""
    return _figures(model, data, result, Path(out))


def _figures(model: E2C, data: dict[str, torch.Tensor], result: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    with torch.no_grad():
        x, u, x_next = data["x"][:8], data["u"][:8], data["x_next"][:8]
        if x_next.dim() == 5:  # K-step data: its first step
            u, x_next = u[:, 0], x_next[:, 0]
        q = model.encode(x)
        reconstruction = model.decode(q.mean).mean
        prediction = model.decode(model.step(q.mean, u)).mean
        rows = torch.cat([x[:, 1:], reconstruction[:, 1:], x_next[:, 1:], prediction[:, 1:]])
        paths = [
            plot_image_grid(
                rows,
                out / "reconstructions.png",
                "rows: x_t, reconstruction, x_{t+1}, prediction (newest frame)",
                columns=8,
            )
        ]
        means = model.encode(data["x"][:3000]).mean.numpy()
    theta = data["theta"][:3000].numpy()
    figure, axis = plt.subplots(figsize=(6, 5))
    if means.shape[1] >= 3:
        figure.delaxes(axis)
        axis = figure.add_subplot(projection="3d")
        points = axis.scatter(means[:, 0], means[:, 1], means[:, 2], c=theta, cmap="twilight", s=3)
    else:
        second = means[:, 1] if means.shape[1] > 1 else np.zeros(len(means))
        points = axis.scatter(means[:, 0], second, c=theta, cmap="twilight", s=3)
    figure.colorbar(points, ax=axis, label="angle θ (rad, 0 upright)")
    axis.set_title("E2C latent means on pixel pendulum")
    paths.append(save_figure(figure, out / "latent.png"))
    strip = result["strip"]
    every = max(1, math.ceil(len(strip) / 20))
    frames = torch.from_numpy(strip[::every]).float() / 255.0
    paths.append(
        plot_image_grid(
            1 - frames,
            out / "control.png",
            f"trial 0, every {every} agent steps (success: {bool(result['success'][0])})",
            columns=len(frames),
        )
    )
    return paths
