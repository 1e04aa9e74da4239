"""Replay buffer: exact storage, frame stacks across episode boundaries, memory per transition."""

import numpy as np
import pytest
import torch

from latentvi.data.replay import ReplayBuffer, bytes_per_slot
from latentvi.envs.pixels import FrameStack, make_env, newest_frame


def _fill(buffer, episodes, lengths, rng, terminal_every=2):
    """Write episodes of random frames; return the list of (obs, action, reward, next, done)."""
    stored = []
    k = buffer.stack
    for episode, length in zip(range(episodes), lengths, strict=True):
        frame = rng.integers(0, 256, buffer.frame_shape, dtype=np.uint8)
        buffer.start(frame)
        history = [frame] * k  # what FrameStack shows after a reset
        for t in range(length):
            if buffer.actions.dtype == np.int64:
                action = rng.integers(0, 5, buffer.action_shape)
            else:
                action = rng.standard_normal(buffer.action_shape).astype(np.float32)
            reward = float(rng.standard_normal())
            frame = rng.integers(0, 256, buffer.frame_shape, dtype=np.uint8)
            last = t == length - 1
            terminated = last and episode % terminal_every == 0
            obs = np.concatenate(history[-k:])
            history.append(frame)
            buffer.add(action, reward, frame, terminated, truncated=last and not terminated)
            stored.append((obs, action, reward, np.concatenate(history[-k:]), terminated))
    return stored


def test_sampling_returns_exactly_what_was_stored_with_stacks_across_episodes():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1000, (1, 4, 4), stack=3, action_shape=(2,), seed=1)
    lengths = [1, 2, 5, 3, 1, 7]  # episodes shorter than the stack included
    stored = _fill(buffer, len(lengths), lengths, rng)
    assert len(buffer) == sum(lengths) == len(stored)
    # Frame numbers that end transitions: every slot except each episode's first.
    numbers = np.flatnonzero(~buffer.first[: buffer.total])
    batch = buffer.transitions(numbers)
    for i, (obs, action, reward, next_obs, terminated) in enumerate(stored):
        assert torch.equal(batch.obs[i], torch.from_numpy(obs))
        assert torch.equal(batch.next_obs[i], torch.from_numpy(next_obs))
        assert torch.equal(batch.action[i], torch.from_numpy(action))
        assert batch.reward[i].item() == pytest.approx(reward, abs=1e-6)
        assert batch.terminated[i].item() == float(terminated)
    # Uniform sampling only ever returns stored transitions.
    sampled = buffer.sample(256)
    as_tuples = {obs.tobytes() + nxt.tobytes() for obs, _, _, nxt, _ in stored}
    for obs, nxt in zip(sampled.obs.numpy(), sampled.next_obs.numpy(), strict=True):
        assert obs.tobytes() + nxt.tobytes() in as_tuples


def test_wrapped_ring_drops_transitions_whose_frames_were_overwritten():
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(20, (1, 2, 2), stack=4, action_shape=(), action_dtype=np.int64)
    stored = _fill(buffer, 10, [5] * 10, rng)  # 60 frames through 20 slots
    numbers = np.arange(buffer.oldest, buffer.total)
    valid = numbers[buffer._valid(numbers)]
    # The oldest complete transitions: their stacks reach back to frames still in the ring.
    batch = buffer.transitions(valid)
    by_next = {nxt.tobytes(): (obs, a) for obs, a, _, nxt, _ in stored}
    for obs, action, nxt in zip(
        batch.obs.numpy(), batch.action, batch.next_obs.numpy(), strict=True
    ):
        expected_obs, expected_action = by_next[nxt.tobytes()]
        assert np.array_equal(obs, expected_obs) and action.item() == expected_action
    # 20 slots hold the last ~3.3 episodes; every transition of the last 3 is complete.
    assert len(buffer) >= 15
    with pytest.raises(ValueError, match="frame numbers"):
        buffer.transitions(np.array([buffer.oldest]))  # an episode start or stale frames


def test_stacks_match_the_frame_stack_wrapper_on_a_real_environment():
    env = make_env("latentvi/PixelChain-v0", pixels=True, size=8, frame_stack=3,
                   env_kwargs={"n": 4, "size": 8, "max_steps": 5})  # fmt: skip
    assert isinstance(env, FrameStack)
    buffer = ReplayBuffer(500, (1, 8, 8), stack=3, action_shape=(), action_dtype=np.int64)
    rng = np.random.default_rng(2)
    seen = []
    obs, _ = env.reset(seed=0)
    buffer.start(newest_frame(obs, 1))
    for _ in range(60):
        action = int(rng.integers(2))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(action, reward, newest_frame(next_obs, 1), terminated, truncated)
        seen.append((obs, next_obs))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            buffer.start(newest_frame(obs, 1))
    batch = buffer.transitions(np.flatnonzero(~buffer.first[: buffer.total]))
    assert len(seen) == batch.obs.shape[0] == 60
    for i, (obs, next_obs) in enumerate(seen):
        assert np.array_equal(batch.obs[i].numpy(), obs)
        assert np.array_equal(batch.next_obs[i].numpy(), next_obs)


def test_memory_per_transition_is_one_frame_plus_the_step_record():
    buffer = ReplayBuffer(1000, (1, 64, 64), stack=3, action_shape=(1,))
    # 4096 frame bytes + 4 action + 4 reward + 2 flags + 8 episode start, independent of the stack.
    assert buffer.bytes_per_slot == 4096 + 4 + 4 + 1 + 1 + 8 == 4114
    assert buffer.nbytes == 1000 * buffer.bytes_per_slot
    # The module docstring's numbers: 4.1 GB (grayscale) and 12.3 GB (RGB) per million.
    assert round(bytes_per_slot((1, 64, 64), np.uint8, (1,)) * 1e6 / 1e9, 1) == 4.1
    assert round(bytes_per_slot((3, 64, 64), np.uint8, (1,)) * 1e6 / 1e9, 1) == 12.3


def test_state_dict_round_trip_restores_the_buffer_and_its_sampler():
    rng = np.random.default_rng(3)
    buffer = ReplayBuffer(50, (3,), stack=1, frame_dtype=np.float32, action_shape=(1,), seed=4)
    _fill(buffer, 12, [6] * 12, rng)  # wraps
    copy = ReplayBuffer(50, (3,), stack=1, frame_dtype=np.float32, action_shape=(1,), seed=99)
    copy.load_state_dict(buffer.state_dict())
    a, b = buffer.sample(32), copy.sample(32)
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(60, (3,), frame_dtype=np.float32).load_state_dict(buffer.state_dict())


def test_misuse_raises_clear_errors():
    buffer = ReplayBuffer(10, (1, 2, 2), stack=2)
    with pytest.raises(ValueError, match="start"):
        buffer.add(0.0, 0.0, np.zeros((1, 2, 2), np.uint8), False)
    with pytest.raises(ValueError, match="newest frame"):
        buffer.start(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="no complete transition"):
        buffer.sample(4)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, (1,), stack=2)
