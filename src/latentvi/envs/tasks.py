"""Multimodal demonstration tasks: a 2-D point robot that must pass obstacles to reach a goal.

Two Gymnasium environments, registered under the ``latentvi/`` namespace by :func:`register_envs`
(called when :mod:`latentvi.rl` is imported, the Gymnasium convention for third-party tasks):

* ``latentvi/Obstacle-v0`` (task ``obstacle``): start near (0, −1), goal (0, 1), a disc of radius
  0.35 at the origin in between. It can be passed on the left or on the right: two modes.
* ``latentvi/Passages-v0`` (task ``passages``): a wall across y = 0 with three gaps, at x = −0.6,
  0 and 0.6: three modes.

Observation: the position ``[2]`` (float32). Action: a velocity in ``[−1, 1]²``; the robot moves
``max_speed`` (0.1) times the clipped action per step, checked for collisions at 4 points along the
move. An episode ends with success (within 0.1 of the goal, reward +1), with a collision (reward −1)
or after 60 steps (truncation, by Gymnasium's ``TimeLimit``). ``info`` carries ``success``,
``collision`` and ``mode``: which way the robot passed the obstacles, decided when it first
crosses y = 0 (the index of the interval of ``mode_boundaries`` its x lies in; −1 before).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gymnasium as gym
import numpy as np

__all__ = [
    "MAX_EPISODE_STEPS",
    "POSITION_DIMS",
    "TASKS",
    "Episode",
    "PointNavigationEnv",
    "TaskSpec",
    "make_task",
    "mode_shares",
    "register_envs",
    "rollout",
    "task_spec",
]

MAX_EPISODE_STEPS = 60
POSITION_DIMS = 2
"""The first two observation entries are the position (the goal space of goal-conditioned policies)."""
_SUBSTEPS = 4
RENDER_SIZE = 96  # pixels a side of rgb_array frames


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The geometry of a task: discs ``(cx, cy, r)``, boxes ``(x0, y0, x1, y1)`` and the modes."""

    env_id: str
    discs: tuple[tuple[float, float, float], ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    mode_boundaries: tuple[float, ...]
    mode_names: tuple[str, ...]
    start: tuple[float, float] = (0.0, -1.0)
    goal: tuple[float, float] = (0.0, 1.0)
    start_noise: float = 0.02
    goal_radius: float = 0.1
    max_speed: float = 0.1
    arena: float = 1.2


_WALL = 0.08  # half thickness of the passages wall
_GAP = 0.12  # half width of each passage
TASKS: dict[str, TaskSpec] = {
    "obstacle": TaskSpec(
        env_id="latentvi/Obstacle-v0",
        discs=((0.0, 0.0, 0.35),),
        boxes=(),
        mode_boundaries=(0.0,),
        mode_names=("left", "right"),
    ),
    "passages": TaskSpec(
        env_id="latentvi/Passages-v0",
        discs=(),
        boxes=tuple(
            (x0, -_WALL, x1, _WALL)
            for x0, x1 in (
                (-1.2, -0.6 - _GAP),
                (-0.6 + _GAP, -_GAP),
                (_GAP, 0.6 - _GAP),
                (0.6 + _GAP, 1.2),
            )
        ),
        mode_boundaries=(-0.3, 0.3),
        mode_names=("left", "middle", "right"),
    ),
}


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a task name (``obstacle`` or ``passages``)."""
    if task not in TASKS:
        raise ValueError(f"task = {task!r} is invalid: choose one of {', '.join(TASKS)}")
    return TASKS[task]


class PointNavigationEnv(gym.Env):
    """A point robot in the square ``[−arena, arena]²`` with the obstacles of ``spec``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (Gymnasium's)

    def __init__(self, task: str = "obstacle", render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode = {render_mode!r} is invalid: use 'rgb_array' or leave it out"
            )
        self.render_mode = render_mode
        self.layout = task_spec(task)
        self.task = task
        bound = np.float32(self.layout.arena)
        self.observation_space = gym.spaces.Box(-bound, bound, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.asarray(self.layout.goal, np.float64)
        self._position = np.zeros(2)
        self._mode = -1

    @property
    def num_modes(self) -> int:
        return len(self.layout.mode_names)

    def collides(self, points: np.ndarray) -> np.ndarray:
        """Whether each of ``points [..., 2]`` lies inside an obstacle: ``[...]`` bool."""
        hit = np.zeros(points.shape[:-1], bool)
        for cx, cy, r in self.layout.discs:
            hit |= (points[..., 0] - cx) ** 2 + (points[..., 1] - cy) ** 2 < r * r
        for x0, y0, x1, y1 in self.layout.boxes:
            inside_x = (points[..., 0] > x0) & (points[..., 0] < x1)
            hit |= inside_x & (points[..., 1] > y0) & (points[..., 1] < y1)
        return hit

    def mode_of(self, x: float) -> int:
        """The mode index of crossing y = 0 at horizontal position ``x``."""
        return int(np.searchsorted(self.layout.mode_boundaries, x))

    def _observation(self) -> np.ndarray:
        return self._position.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        noise = self.np_random.uniform(-1, 1, 2) * self.layout.start_noise
        self._position = np.asarray(self.layout.start, np.float64) + noise
        self._mode = -1
        return self._observation(), {"success": False, "collision": False, "mode": -1}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        start = self._position
        end = np.clip(start + self.layout.max_speed * action, -self.layout.arena, self.layout.arena)
        fractions = np.linspace(1 / _SUBSTEPS, 1, _SUBSTEPS)[:, None]
        collision = bool(self.collides(start + fractions * (end - start)).any())
        if self._mode < 0 and start[1] < 0 <= end[1]:
            crossing = start[0] + (end[0] - start[0]) * (-start[1]) / (end[1] - start[1])
            self._mode = self.mode_of(crossing)
        self._position = end
        success = not collision and bool(np.linalg.norm(end - self.goal) < self.layout.goal_radius)
        reward = 1.0 if success else (-1.0 if collision else 0.0)
        info = {"success": success, "collision": collision, "mode": self._mode}
        return self._observation(), reward, success or collision, False, info

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: the arena as ``uint8 [RENDER_SIZE, RENDER_SIZE, 3]``,
        obstacles grey, the goal green, the robot red (y up); otherwise None."""
        if self.render_mode != "rgb_array":
            return None
        arena = self.layout.arena
        centres = (np.arange(RENDER_SIZE) + 0.5) / RENDER_SIZE * 2 * arena - arena
        x, y = np.meshgrid(centres, centres[::-1])  # row 0 at the top: y = +arena
        points = np.stack([x, y], -1)
        image = np.full((RENDER_SIZE, RENDER_SIZE, 3), 255, np.uint8)
        image[self.collides(points)] = (150, 150, 150)
        near_goal = np.linalg.norm(points - self.goal, axis=-1) < self.layout.goal_radius
        image[near_goal] = (40, 170, 60)
        robot = np.linalg.norm(points - self._position, axis=-1) < 8 * arena / RENDER_SIZE
        image[robot] = (210, 40, 40)
        return image


def register_envs() -> None:
    """Register every task under ``latentvi/`` with Gymnasium (idempotent)."""
    for name, spec in TASKS.items():
        if spec.env_id not in gym.registry:
            gym.register(
                id=spec.env_id,
                entry_point="latentvi.envs.tasks:PointNavigationEnv",
                kwargs={"task": name},
                max_episode_steps=MAX_EPISODE_STEPS,
            )


def make_task(task: str) -> gym.Env:
    """``gymnasium.make`` of a task name (``obstacle`` or ``passages``), time limit included."""
    register_envs()
    return gym.make(task_spec(task).env_id)


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode: ``states [T, S]`` (where each action was taken), ``actions [T, A]``, the final
    state ``[S]``, and the outcome."""

    states: np.ndarray
    actions: np.ndarray
    final_state: np.ndarray
    success: bool
    collision: bool
    mode: int

    @property
    def positions(self) -> np.ndarray:
        """The whole path ``[T + 1, 2]`` of positions, for plots."""
        return np.concatenate([self.states, self.final_state[None]], 0)[:, :POSITION_DIMS]


def rollout(env: gym.Env, controller, seed: int) -> Episode:
    """Run ``controller`` (``reset(observation)``, ``act(observation) -> action``) for one
    episode of ``env`` reset with ``seed``."""
    observation, info = env.reset(seed=seed)
    controller.reset(observation)
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    done = False
    while not done:
        action = np.asarray(controller.act(observation), np.float32).reshape(env.action_space.shape)
        states.append(observation)
        actions.append(action)
        observation, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return Episode(
        states=np.stack(states),
        actions=np.clip(np.stack(actions), -1, 1),
        final_state=observation,
        success=bool(info["success"]),
        collision=bool(info["collision"]),
        mode=int(info["mode"]),
    )


def mode_shares(episodes: Sequence[Episode], num_modes: int) -> list[float]:
    """The share of ``episodes`` that took each mode (those that never crossed count in none)."""
    modes = np.array([e.mode for e in episodes])
    return [float(np.mean(modes == m)) for m in range(num_modes)]
