"""Pixel Pendulum-v1 whose state can be set: the environment of the E2C experiment.

:class:`PendulumPixels` draws the pendulum at any angle (Gymnasium's renderer, torque arrow hidden)
and moves it by Pendulum-v1's own equations (:func:`latentvi.envs.pendulum.pendulum_step`), so data
can start anywhere on the circle. :func:`to_input` turns stacked frames into the model's input and
:func:`wrap` wraps angles.
"""

from __future__ import annotations

import numpy as np
import torch

from latentvi.config import check_positive_int
from latentvi.envs.pendulum import pendulum_step
from latentvi.envs.pixels import make_env

__all__ = ["PendulumPixels", "to_input", "wrap"]


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
