"""The parts of :class:`~latentvi.train.env_loop.EnvLoop` that differ between agents: where
experience is stored, and when the loop collects and updates.

Storage (``holds_run(out)``, ``open(env, out, seed)``, ``checkpoint_state()``,
``restore(loaded checkpoint, counters)``):

- :class:`ReplayStorage`: transitions in a :class:`~latentvi.data.replay.ReplayBuffer` (frame
  stacks stored once), saved whole in each checkpoint;
- :class:`EpisodeStorage`: finished episodes in ``RUN/episodes``
  (:class:`~latentvi.data.episodes.EpisodeStore`); a checkpoint keeps the chunk sampler's state
  and the episode count, and resume drops the episodes written after it.

Schedules (``initial_state()``, ``train(loop)``, ``play(loop, env, seed) -> return | None``):

- :class:`StepSchedule` (latent-Q): agent steps inside episodes; uniform random actions for the
  first ``learning_starts`` environment steps; ``gradient_steps`` updates (a fresh batch each)
  every ``update_every`` agent steps (Stable-Baselines3's ``gradient_steps`` per ``train_freq``);
  training means logged every ``log_every`` environment steps; periodic checkpoints at the end of
  the first episode after each ``checkpoint_every`` steps, so a run resumed from one is identical,
  on CPU, to one that never stopped (a checkpoint taken on a stop request may fall inside an
  episode; the resumed run starts a new episode there).
- :class:`EpisodeSchedule` (PlaNet, Dreamer, SLAC; Hafner et al. 2019): ``seed_episodes``
  episodes of uniform random actions, then until the budget: ``train_steps`` updates on random
  chunks of the stored episodes, one episode with the agent acting under exploration noise
  (actions in ``[-1, 1]``, rescaled to the environment's bounds), one row of metrics; evaluation
  and checkpoints between episodes. A stop request between updates keeps the position in the
  block, one inside an episode drops the episode and restores the random state from before it,
  so a resumed run is identical to one that never stopped.

Every episode's reset is seeded from (seed, episode number).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.data.episodes import EpisodeRunner, EpisodeStore
from latentvi.data.replay import ReplayBuffer, bytes_per_slot
from latentvi.envs.pixels import newest_frame
from latentvi.train.env_loop import next_multiple
from latentvi.train.rng import capture_rng_state, mixed_seed, restore_rng_state

__all__ = [
    "EpisodeSchedule",
    "EpisodeStorage",
    "ReplayStorage",
    "StepSchedule",
    "new_replay_buffer",
    "play_episode",
    "random_action",
]

logger = logging.getLogger(__name__)


# --- storage -----------------------------------------------------------------------------------
def new_replay_buffer(env, capacity: int, stack: int, seed: int) -> ReplayBuffer:
    """An empty buffer for ``env``'s observations (``stack`` frames each) and actions."""
    space = env.observation_space
    frame_channels = space.shape[0] // stack
    discrete = hasattr(env.action_space, "n")
    return ReplayBuffer(
        capacity,
        (frame_channels, *space.shape[1:]),
        stack=stack,
        frame_dtype=space.dtype,
        action_shape=() if discrete else env.action_space.shape,
        action_dtype=np.int64 if discrete else np.float32,
        seed=seed,
    )


