"""DeepMind Control Suite tasks (Tassa et al. 2018) as Gymnasium environments with pixel observations.

:func:`register_dmc` (called by :func:`latentvi.envs.pixels.make_env` for ``dmc/...`` ids, or by
hand) registers ``dmc/<domain>-<task>-v0`` for the tasks in :data:`TASKS` — e.g.
``dmc/cartpole-swingup-v0``, ``dmc/reacher-easy-v0``, ``dmc/cheetah-run-v0``,
``dmc/pendulum-swingup-v0``. Nothing heavy is imported until an environment is made.

:class:`DMCEnv`:

* observation: the frame ``uint8 [size, size, 3]`` from ``camera`` (default 64×64, camera 0), or with
  ``from_pixels=False`` the task's observation dict flattened to ``float32 [D]``;
* action space: ``Box(minimum, maximum)`` of the task's action spec (float32);
* reward: the time step's reward (0 for the first step); ``terminated`` when the episode ends with
  discount 0 (a terminal state), ``truncated`` when it ends with discount > 0 (the time limit:
  1000 physics-control steps for the suite's tasks);
* ``reset(seed=s)`` reseeds the task's random state, so a seed fixes the episode.

Rendering is headless through MuJoCo's EGL backend (``MUJOCO_GL=egl``, the default set here
unless the variable is already set; ``osmesa`` is the software alternative), with shadows
(``shadowsize = 0``), reflections and multisampling turned off: several times faster on a CPU.
Action repeat is :class:`latentvi.envs.pixels.ActionRepeat` (``make_env(..., action_repeat=R)``).
Needs the ``dmc`` extra: ``pip install 'latentvi[dmc]'`` (mujoco 3.17.0, dm_control 1.0.50).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

__all__ = ["TASKS", "DMCEnv", "register_dmc"]

TASKS: tuple[tuple[str, str], ...] = (
    ("cartpole", "swingup"),
    ("cartpole", "balance"),
    ("reacher", "easy"),
    ("reacher", "hard"),
    ("cheetah", "run"),
    ("pendulum", "swingup"),
    ("walker", "walk"),
    ("finger", "spin"),
    ("cup", "catch"),
    ("ball_in_cup", "catch"),
)
"""(domain, task) pairs registered as ``dmc/<domain>-<task>-v0`` (``cup`` is ball_in_cup)."""

_DOMAIN_ALIASES = {"cup": "ball_in_cup"}


def register_dmc() -> None:
    """Register ``dmc/<domain>-<task>-v0`` for every pair in :data:`TASKS` (idempotent, cheap)."""
    for domain, task in TASKS:
        env_id = f"dmc/{domain}-{task}-v0"
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="latentvi.envs.dmc:DMCEnv",
                kwargs={"domain": _DOMAIN_ALIASES.get(domain, domain), "task": task},
            )


def _load_suite():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except ImportError as error:
        raise gym.error.DependencyNotInstalled(
            f"dm_control is not installed ({error}); install the dmc extra: "
            "pip install 'latentvi[dmc]' (mujoco==3.17.0, dm_control==1.0.50)"
        ) from None
    return suite


def _flat_size(spec: Any) -> int:
    return int(np.prod(spec.shape)) if spec.shape else 1


class DMCEnv(gym.Env):
    """One DeepMind Control Suite task as a Gymnasium environment (see the module docstring).

    Args:
        domain, task: a suite task, e.g. ``("cartpole", "swingup")``.
        size: the frame's height and width.
        camera: the camera id that draws the frames.
        from_pixels: observe frames (default) or the task's flattened state.
        render_mode: ``"rgb_array"`` (the only mode).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        domain: str,
        task: str,
        size: int = 64,
        camera: int = 0,
        from_pixels: bool = True,
        render_mode: str | None = "rgb_array",
    ) -> None:
        suite = _load_suite()
        if (domain, task) not in suite.ALL_TASKS:
            raise ValueError(
                f"domain, task = {domain!r}, {task!r} is not a DeepMind Control Suite task; "
                f"choose one of {', '.join(f'{d}-{t}' for d, t in suite.ALL_TASKS)}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode = {render_mode!r} is invalid: use 'rgb_array'")
        self.domain, self.task, self.size, self.camera = domain, task, int(size), int(camera)
        self.from_pixels, self.render_mode = from_pixels, render_mode
        self._env = suite.load(domain, task, task_kwargs={"random": 0})
        self._fast_rendering()
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(
            np.asarray(spec.minimum, np.float32) * np.ones(spec.shape, np.float32),
            np.asarray(spec.maximum, np.float32) * np.ones(spec.shape, np.float32),
            dtype=np.float32,
        )
        if from_pixels:
            self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)
        else:
            dim = sum(_flat_size(s) for s in self._env.observation_spec().values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.metadata = dict(self.metadata, render_fps=round(1.0 / self._env.control_timestep()))

    def _fast_rendering(self) -> None:
        model = self._env.physics.model
        model.vis.quality.shadowsize = 0  # no shadow map: the biggest cost of software GL
        model.vis.quality.offsamples = 0  # no multisampling
        model.mat_reflectance[:] = 0  # no reflections (an extra pass per reflective surface)

    def _observation(self, time_step) -> np.ndarray:
        if self.from_pixels:
            return self.render()
        parts = [np.asarray(v, np.float32).reshape(-1) for v in time_step.observation.values()]
        return np.concatenate(parts)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        time_step = self._env.reset()
        return self._observation(time_step), {"discount": 1.0}

    def step(self, action):
        action = np.asarray(action, np.float32).reshape(self.action_space.shape)
        time_step = self._env.step(action)
        reward = float(time_step.reward or 0.0)
        ended = time_step.last()
        discount = float(time_step.discount) if time_step.discount is not None else 1.0
        terminated = bool(ended and discount == 0.0)
        truncated = bool(ended and not terminated)
        info = {"discount": discount}
        return self._observation(time_step), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The frame ``uint8 [size, size, 3]`` from the environment's camera."""
        return self._env.physics.render(self.size, self.size, camera_id=self.camera)

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()
