"""Scripted multimodal demonstrators and the demonstration data sets they produce.

A :class:`WaypointDemonstrator` picks one of the task's modes uniformly at random per episode
(pass left or right of the obstacle; take one of three passages), then steers at full speed
straight ahead to a common approach point, where the routes split, and through that mode's
waypoints (shifted together by up to ±0.05 per episode) to the goal, adding Gaussian noise of
standard deviation ``noise`` to every action. :func:`collect_demonstrations` runs it in the
Gymnasium environment and keeps the successful episodes as :class:`Demonstrations`: padded arrays
with one row per episode, from which the policies take single steps, chunks of k actions, or
windows of play.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from latentvi.config import option, require
from latentvi.envs.tasks import POSITION_DIMS, Episode, make_task, rollout, task_spec

__all__ = [
    "MODE_WAYPOINTS",
    "DemoConfig",
    "Demonstrations",
    "WaypointDemonstrator",
    "collect_demonstrations",
]

_APPROACH = (0.0, -0.6)  # every route starts straight ahead: the modes split only here
MODE_WAYPOINTS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "obstacle": ((_APPROACH, (-0.7, 0.0)), (_APPROACH, (0.7, 0.0))),
    "passages": tuple((_APPROACH, (x, -0.3), (x, 0.3)) for x in (-0.6, 0.0, 0.6)),
}
_JITTER = 0.05
_REACHED = 0.12


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """How many demonstrations, and how noisy."""

    demos: int = option(400, "number of demonstration episodes")
    demo_noise: float = option(0.1, "std of the Gaussian noise on each demonstrator action")
    demo_seed: int = option(12345, "seed of the demonstrator and of its episodes' start states")

    def __post_init__(self) -> None:
        require(self.demos >= 2, "demos", self.demos, "use 2 or more demonstrations")
        require(0 <= self.demo_noise <= 1, "demo_noise", self.demo_noise, "use a std in [0, 1]")
        require(self.demo_seed >= 0, "demo_seed", self.demo_seed, "use a non-negative seed")


class WaypointDemonstrator:
    """Steers through one mode's waypoints to the goal; the mode is drawn uniformly per episode."""

    def __init__(self, task: str, noise: float = 0.1, seed: int = 0) -> None:
        self.spec = task_spec(task)
        self.routes = MODE_WAYPOINTS[task]
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.mode = -1
        self._targets: list[np.ndarray] = []

    def reset(self, observation: np.ndarray) -> None:
        self.mode = int(self.rng.integers(len(self.routes)))
        route = np.asarray(self.routes[self.mode], np.float64)
        route[1:] += self.rng.uniform(-_JITTER, _JITTER, (1, 2))  # one shift per episode
        self._targets = [*route, np.asarray(self.spec.goal, np.float64)]

    def act(self, observation: np.ndarray) -> np.ndarray:
        position = np.asarray(observation[:POSITION_DIMS], np.float64)
        while len(self._targets) > 1 and np.linalg.norm(self._targets[0] - position) < _REACHED:
            self._targets.pop(0)
        offset = self._targets[0] - position
        distance = np.linalg.norm(offset)
        speed = min(1.0, distance / self.spec.max_speed)
        action = offset / max(distance, 1e-8) * speed
        return np.clip(action + self.noise * self.rng.standard_normal(2), -1, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class Demonstrations:
    """Episodes padded to a common length T (states repeat the final state, actions are 0).

    Shapes: ``states [E, T, S]`` and ``actions [E, T, A]`` float32, ``final_states [E, S]``,
    ``lengths [E]`` and ``modes [E]`` int64.
    """

    states: Tensor
    actions: Tensor
    final_states: Tensor
    lengths: Tensor
    modes: Tensor

    def __post_init__(self) -> None:
        s, a = self.states, self.actions
        if s.dim() != 3 or a.dim() != 3 or s.shape[:2] != a.shape[:2]:
            raise ValueError(
                f"states have shape {tuple(s.shape)} and actions {tuple(a.shape)}: pass states "
                "[E, T, S] and actions [E, T, A] with the same episodes E and steps T"
            )
        episodes, steps, state_dim = s.shape
        for name in ("final_states", "lengths", "modes"):
            value = getattr(self, name)
            if value.shape[0] != episodes:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)} but there are {episodes} episodes: "
                    f"pass one row of {name} per episode"
                )
        if tuple(self.final_states.shape) != (episodes, state_dim):
            raise ValueError(
                f"final_states has shape {tuple(self.final_states.shape)}: pass [E, S] = "
                f"[{episodes}, {state_dim}]"
            )
        if self.lengths.min() < 1 or self.lengths.max() > steps:
            raise ValueError(f"lengths must lie in [1, {steps}] (the padded length T)")

    @classmethod
    def from_episodes(cls, episodes: list[Episode]) -> Demonstrations:
        require(len(episodes) >= 1, "episodes", len(episodes), "pass at least one episode")
        steps = max(len(e.actions) for e in episodes)
        states, actions = [], []
        for e in episodes:
            pad = steps - len(e.actions)
            states.append(np.concatenate([e.states, np.repeat(e.final_state[None], pad, 0)]))
            actions.append(np.concatenate([e.actions, np.zeros((pad, e.actions.shape[1]))]))
        return cls(
            states=torch.as_tensor(np.stack(states), dtype=torch.float32),
            actions=torch.as_tensor(np.stack(actions), dtype=torch.float32),
            final_states=torch.as_tensor(np.stack([e.final_state for e in episodes])).float(),
            lengths=torch.tensor([len(e.actions) for e in episodes]),
            modes=torch.tensor([e.mode for e in episodes]),
        )

    @property
    def num_episodes(self) -> int:
        return self.states.shape[0]

    @property
    def state_dim(self) -> int:
        return self.states.shape[-1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[-1]

    def _valid(self) -> Tensor:
        """``[E, T]`` bool: which padded steps are real."""
        return torch.arange(self.states.shape[1]) < self.lengths[:, None]

    def transitions(self) -> tuple[Tensor, Tensor]:
        """Every real step: ``(states [N, S], actions [N, A])``."""
        valid = self._valid()
        return self.states[valid], self.actions[valid]

    def chunks(self, k: int) -> tuple[Tensor, Tensor]:
        """Every real step with the next ``k`` actions: ``(states [N, S], actions [N, k·A])``
        (past an episode's end the actions are the padding zeros: stay put at the goal)."""
        padded = torch.cat(
            [self.actions, self.actions.new_zeros(self.num_episodes, k, self.action_dim)], 1
        )
        windows = padded.unfold(1, k, 1)[:, : self.states.shape[1]]  # (E, T, A, k)
        valid = self._valid()
        return self.states[valid], windows.transpose(-1, -2)[valid].flatten(-2)

    def windows(self, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """Windows of play starting at every real step, with their episode's final position as
        the goal: ``(states [N, W, S], actions [N, W, A], goals [N, 2])`` for ``W = length``."""
        pad = self.final_states[:, None].expand(-1, length, -1)
        states = torch.cat([self.states, pad], 1).unfold(1, length, 1)[:, : self.states.shape[1]]
        zeros = self.actions.new_zeros(self.num_episodes, length, self.action_dim)
        actions = torch.cat([self.actions, zeros], 1).unfold(1, length, 1)
        actions = actions[:, : self.states.shape[1]]
        valid = self._valid()
        goals = self.final_states[:, None, :POSITION_DIMS].expand(-1, self.states.shape[1], -1)
        return (
            states.transpose(-1, -2)[valid],
            actions.transpose(-1, -2)[valid],
            goals[valid],
        )


def collect_demonstrations(task: str, config: DemoConfig | None = None) -> Demonstrations:
    """Run the scripted demonstrator for ``config.demos`` episodes of ``task``; keep the
    successful ones (raises if fewer than half succeed: the noise is too large)."""
    config = config or DemoConfig()
    env = make_task(task)
    demonstrator = WaypointDemonstrator(task, config.demo_noise, config.demo_seed)
    episodes = [rollout(env, demonstrator, config.demo_seed + i) for i in range(config.demos)]
    successes = [e for e in episodes if e.success]
    require(
        len(successes) >= max(2, len(episodes) // 2),
        "demo_noise",
        config.demo_noise,
        f"only {len(successes)} of {len(episodes)} demonstrations succeeded; lower the noise",
    )
    return Demonstrations.from_episodes(successes)
