"""DeepMind Control Suite tasks as Gymnasium pixel environments (skipped without dm_control/EGL)."""

import os

import numpy as np
import pytest

pytest.importorskip(
    "dm_control", reason="dm_control is not installed (pip install 'latentvi[dmc]')"
)

import gymnasium as gym

from latentvi.envs.dmc import DMCEnv, register_dmc
from latentvi.envs.pixels import ActionRepeat, make_env


@pytest.fixture(scope="module")
def cartpole():
    try:
        env = DMCEnv("cartpole", "swingup")
        env.reset(seed=0)
    except Exception as error:  # the GL backend is missing (no EGL / OSMesa library)
        pytest.skip(f"MuJoCo cannot render here (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {error}")
    yield env
    env.close()


def test_register_is_lazy_and_idempotent():
    register_dmc()
    register_dmc()
    for env_id in (
        "dmc/cartpole-swingup-v0",
        "dmc/reacher-easy-v0",
        "dmc/cheetah-run-v0",
        "dmc/pendulum-swingup-v0",
    ):
        assert env_id in gym.registry


def test_reset_and_step_give_64x64_uint8_frames(cartpole):
    observation, _ = cartpole.reset(seed=1)
    assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
    assert observation.std() > 0  # a picture, not a blank frame
    assert cartpole.action_space.shape == (1,)
    np.testing.assert_array_equal(cartpole.action_space.low, [-1.0])
    observation, reward, terminated, truncated, _ = cartpole.step(np.zeros(1, np.float32))
    assert observation.shape == (64, 64, 3)
    assert 0.0 <= reward <= 1.0 and not terminated and not truncated


def test_passes_gymnasium_env_checker(cartpole):
    from gymnasium.utils.env_checker import check_env

    check_env(cartpole, skip_render_check=True)


def test_same_seed_same_episode_and_other_seed_differs(cartpole):
    def episode(seed):
        observation, _ = cartpole.reset(seed=seed)
        frames, rewards = [observation], []
        actions = np.random.default_rng(0).uniform(-1, 1, (10, 1)).astype(np.float32)
        for action in actions:
            observation, reward, *_ = cartpole.step(action)
            frames.append(observation)
            rewards.append(reward)
        return np.stack(frames), rewards

    frames_a, rewards_a = episode(3)
    frames_b, rewards_b = episode(3)
    frames_c, _ = episode(4)
    np.testing.assert_array_equal(frames_a, frames_b)
    assert rewards_a == rewards_b
    assert not np.array_equal(frames_a[0], frames_c[0])


def test_time_limit_is_truncation(cartpole):
    env = DMCEnv("cartpole", "swingup", from_pixels=False)  # no frames: 1000 steps in a blink
    try:
        env.reset(seed=0)
        steps, truncated, terminated = 0, False, False
        while not (truncated or terminated):
            _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
            steps += 1
        assert steps == 1000 and truncated and not terminated and info["discount"] == 1.0
    finally:
        env.close()


def test_make_env_gives_grayscale_stacks_with_action_repeat(cartpole):
    env = make_env("dmc/cartpole-swingup-v0", pixels=True, frame_stack=3, action_repeat=4)
    try:
        observation, _ = env.reset(seed=0)
        assert observation.shape == (3, 64, 64) and observation.dtype == np.uint8
        _, reward, _, _, info = env.step(np.zeros(1, np.float32))
        assert info["env_steps"] == 4 and 0.0 <= reward <= 4.0
        assert isinstance(env.env.env, ActionRepeat)  # FrameStack(PixelObservation(ActionRepeat))
    finally:
        env.close()


def test_make_env_renders_once_per_agent_step(cartpole, monkeypatch):
    calls = []
    render = DMCEnv.render
    monkeypatch.setattr(DMCEnv, "render", lambda self: calls.append(1) or render(self))
    env = make_env("dmc/cartpole-swingup-v0", pixels=True, grayscale=False, action_repeat=8)
    direct = DMCEnv("cartpole", "swingup")
    try:
        observation, _ = env.reset(seed=3)
        expected, _ = direct.reset(seed=3)
        np.testing.assert_array_equal(observation, expected.transpose(2, 0, 1))
        for _ in range(3):
            observation, _, _, _, info = env.step(np.full(1, 0.5, np.float32))
            for _ in range(8):
                expected, *_ = direct.step(np.full(1, 0.5, np.float32))
        assert info["env_steps"] == 8
        np.testing.assert_array_equal(observation, expected.transpose(2, 0, 1))
        assert len(calls) == 1 + 3 + 1 + 3 * 8  # make_env: reset + 3 steps; direct: every step
    finally:
        env.close()
        direct.close()


def test_state_observations_are_flat(cartpole):
    env = DMCEnv("reacher", "easy", from_pixels=False)
    try:
        observation, _ = env.reset(seed=0)
        assert observation.shape == env.observation_space.shape == (6,)
        assert observation.dtype == np.float32
        assert env.action_space.shape == (2,)
    finally:
        env.close()


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="not a DeepMind Control Suite task"):
        DMCEnv("cartpole", "fly")