class ReplayStorage:
    """Transitions in a replay buffer of ``capacity`` frames (``stack`` frames per observation)."""

    def __init__(self, capacity: int, stack: int) -> None:
        self.capacity, self.stack = capacity, stack
        self.buffer: ReplayBuffer | None = None

    options = ("--buffer-size",)

    @staticmethod
    def holds_run(out: Path) -> bool:
        return False  # the buffer lives in the checkpoints

    def projected_bytes(self, env, run) -> tuple[int, str]:
        """Bytes of the buffer :meth:`open` will allocate, and what it is."""
        space, discrete = env.observation_space, hasattr(env.action_space, "n")
        frame = (space.shape[0] // self.stack, *space.shape[1:])
        slot = bytes_per_slot(frame, space.dtype, () if discrete else env.action_space.shape,
                              np.int64 if discrete else np.float32)  # fmt: skip
        return self.capacity * slot, f"a replay buffer of {self.capacity} frames"

    def open(self, env, out: Path, seed: int) -> None:
        self.buffer = new_replay_buffer(env, self.capacity, self.stack, seed)
        self.frame_channels = self.buffer.frame_shape[0]

    def checkpoint_state(self) -> dict[str, Any]:
        return {"replay": self.buffer.state_dict()}

    def restore(self, loaded: dict[str, Any], counters: dict[str, Any]) -> None:
        self.buffer.load_state_dict(loaded["replay"])

    def __len__(self) -> int:
        return len(self.buffer)

    def start(self, obs) -> None:
        """A new episode from its first observation."""
        self.buffer.start(newest_frame(obs, self.frame_channels))

    def add(self, action, reward, obs, terminated: bool, truncated: bool) -> None:
        self.buffer.add(action, reward, newest_frame(obs, self.frame_channels), terminated,
                        truncated)  # fmt: skip

    def sample(self, batch_size: int):
        return self.buffer.sample(batch_size)


class EpisodeStorage:
    """Finished episodes in ``RUN/episodes``; chunks of ``chunk_length`` steps for updates."""

    FOLDER = "episodes"

    def __init__(self) -> None:
        self.store: EpisodeStore | None = None

    options = ("--steps (stored episodes are kept in memory)", "--image-size")

    @classmethod
    def holds_run(cls, out: Path) -> bool:
        return any((out / cls.FOLDER).glob("episode-*.npz"))

    @staticmethod
    def projected_bytes(env, run) -> tuple[int, str]:
        """Bytes of the episodes a run of ``run.steps`` environment steps keeps in memory
        (frames as observed, float32 actions and rewards, bool terminals; one more frame per
        episode), and what they are: the budget's agent steps in episodes of the environment's
        length (the last episode may run past the budget: not counted)."""
        steps = -(-run.steps // run.action_repeat)
        limit = env.spec.max_episode_steps if env.spec is not None else None
        length = -(-limit // run.action_repeat) if limit else steps
        episodes = -(-steps // length)
        space = env.observation_space
        frame = int(np.prod(space.shape, dtype=np.int64)) * np.dtype(space.dtype).itemsize
        transition = 4 * int(np.prod(env.action_space.shape, dtype=np.int64)) + 4 + 1
        what = f"{episodes} episodes of {steps} steps in all of frames {tuple(space.shape)}"
        return (steps + episodes) * frame + steps * transition, what

    def open(self, env, out: Path, seed: int) -> None:
        self.store = EpisodeStore(
            out / self.FOLDER, seed=seed, frame_shape=env.observation_space.shape,
            action_shape=env.action_space.shape,
            source="the run's environment (--env, --image-size, --grayscale)",
        )  # fmt: skip

    def checkpoint_state(self) -> dict[str, Any]:
        return {"sampler": self.store.sampler_state()}

    def restore(self, loaded: dict[str, Any], counters: dict[str, Any]) -> None:
        removed = self.store.discard_after(counters["episodes"])
        if removed:
            logger.info("dropped %d episodes written after the checkpoint", removed)
        self.store.load_sampler_state(loaded["sampler"])

    def __len__(self) -> int:
        return len(self.store)

    def add(self, episode) -> None:
        self.store.add(episode)

    def sample(self, batch_size: int, length: int):
        return self.store.sample(batch_size, length)


# --- schedules ---------------------------------------------------------------------------------
def random_action(space, generator: np.random.Generator):
    """A uniform random action of a Discrete or Box space."""
    if hasattr(space, "n"):
        return int(generator.integers(space.n))
    return generator.uniform(space.low, space.high).astype(np.float32)


@torch.no_grad()
def play_episode(env, agent, seed: int, should_stop: Callable[[], bool] | None = None):
    """The undiscounted return of one episode of ``agent.act(obs, explore=False)`` in the
    environment's own actions; None when ``should_stop()`` turned true before a step."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        if should_stop is not None and should_stop():
            return None
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs, explore=False))
        total += float(reward)
        done = terminated or truncated
    return total


def _explore(agent, obs, agent_steps: int):
    return agent.act(obs, explore=True)


def _add(window: dict[str, list[float]], values: dict) -> None:
    for key, value in values.items():
        window.setdefault(key, []).append(float(value))


@dataclasses.dataclass
class StepSchedule:
    """``gradient_steps`` updates every ``update_every`` agent steps (module docstring).
    ``explore(agent, obs, agent_steps)`` picks a training action after ``learning_starts``
    (default: ``agent.act(obs, explore=True)``)."""

    learning_starts: int
    update_every: int
    batch_size: int
    log_every: int
    explore: Callable[[Any, Any, int], Any] = _explore
    gradient_steps: int = 1

    def initial_state(self) -> dict[str, Any]:
        return {"agent_steps": 0}

    def play(self, loop, env, seed: int) -> float | None:
        return play_episode(env, loop.agent, seed, loop.stop.__bool__)

    def train(self, loop) -> None:
        state, run, env, storage = loop.state, loop.run, loop.env, loop.storage
        state.setdefault("next_log", self.log_every)
        state.setdefault("window", {})
        window = state["window"]
        done = True
        while state["env_steps"] < run.steps:
            loop.stop_if_requested()
            loop.evaluate_if_due()
            if done:
                loop.checkpoint_if_due()  # an episode boundary
                obs, _ = env.reset(seed=mixed_seed(run.seed, 0, state["episodes"]))
                storage.start(obs)
                state["episode_return"], done = 0.0, False
            if state["env_steps"] < self.learning_starts:
                action = random_action(env.action_space, loop.generator)
            else:
                action = self.explore(loop.agent, obs, state["agent_steps"])
            obs, reward, terminated, truncated, info = env.step(action)
            storage.add(action, reward, obs, terminated, truncated)
            state["agent_steps"] += 1
            loop.advance(info.get("env_steps", 1))
            state["episode_return"] += float(reward)
            if terminated or truncated:
                done = True
                state["episodes"] += 1
                _add(window, {"train/episode_return": state["episode_return"]})
            due = state["agent_steps"] % self.update_every == 0
            # len(storage) scans the buffer (O(its size)): only asked when a round is due
            if (
                due
                and state["env_steps"] >= self.learning_starts
                and len(storage) >= self.batch_size
            ):
                for _ in range(self.gradient_steps):
                    _add(window, loop.update(storage.sample(self.batch_size)))
            if state["env_steps"] >= state["next_log"]:
                row = {k: sum(v) / len(v) for k, v in window.items()}
                row["perf/env_steps_per_second"] = state["env_steps"] / max(loop.elapsed(), 1e-9)
                loop.log(row)
                window.clear()
                state["next_log"] = next_multiple(state["env_steps"], self.log_every)


@dataclasses.dataclass
class EpisodeSchedule:
    """Seed episodes, then ``train_steps`` updates before each collected episode (module
    docstring); updates sample ``batch_size`` chunks of ``chunk_length`` steps."""

    seed_episodes: int
    train_steps: int
    batch_size: int
    chunk_length: int

    def initial_state(self) -> dict[str, Any]:
        return {"updates": 0, "timing": {"model": 0.0, "env": 0.0, "act": 0.0}}

    def play(self, loop, env, seed: int) -> float | None:
        runner = EpisodeRunner(env, loop.state["timing"])
        result = runner.run(seed, loop.agent, explore=False, should_stop=loop.stop.__bool__)
        return None if result is None else result[1]

    def train(self, loop) -> None:
        state, run, storage = loop.state, loop.run, loop.storage
        # where a stopped run was: after an episode (to evaluate / checkpoint) or in a block
        state.setdefault("phase", "update")
        state.setdefault("block_updates", 0)
        state.setdefault("window", {})
        timing = state["timing"]
        while len(storage) < self.seed_episodes and state["env_steps"] < run.steps:
            loop.stop_if_requested()
            step = state["env_steps"]  # a seed episode's return is logged at its first step
            loop.log({"train/episode_return": self._collect(loop, None, explore=False)}, step)
        while True:
            if state["phase"] == "review":
                loop.evaluate_if_due()
                loop.checkpoint_if_due()
                state["phase"] = "update"
            if state["env_steps"] >= run.steps:
                break
            window = state["window"]
            began = time.perf_counter()
            while state["block_updates"] < self.train_steps:
                loop.stop_if_requested()
                _add(window, loop.update(storage.sample(self.batch_size, self.chunk_length)))
                state["block_updates"] += 1
            timing["model"] += time.perf_counter() - began
            loop.stop_if_requested()
            episode_return = self._collect(loop, loop.agent, explore=True)
            row = {key: float(np.mean(values)) for key, values in window.items()}
            row["train/episode_return"] = episode_return
            row["perf/updates"] = state["updates"]
            row["perf/env_steps_per_second"] = state["env_steps"] / max(loop.elapsed(), 1e-9)
            busy = max(sum(timing.values()), 1e-9)
            row.update({f"perf/share_{key}": value / busy for key, value in timing.items()})
            loop.log(row)
            state["block_updates"], state["window"], state["phase"] = 0, {}, "review"

    def _collect(self, loop, agent, explore: bool) -> float:
        """One episode into the storage; its return. A stop request drops the episode and puts
        the random state back as it was before it, then stops the run."""
        state = loop.state
        before = capture_rng_state(), loop.generator.bit_generator.state
        runner = EpisodeRunner(loop.env, state["timing"])
        seed = mixed_seed(loop.run.seed, 0, state["episodes"])
        result = runner.run(seed, agent, explore, loop.generator, should_stop=loop.stop.__bool__)
        if result is None:
            restore_rng_state(before[0])
            loop.generator.bit_generator.state = before[1]
            loop.stop_if_requested()
        episode, total, taken = result
        loop.storage.add(episode)
        state["episodes"] += 1
        loop.advance(taken)
        return total
