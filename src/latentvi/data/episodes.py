"""Finished episodes on disk, and random fixed-length chunks of them for sequence models.

Each episode is one ``.npz`` file (numpy's zip of ``.npy`` arrays, read with
``allow_pickle=False``) in the store's folder, named ``episode-000012-100.npz`` (index, number of
steps T), holding::

    obs       uint8   [T+1, C, H, W]   o_0 (after the reset) … o_T
    action    float32 [T, A]           a_t, taken in o_t
    reward    float32 [T]              r_t, received for taking a_t in o_t
    terminal  bool    [T]              whether o_{t+1} is a terminal state (no value after it)

A file is written to a hidden temporary name, flushed, fsynced and renamed into place, so a crash
leaves either the whole episode or none of it. A new :class:`EpisodeStore` on the same folder loads
every episode found there (a truncated or corrupt file raises ``ValueError`` naming it).

:meth:`EpisodeStore.sample` returns chunks of L consecutive steps in the alignment of
:meth:`latentvi.models.ssm.WorldModel.loss` — each observation with what led to it::

    obs[i]      = o_{s+i}
    action[i]   = a_{s+i−1}   (zeros where s+i = 0: nothing led to the first observation)
    reward[i]   = r_{s+i−1}   (0 where s+i = 0)
    terminal[i] = whether o_{s+i} is terminal
    first[i]    = whether s+i = 0 (the chunk starts at the episode's reset)

for a start s drawn uniformly over all L-step windows of all stored episodes (every window equally
likely, so long episodes are not under-sampled).
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvi.config import check_positive_int
from latentvi.train.storage import replace_file

__all__ = ["Episode", "EpisodeRunner", "EpisodeStore", "load_episode", "save_episode"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^episode-(\d{6})-(\d+)\.npz$")
_KEYS = ("obs", "action", "reward", "terminal")

Episode = dict[str, np.ndarray]


def _check_episode(episode: Episode, where: str) -> Episode:
    missing = [key for key in _KEYS if key not in episode]
    if missing:
        raise ValueError(f"{where}: episode is missing {missing}; it needs {list(_KEYS)}")
    obs = np.asarray(episode["obs"])
    action = np.asarray(episode["action"], dtype=np.float32)
    reward = np.asarray(episode["reward"], dtype=np.float32)
    terminal = np.asarray(episode["terminal"], dtype=bool)
    steps = action.shape[0] if action.ndim else -1
    if (
        obs.dtype != np.uint8
        or obs.ndim != 4
        or action.ndim != 2
        or steps < 1
        or obs.shape[0] != steps + 1
        or reward.shape != (steps,)
        or terminal.shape != (steps,)
    ):
        raise ValueError(
            f"{where}: inconsistent episode arrays obs {obs.dtype} {obs.shape}, action "
            f"{action.shape}, reward {reward.shape}, terminal {terminal.shape}; expected obs uint8 "
            "[T+1, C, H, W], action [T, A], reward [T], terminal [T] with T >= 1"
        )
    return {"obs": obs, "action": action, "reward": reward, "terminal": terminal}


def save_episode(path: str | os.PathLike, episode: Episode) -> Path:
    """Write ``episode`` (arrays as in the module docstring) to ``path`` atomically."""
    path = Path(path)
    episode = _check_episode(episode, str(path))
    replace_file(path, lambda stream: np.savez_compressed(stream, **episode))
    return path


def load_episode(path: str | os.PathLike) -> Episode:
    """Read an episode written by :func:`save_episode` (no pickle); ``ValueError`` names a
    truncated, corrupt or inconsistent file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {key: data[key] for key in _KEYS if key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ValueError(
            f"episode file {path} is truncated or corrupt ({type(e).__name__}: {e}); delete it "
            "(the other episodes are kept) or restore it"
        ) from None
    return _check_episode(episode, f"episode file {path}")


class EpisodeStore:
    """The finished episodes of a run, kept in memory and in ``folder`` (see module docstring).

    Args:
        folder: where the episode files live (created if missing); existing episodes are loaded.
        seed: seed of the chunk sampler (its state: :meth:`sampler_state`).
        frame_shape: ``(C, H, W)`` every episode's frames must have (default: the first
            episode's); a file with other frames or actions is refused, naming it.
        action_shape: ``(A,)`` likewise for actions.
        source: what set the shapes, for the error message (e.g. the run's options).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        seed: int = 0,
        frame_shape: tuple[int, ...] | None = None,
        action_shape: tuple[int, ...] | None = None,
        source: str = "the environment",
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.generator = np.random.default_rng(seed)
        self.episodes: list[Episode] = []
        self.shapes = None if frame_shape is None else (tuple(frame_shape), action_shape)
        self.source = source
        found = sorted(
            (int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))
        )
        for expected, (index, path) in enumerate(found):
            if index != expected:
                raise ValueError(
                    f"episode folder {self.folder} has no episode {expected} (next is {path.name});"
                    " episodes are numbered from 0 without gaps: restore the missing file or "
                    "remove the later ones"
                )
            episode = load_episode(path)
            self._check_shapes(episode, f"episode file {path}", "delete it (and the later ones)")
            self.episodes.append(episode)
        if self.episodes:
            logger.info("loaded %d episodes from %s", len(self.episodes), self.folder)

    def __len__(self) -> int:
        """The number of stored episodes."""
        return len(self.episodes)

    @property
    def steps(self) -> int:
        """The number of stored transitions (agent steps)."""
        return sum(len(e["action"]) for e in self.episodes)

    def add(self, episode: Episode) -> Path:
        """Save a finished episode to disk (atomically) and keep it for sampling."""
        index = len(self.episodes)
        episode = _check_episode(episode, f"episode {index}")
        self._check_shapes(episode, f"episode {index}", "use one folder per environment setting")
        path = self.folder / f"episode-{index:06d}-{len(episode['action'])}.npz"
        save_episode(path, episode)
        self.episodes.append(episode)
        return path

    def _check_shapes(self, episode: Episode, where: str, fix: str) -> None:
        """Frames ``(C, H, W)`` and actions ``(A,)`` as the store's (the given shapes, else the
        first episode's); ``ValueError`` naming ``where``, the expected and the found shapes."""
        found = (episode["obs"].shape[1:], episode["action"].shape[1:])
        if self.shapes is None:
            self.shapes, self.source = found, "the first stored episode"
            return
        frames, actions = self.shapes
        bad = [
            f"{name} {tuple(have)} where {self.source} gives {tuple(want)}"
            for name, have, want in (("frames", found[0], frames), ("actions", found[1], actions))
            if want is not None and tuple(have) != tuple(want)
        ]
        if bad:
            raise ValueError(f"{where} has {' and '.join(bad)}; {fix}")

    def discard_after(self, count: int) -> int:
        """Keep only the first ``count`` episodes (delete the later files): used on resume to
        drop episodes collected after the checkpoint. Returns how many were removed."""
        if count > len(self.episodes):
            raise ValueError(
                f"the checkpoint counts {count} episodes but {self.folder} holds only "
                f"{len(self.episodes)}; the episode files were removed or moved: restore them"
            )
        removed = 0
        for path in sorted(self.folder.iterdir()):
            match = _NAME.match(path.name)
            if match and int(match.group(1)) >= count:
                path.unlink()
                removed += 1
        del self.episodes[count:]
        return removed

    def sampler_state(self) -> dict:
        """The chunk sampler's random state (JSON-ready)."""
        return self.generator.bit_generator.state

    def load_sampler_state(self, state: dict) -> None:
        self.generator.bit_generator.state = state

    def sample(self, batch: int, length: int) -> dict[str, torch.Tensor]:
        """``batch`` random chunks of ``length`` steps, aligned as in the module docstring:
        ``obs`` uint8 ``[L, B, C, H, W]``, ``action`` ``[L, B, A]``, ``reward``, ``terminal``
        and ``first`` ``[L, B]`` (float32)."""
        check_positive_int("batch", batch)
        check_positive_int("length", length)
        windows = np.array([max(0, len(e["obs"]) - length + 1) for e in self.episodes])
        if windows.sum() == 0:
            longest = max((len(e["obs"]) for e in self.episodes), default=0)
            raise ValueError(
                f"length = {length} is invalid: no stored episode has that many observations "
                f"(longest: {longest}); use a shorter chunk length or collect longer episodes"
            )
        picks = self.generator.choice(len(windows), size=batch, p=windows / windows.sum())
        chunks = [self._chunk(int(e), int(self.generator.integers(windows[e])), length)
                  for e in picks]  # fmt: skip
        return {
            key: torch.from_numpy(np.stack([c[key] for c in chunks], axis=1)) for key in chunks[0]
        }

    def _chunk(self, index: int, start: int, length: int) -> dict[str, np.ndarray]:
        episode = self.episodes[index]
        steps = np.arange(start, start + length)  # observation indices s .. s+L-1
        before = steps - 1  # the transition that led to each observation
        valid = before >= 0
        taken = np.clip(before, 0, None)
        action = np.where(valid[:, None], episode["action"][taken], 0.0).astype(np.float32)
        reward = np.where(valid, episode["reward"][taken], 0.0).astype(np.float32)
        terminal = np.where(valid, episode["terminal"][taken], False).astype(np.float32)
        return {
            "obs": episode["obs"][steps],
            "action": action,
            "reward": reward,
            "terminal": terminal,
            "first": (~valid).astype(np.float32),
        }


class EpisodeRunner:
    """Plays episodes of ``env`` and returns them in the store's layout.

    The agent (anything with ``reset()``, ``act(obs, explore, noise) -> [A]`` and
    ``exploration_noise``; None: uniform random actions) acts in ``[-1, 1]^A``; its actions are
    rescaled to the environment's Box bounds and stored as taken, in ``[-1, 1]``. Wall time is
    added to ``timing["env"]`` (reset and step) and ``timing["act"]`` (choosing actions).
    """

    def __init__(self, env: Any, timing: dict[str, float]) -> None:
        self.env, self.timing = env, timing
        low, high = env.action_space.low, env.action_space.high
        self.centre, self.half = (high + low) / 2, (high - low) / 2
        self.action_dim = int(env.action_space.shape[0])

    def run(
        self,
        seed: int,
        agent: Any | None,
        explore: bool,
        generator: np.random.Generator | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, np.ndarray], float, int] | None:
        """One episode: its arrays (actions in [-1, 1]), its return, its environment steps; None
        when ``should_stop()`` turned true before an agent step (the episode is dropped)."""
        started = time.perf_counter()
        obs, _ = self.env.reset(seed=seed)
        self.timing["env"] += time.perf_counter() - started
        if agent is not None:
            agent.reset()
        frames, actions, rewards, terminals = [obs], [], [], []
        env_steps, done = 0, False
        while not done:
            if should_stop is not None and should_stop():
                return None
            started = time.perf_counter()
            if agent is None:
                action = generator.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            else:
                action = agent.act(obs, explore, agent.exploration_noise if explore else 0.0)
            middle = time.perf_counter()
            self.timing["act"] += middle - started
            obs, reward, terminated, truncated, info = self.env.step(
                (self.centre + self.half * action).astype(self.env.action_space.dtype)
            )
            self.timing["env"] += time.perf_counter() - middle
            frames.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminals.append(bool(terminated))
            env_steps += info.get("env_steps", 1)
            done = terminated or truncated
        episode = {
            "obs": np.stack(frames),
            "action": np.stack(actions).astype(np.float32),
            "reward": np.asarray(rewards, np.float32),
            "terminal": np.asarray(terminals, bool),
        }
        return episode, float(np.sum(rewards)), env_steps
