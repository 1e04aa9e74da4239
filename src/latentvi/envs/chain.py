"""A few-state chain seen only through pixels: a task a correct agent solves in seconds.

``latentvi/PixelChain-v0`` and ``latentvi/PixelChainContinuous-v0`` (registered by
:func:`latentvi.envs.pixels.make_env`): ``n`` cells in a
row, the agent starts in cell 0 and the episode ends when it reaches cell ``n − 1``. Each step
costs −0.1; reaching the goal pays +1. Actions: ``Discrete(2)`` or, with ``continuous=True``,
``Box(−1, 1, (1,))`` (a > 0 counts as action 1). Action 1 moves right in even cells and left in
odd ones, action 0 the opposite — so no constant action reaches the goal, and the agent has to
read its cell off the pixels. Episodes are truncated after ``max_steps`` steps. The observation
is an image ``uint8 [size, size, 1]`` (Gymnasium's height-width-channel layout): the cells are
columns, the agent's is bright, the goal's dim.

The optimal undiscounted return is ``1 − 0.1·(n − 2)`` (``n − 1`` steps right); a constant
policy oscillates between cells 0 and 1 and scores ``−0.1 · max_steps``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = ["PixelChainEnv", "optimal_return"]

STEP_COST = 0.1
GOAL_REWARD = 1.0


def optimal_return(n: int) -> float:
    """The best achievable undiscounted return of a chain of ``n`` cells."""
    return GOAL_REWARD - STEP_COST * (n - 2)


class PixelChainEnv(gym.Env):
    """See the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        n: int = 5,
        size: int = 16,
        max_steps: int = 10,
        continuous: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if n < 2 or size < n:
            raise ValueError(f"n = {n}, size = {size} is invalid: use 2 <= n <= size")
        self.n, self.size, self.max_steps = n, size, max_steps
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 1), np.uint8)
        if continuous:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        else:
            self.action_space = gym.spaces.Discrete(2)
        self.continuous = continuous
        self.position = 0
        self.steps = 0

    def _image(self) -> np.ndarray:
        image = np.zeros((self.size, self.size, 1), dtype=np.uint8)
        edges = np.linspace(0, self.size, self.n + 1).round().astype(int)
        image[:, edges[-2] : edges[-1]] = 60  # the goal cell
        image[:, edges[self.position] : edges[self.position + 1]] = 255
        return image

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.position, self.steps = 0, 0
        return self._image(), {}

    def step(self, action):
        one = float(np.asarray(action).reshape(-1)[0]) > 0 if self.continuous else action == 1
        right = one == (self.position % 2 == 0)
        self.position = min(self.n - 1, self.position + 1) if right else max(0, self.position - 1)
        self.steps += 1
        terminated = self.position == self.n - 1
        reward = GOAL_REWARD if terminated else -STEP_COST
        truncated = not terminated and self.steps >= self.max_steps
        return self._image(), reward, terminated, truncated, {}

    def render(self):
        return np.repeat(self._image(), 3, axis=-1)
