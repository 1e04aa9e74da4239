"""Pixel 2-D point navigation to a fixed goal from a fixed start: SOLAR's 2-D navigation task.

The task of Zhang, Vikram, Smith, Abbeel, Johnson & Levine (2019), *SOLAR: Deep Structured
Representations for Model-Based Reinforcement Learning* (ICML), §6 "2D navigation": a point in
the plane, seen from above in small images, is moved by its action toward a goal; the cost is
the squared distance to the goal plus a small action cost, over a fixed horizon, from a fixed
start. The numbers follow the authors' released environment (``parasol``'s point mass): 32×32
images of the square [−3, 3]², 50 steps, the position moved by the action itself, the point kept
inside [−2.8, 2.8]², cost ``‖p − g‖² + 10⁻³‖u‖²``. Ours bounds the action to [−1, 1]² (a move of
at most one unit per axis and step; theirs is unbounded), keeps the point in the box by clipping
(theirs reflects it) and charges the distance after the move (theirs before), so that the last
move counts and the reward is a function of the observation that follows it.

``latentvi/PointNav-v0`` (:func:`register_navigation`, called by ``latentvi.envs.register``):

* **state** the position ``p ∈ [−2.8, 2.8]²``; a reset puts it at ``start`` = (−2, −2) exactly
  (``start_noise`` > 0 adds a uniform offset drawn from the reset seed);
* **action** ``u ∈ [−1, 1]²`` (clipped): ``p ← clip(p + u, ±2.8)``;
* **reward** ``−(‖p − g‖² + 10⁻³‖u‖²)`` with the goal ``g`` = (0, 0), ``p`` after the move;
* **episode** 50 steps (Gymnasium's ``TimeLimit``: truncation), never terminated early;
  ``info["success"]`` says whether ``p`` lies in the goal region ``‖p − g‖ < goal_radius``
  (0.4); an episode succeeds when it ends there; ``info["distance"]`` is ``‖p − g‖``;
* **observation** the position ``[2]`` (float32); ``render()`` (``render_mode="rgb_array"``)
  draws the arena from above as ``uint8 [screen_dim, screen_dim, 3]``: black background, the
  goal region a dark green disc, the point a white disc (radius 0.35, ~4 pixels across at 32×32)
  drawn over it, anti-aliased so that moves smaller than a pixel change the image (grayscale:
  goal 70, point 255). The point is the brightest and largest thing a reconstruction loss can
  gain from: drawn dim and small (red, radius 0.25: 2–3 pixels of gray 76), PlaNet's world
  model reconstructed the goal alone and never saw the point.
  :class:`latentvi.envs.pixels.PixelObservation` sets ``screen_dim`` to its output size, so
  ``make_env("latentvi/PointNav-v0", pixels=True, size=32)`` draws 32×32 frames directly.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

__all__ = [
    "ACTION_COST",
    "ENV_ID",
    "GOAL",
    "MAX_EPISODE_STEPS",
    "START",
    "NavigationEnv",
    "draw",
    "register_navigation",
]

ENV_ID = "latentvi/PointNav-v0"
MAX_EPISODE_STEPS = 50
START = (-2.0, -2.0)
GOAL = (0.0, 0.0)
ACTION_COST = 1e-3
BOUND = 2.8  # the point stays in [-BOUND, BOUND]²
VIEW = 3.0  # the image shows [-VIEW, VIEW]²
POINT_RADIUS = 0.35
GOAL_COLOUR = np.array([0, 120, 0], np.float32)
POINT_COLOUR = np.array([255, 255, 255], np.float32)


def _disc(centres: np.ndarray, centre: np.ndarray, radius: float, pixel: float) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by a disc: 1 inside, 0 outside, linear over one pixel."""
    distance = np.sqrt(((centres - centre) ** 2).sum(-1))
    return np.clip((radius - distance) / pixel + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _centres(size: int) -> np.ndarray:
    """``[size, size, 2]``: the (x, y) of each pixel's centre, row 0 at the top."""
    axis = (np.arange(size) + 0.5) * (2 * VIEW / size) - VIEW
    centres = np.stack(np.meshgrid(axis, axis[::-1]), -1)
    centres.flags.writeable = False
    return centres


def draw(position, goal, goal_radius: float, size: int) -> np.ndarray:
    """The arena seen from above, ``uint8 [size, size, 3]`` (row 0 at y = +3, column 0 at
    x = −3): the goal region a dark green disc, the point a white disc over it."""
    pixel, centres = 2 * VIEW / size, _centres(size)
    goal_cover = _disc(centres, np.asarray(goal, np.float64), goal_radius, pixel)[..., None]
    point_cover = _disc(centres, np.asarray(position, np.float64), POINT_RADIUS, pixel)[..., None]
    image = goal_cover * GOAL_COLOUR
    image = point_cover * POINT_COLOUR + (1 - point_cover) * image
    return np.rint(image).astype(np.uint8)


class NavigationEnv(gym.Env):
    """A point moved by its action toward a fixed goal (module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (Gymnasium's)

    def __init__(
        self,
        render_mode: str | None = None,
        start: tuple[float, float] = START,
        goal: tuple[float, float] = GOAL,
        start_noise: float = 0.0,
        goal_radius: float = 0.4,
        screen_dim: int = 64,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode = {render_mode!r} is invalid: use 'rgb_array' or leave it out"
            )
        for name, point in (("start", start), ("goal", goal)):
            if len(point) != 2 or not all(abs(float(c)) <= BOUND for c in point):
                raise ValueError(f"{name} = {point!r} is invalid: use two numbers in ±{BOUND}")
        if start_noise < 0:
            raise ValueError(f"start_noise = {start_noise!r} is invalid: use >= 0")
        if goal_radius <= 0:
            raise ValueError(f"goal_radius = {goal_radius!r} is invalid: use > 0")
        self.render_mode = render_mode
        self.start = np.asarray(start, np.float64)
        self.goal = np.asarray(goal, np.float64)
        self.start_noise = float(start_noise)
        self.goal_radius = float(goal_radius)
        self.screen_dim = int(screen_dim)
        self.observation_space = gym.spaces.Box(-BOUND, BOUND, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = self.start.copy()

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self.position - self.goal))
        return {"distance": distance, "success": distance < self.goal_radius}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        offset = self.np_random.uniform(-1.0, 1.0, 2) * self.start_noise
        self.position = np.clip(self.start + offset, -BOUND, BOUND)
        return self.position.astype(np.float32), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        self.position = np.clip(self.position + action, -BOUND, BOUND)
        cost = float(((self.position - self.goal) ** 2).sum() + ACTION_COST * (action**2).sum())
        return self.position.astype(np.float32), -cost, False, False, self._info()

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: ``uint8 [screen_dim, screen_dim, 3]``; else None."""
        if self.render_mode != "rgb_array":
            return None
        return draw(self.position, self.goal, self.goal_radius, self.screen_dim)


def register_navigation() -> None:
    """Register ``latentvi/PointNav-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(
            id=ENV_ID,
            entry_point="latentvi.envs.navigation:NavigationEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
