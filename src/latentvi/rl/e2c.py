"""E2C as an agent: controllers that act on the latent of a trained :class:`~latentvi.models.e2c.E2C`.

Plain functions of a model and the run's control settings (any object with the fields of
:class:`ControlSettings`, e.g. :class:`latentvi.jobs.e2c.E2CRunConfig`):

* :func:`swing_up_controller`: receding-horizon iLQR (:class:`latentvi.control.lqr.MPC`) toward a
  goal latent, optionally also started from the goal's LQR regulator;
* :func:`value_controller`: the greedy policy of value iteration on a grid over the latents of
  the training data (:mod:`latentvi.control.value_iteration`);
* :func:`latent_controller`: the one a run's ``controller`` names, toward :func:`goal_latent`,
  the latent of the upright pendulum; :func:`goal_stability`: how the model sees that goal.

A :data:`Controller` maps latent means ``[N, Z]`` to actions ``[N, 1]`` in [-1, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from latentvi.config import require
from latentvi.control.lqr import MPC, goal_regulator, jacobians
from latentvi.control.value_iteration import Grid, greedy_policy, value_iteration
from latentvi.envs.pendulum_pixels import PendulumPixels, to_input
from latentvi.models.e2c import E2C

__all__ = [
    "ControlSettings",
    "Controller",
    "check_value_grid",
    "goal_latent",
    "goal_stability",
    "latent_controller",
    "swing_up_controller",
    "value_controller",
]

logger = logging.getLogger(__name__)

POLICY_ACTIONS = 21  # the value controller's lookahead actions
MAX_VALUE_NODES = 2_000_000  # 9 actions × 2M nodes × 8 corners of int64 indices ≈ 1.2 GB

Controller = Callable[[Tensor], Tensor]  # latent means [N, Z] -> actions [N, 1] in [-1, 1]


class ControlSettings(Protocol):
    """The fields the controllers read (:class:`latentvi.jobs.e2c.E2CRunConfig` documents them)."""

    image_size: int
    zoom: int
    action_repeat: int
    controller: str
    linearization: str
    horizon: int
    iterations: int
    regulator: bool
    state_cost: float
    action_cost: float
    final_cost: float
    value_cells: int
    value_actions: int
    discount: float


def swing_up_controller(
    run: ControlSettings,
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


def check_value_grid(cells: int, latent_dim: int) -> None:
    """Refuse a value grid of ``cells^latent_dim`` nodes over :data:`MAX_VALUE_NODES`."""
    nodes = cells**latent_dim
    require(
        nodes <= MAX_VALUE_NODES,
        "value_cells",
        cells,
        f"the grid would have value_cells^latent_dim = {nodes:,} nodes; the value controller is "
        "for latents of 2–3 dimensions: use fewer cells or controller = mpc",
    )


def value_controller(
    run: ControlSettings, step: Callable[[Tensor, Tensor], Tensor], goal: Tensor, latents: Tensor
) -> Controller:
    """The greedy policy of the discounted cost-to-go of ``step`` toward ``goal [Z]``
    (:func:`latentvi.control.value_iteration.value_iteration`): the MPC's stage cost
    ``½ state_cost ‖z − g‖² + ½ action_cost u²``, discount ``run.discount``, on a grid of
    ``run.value_cells`` nodes per dimension over the box of ``latents [N, Z]`` widened by a tenth
    of its size on each side; ``run.value_actions`` actions there, 21 in the policy."""
    check_value_grid(run.value_cells, latents.shape[-1])
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
def goal_stability(model: E2C, run: ControlSettings) -> dict[str, Any]:
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


def latent_controller(
    model: E2C,
    run: ControlSettings,
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
