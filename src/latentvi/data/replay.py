"""A replay buffer that stores every frame once and rebuilds stacked observations when sampled.

An agent that sees the last ``stack`` frames, ``o_t = (f_{t-k+1}, …, f_t)``, would store each frame
``k`` times over if it kept whole observations (and twice more as next observations). Here each
slot of a ring holds one frame ``f`` and, when ``f`` is the frame reached by a transition, that
transition's action, reward and termination flag:

    slot   frame     action  reward  terminated  first  episode_start
    a      f_0       -       -       -           True   a              (reset)
    a+1    f_1       a_0     r_0     d_0         False  a              (o_0, a_0, r_0, o_1)
    a+2    f_2       a_1     r_1     d_1         False  a
    ...

A transition ending in slot ``j`` has next observation stack(j) and observation stack(j − 1), where
stack(j) holds frames j−k+1 … j, each clamped to the episode's first frame — the padding Gymnasium's
``FrameStackObservation(padding_type="reset")`` and :class:`latentvi.envs.pixels.FrameStack` use, so a
stack never mixes two episodes. An episode of T transitions takes T + 1 slots.

Memory (``bytes_per_slot``): one frame (C·H·W bytes as uint8) + the action + 4 (float32 reward)
+ 1 + 1 (two bools) + 8 (int64 episode start) bytes. For 64×64 grayscale frames and one float32
action that is 4,114 bytes, **4.1 GB per million transitions** whatever the stack size (12.3 GB
for RGB); storing stacks of 3 frames as observation and next observation would take 24.6 GB.
The same class stores low-dimensional states (float32 "frames", ``stack=1``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from latentvi.config import check_positive_int
from latentvi.memory import require_memory

__all__ = ["ReplayBatch", "ReplayBuffer", "bytes_per_slot"]


@dataclasses.dataclass
class ReplayBatch:
    """A batch of transitions: ``obs``/``next_obs [B, k·C, H, W]`` (frames' dtype, e.g. uint8) or
    ``[B, D]`` for states, ``action [B, *A]``, ``reward [B]`` float32, ``terminated [B]`` float32
    (1.0 where the episode ended in a terminal state: no bootstrapping)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


def bytes_per_slot(
    frame_shape: Sequence[int],
    frame_dtype: Any = np.uint8,
    action_shape: Sequence[int] = (),
    action_dtype: Any = np.float32,
) -> int:
    """Bytes one slot (one frame and the transition that reached it) takes in a buffer."""
    frame = int(np.prod(frame_shape, dtype=np.int64)) * np.dtype(frame_dtype).itemsize
    action = int(np.prod(action_shape, dtype=np.int64)) * np.dtype(action_dtype).itemsize
    return frame + action + 4 + 1 + 1 + 8


class ReplayBuffer:
    """A ring of ``capacity`` frames with the transitions between them (see the module docstring).

    Args:
        capacity: slots (frames); the oldest are overwritten when it is full.
        frame_shape: shape of one frame, e.g. ``(1, 64, 64)`` or ``(3,)`` for a state.
        stack: frames per observation ``k``; observations are ``[k·C, *rest]`` (frames
            concatenated along their first dimension).
        frame_dtype: numpy dtype of the frames (uint8 for pixels, float32 for states).
        action_shape: ``()`` for a discrete action index, ``(A,)`` for a continuous action.
        action_dtype: int64 for discrete actions, float32 for continuous ones.
        seed: seed of the sampling generator (its state is saved by :meth:`state_dict`).

    Use: ``start(frame)`` after each reset, then ``add(action, reward, next_frame, terminated,
    truncated)`` after each step; after a terminated or truncated step call ``start`` again.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: Sequence[int],
        *,
        stack: int = 1,
        frame_dtype: Any = np.uint8,
        action_shape: Sequence[int] = (),
        action_dtype: Any = np.float32,
        seed: int = 0,
    ) -> None:
        self.capacity = check_positive_int("capacity", capacity)
        self.stack = check_positive_int("stack", stack)
        if self.capacity <= self.stack:
            raise ValueError(
                f"capacity = {capacity} is invalid: it must exceed stack = {stack} (use a larger "
                "buffer)"
            )
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.action_shape = tuple(int(s) for s in action_shape)
        slot = bytes_per_slot(self.frame_shape, frame_dtype, self.action_shape, action_dtype)
        require_memory(
            capacity * slot,
            f"a replay buffer of {capacity} frames of shape {list(self.frame_shape)}",
            ("buffer capacity (--buffer-size, --steps)",),
            "use a smaller buffer or fewer steps",
        )
        self.frames = np.zeros((capacity, *self.frame_shape), dtype=frame_dtype)
        self.actions = np.zeros((capacity, *self.action_shape), dtype=action_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=bool)
        self.first = np.ones(capacity, dtype=bool)
        self.episode_start = np.zeros(capacity, dtype=np.int64)
        self.total = 0  # frames ever written; frame number n lives in slot n % capacity
        self._current_start: int | None = None  # frame number of the open episode's first frame
        self.generator = np.random.default_rng(seed)

    # --- memory -----------------------------------------------------------------------------
    @property
    def bytes_per_slot(self) -> int:
        """Bytes per slot (≈ per transition: an episode of T transitions takes T + 1 slots)."""
        return bytes_per_slot(
            self.frame_shape, self.frames.dtype, self.action_shape, self.actions.dtype
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays: ``capacity × bytes_per_slot``."""
        arrays = (
            self.frames,
            self.actions,
            self.rewards,
            self.terminated,
            self.first,
            self.episode_start,
        )
        return sum(a.nbytes for a in arrays)

    # --- writing ------------------------------------------------------------------------------
    def start(self, frame: np.ndarray) -> None:
        """Begin an episode with its first frame (the newest frame of the reset observation)."""
        slot = self._write_frame(frame)
        self.first[slot] = True
        self.episode_start[slot] = self.total
        self._current_start = self.total
        self.total += 1

    def add(
        self,
        action: np.ndarray | int | float,
        reward: float,
        next_frame: np.ndarray,
        terminated: bool,
        truncated: bool = False,
    ) -> None:
        """Store one step: the action taken, its reward and the newest frame it led to."""
        if self._current_start is None:
            raise ValueError(
                "add() before start(): call start(first_frame) after every reset, including after "
                "a terminated or truncated step"
            )
        slot = self._write_frame(next_frame)
        self.actions[slot] = action
        self.rewards[slot] = reward
        self.terminated[slot] = bool(terminated)
        self.first[slot] = False
        self.episode_start[slot] = self._current_start
        self.total += 1
        if terminated or truncated:
            self._current_start = None

    def _write_frame(self, frame: np.ndarray) -> int:
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(
                f"frame has shape {frame.shape} but this buffer stores frames of shape "
                f"{self.frame_shape}; pass the newest frame of the observation only"
            )
        slot = self.total % self.capacity
        self.frames[slot] = frame
        return slot

    # --- reading ------------------------------------------------------------------------------
    @property
    def oldest(self) -> int:
        """Frame number of the oldest frame still stored."""
        return max(0, self.total - self.capacity)

    def _valid(self, numbers: np.ndarray) -> np.ndarray:
        """Whether the transitions ending at frame ``numbers`` can be rebuilt completely."""
        slots = numbers % self.capacity
        start = self.episode_start[slots]
        oldest_needed = np.maximum(numbers - self.stack, start)  # oldest frame of stack(n − 1)
        return ~self.first[slots] & (oldest_needed >= self.oldest) & (numbers < self.total)

    def __len__(self) -> int:
        """Transitions that can be sampled now."""
        numbers = np.arange(self.oldest, self.total)
        return int(self._valid(numbers).sum())

    def stacked(self, numbers: np.ndarray) -> np.ndarray:
        """Observations ending at frame numbers ``numbers [B]``: ``[B, k·C, *rest]``."""
        numbers = np.asarray(numbers, dtype=np.int64)
        start = self.episode_start[numbers % self.capacity]
        offsets = np.arange(self.stack - 1, -1, -1)  # k−1 … 0: oldest frame first
        wanted = np.maximum(numbers[:, None] - offsets[None, :], start[:, None])  # [B, k]
        frames = self.frames[wanted % self.capacity]  # [B, k, C, *rest]
        if self.stack == 1:
            return frames[:, 0]
        return frames.reshape(len(numbers), self.stack * self.frame_shape[0], *self.frame_shape[1:])

    def transitions(self, numbers: np.ndarray) -> ReplayBatch:
        """The transitions ending at frame numbers ``numbers [B]`` (all must be valid)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if not self._valid(numbers).all():
            raise ValueError("some frame numbers do not end a stored transition")
        slots = numbers % self.capacity
        return ReplayBatch(
            obs=torch.from_numpy(self.stacked(numbers - 1)),
            action=torch.from_numpy(self.actions[slots]),
            reward=torch.from_numpy(self.rewards[slots]),
            next_obs=torch.from_numpy(self.stacked(numbers)),
            terminated=torch.from_numpy(self.terminated[slots].astype(np.float32)),
        )

    def sample_numbers(self, batch_size: int) -> np.ndarray:
        """Frame numbers of ``batch_size`` transitions drawn uniformly (with replacement)."""
        check_positive_int("batch_size", batch_size)
        if len(self) == 0:
            raise ValueError("the replay buffer holds no complete transition yet; add steps first")
        chosen = np.empty(0, dtype=np.int64)
        while chosen.size < batch_size:  # rejection: a few slots (episode starts, …) are not ends
            draws = self.generator.integers(self.oldest, self.total, size=2 * batch_size)
            chosen = np.concatenate([chosen, draws[self._valid(draws)]])
        return chosen[:batch_size]

    def sample(self, batch_size: int) -> ReplayBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        return self.transitions(self.sample_numbers(batch_size))

    def sample_observations(self, batch_size: int) -> torch.Tensor:
        """Observations of ``batch_size`` uniformly drawn transitions ``[B, k·C, *rest]``."""
        return torch.from_numpy(self.stacked(self.sample_numbers(batch_size) - 1))

    # --- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers that :meth:`load_state_dict` restores exactly (stored slots only)."""
        used = min(self.total, self.capacity)
        arrays = {
            "frames": self.frames,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminated": self.terminated,
            "first": self.first,
            "episode_start": self.episode_start,
        }
        return {
            "arrays": {
                k: torch.from_numpy(np.ascontiguousarray(v[:used])) for k, v in arrays.items()
            },
            "total": self.total,
            "current_start": -1 if self._current_start is None else self._current_start,
            "capacity": self.capacity,
            "stack": self.stack,
            "generator": self.generator.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a buffer with the same capacity, stack and shapes."""
        if int(state["capacity"]) != self.capacity or int(state["stack"]) != self.stack:
            raise ValueError(
                f"replay state has capacity {state['capacity']} and stack {state['stack']}, this "
                f"buffer {self.capacity} and {self.stack}: build it with the saved configuration"
            )
        for name, tensor in state["arrays"].items():
            target = getattr(self, name)
            values = tensor.numpy()
            if values.shape[1:] != target.shape[1:] or values.shape[0] > self.capacity:
                raise ValueError(f"replay state {name!r} has shape {values.shape}")
            target[: values.shape[0]] = values
        self.total = int(state["total"])
        current = int(state["current_start"])
        self._current_start = None if current < 0 else current
        self.generator.bit_generator.state = state["generator"]
