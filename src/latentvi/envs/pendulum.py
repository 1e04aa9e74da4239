"""Gymnasium's Pendulum-v1 as equations, for the planners and checks that need the true model:
the oracle controllers of the E2C benchmark and tests, and the dynamic-programming optimum of the
latent-Q benchmark.

Pendulum-v1 (g = 10, m = l = 1, θ = 0 upright): one step of ``DT`` = 0.05 s under a torque u
clipped to ±``MAX_TORQUE`` is

    θ̇' = clip(θ̇ + (3g/(2l) sin θ + 3/(m l²) u) DT, ±MAX_SPEED),   θ' = θ + θ̇' DT,

and costs ``wrap(θ)² + 0.1 θ̇² + 0.001 u²`` of the state before the step (the reward is its
negative; ``wrap`` maps to [−π, π)). ``tests/envs/test_pendulum.py`` checks both against the
environment. The functions take NumPy arrays or torch tensors (differentiable, for autograd
Jacobians) that broadcast together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DT",
    "GRAVITY",
    "MAX_SPEED",
    "MAX_TORQUE",
    "angle_of",
    "pendulum_step",
    "step_features",
    "step_normalized",
]

DT = 0.05
MAX_SPEED = 8.0
MAX_TORQUE = 2.0
GRAVITY = 10.0
_TORQUE_TERM = 3.0  # 3 / (m l²)


def _clip(value: Any, bound: float) -> Any:
    if isinstance(value, Tensor):
        return value.clamp(-bound, bound)
    return np.clip(value, -bound, bound)


def pendulum_step(
    theta: Any, velocity: Any, torque: Any, repeat: int = 1, gravity: float = GRAVITY
) -> tuple[Any, Any, Any]:
    """``repeat`` environment steps under a held ``torque`` from (θ, θ̇): returns the next θ
    (not wrapped), θ̇ and the summed cost. Arrays or tensors broadcast together; ``[*] -> [*]``.
    ``gravity`` other than Pendulum-v1's g = 10 gives a deliberately wrong model (how robust a
    planner is to model error)."""
    xp = torch if isinstance(theta, Tensor) else np
    torque = _clip(torque, MAX_TORQUE)
    gravity_term = 1.5 * gravity  # 3g / (2l), l = 1
    cost = 0.0
    for _ in range(repeat):
        wrapped = (theta + np.pi) % (2 * np.pi) - np.pi
        cost = cost + wrapped**2 + 0.1 * velocity**2 + 0.001 * torque**2
        velocity = velocity + (gravity_term * xp.sin(theta) + _TORQUE_TERM * torque) * DT
        velocity = _clip(velocity, MAX_SPEED)
        theta = theta + velocity * DT
    return theta, velocity, cost


def step_features(x: Tensor, torque: Tensor, repeat: int = 1, gravity: float = GRAVITY) -> Tensor:
    """The same steps on the observation features ``x = (cos θ, sin θ, θ̇)``: ``x [*N, 3]``,
    ``torque [*N, 1]`` -> ``[*N, 3]`` (differentiable; what a planner on the true state uses)."""
    theta, velocity, _ = pendulum_step(angle_of(x), x[..., 2], torque[..., 0], repeat, gravity)
    return torch.stack([torch.cos(theta), torch.sin(theta), velocity], dim=-1)


def step_normalized(x: Tensor, u: Tensor, repeat: int = 1, gravity: float = GRAVITY) -> Tensor:
    """:func:`step_features` under the normalized action ``u = torque / MAX_TORQUE ∈ [−1, 1]``
    ``[*N, 1]`` — the action scale of E2C's data and of the planners run on the true state."""
    return step_features(x, MAX_TORQUE * u, repeat, gravity)


def angle_of(x: Tensor) -> Tensor:
    """θ in (−π, π] from features ``x [*N, 3]`` (or ``[*N, 2]``) = (cos θ, sin θ, ...)."""
    return torch.atan2(x[..., 1], x[..., 0])
