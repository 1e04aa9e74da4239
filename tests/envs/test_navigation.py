"""SOLAR's pixel 2-D navigation (latentvi/PointNav-v0): dynamics, cost, success, frames, seeds."""

import gymnasium as gym
import numpy as np
import pytest

import latentvi.envs  # noqa: F401 (registers the latentvi/ ids)
from latentvi.envs.navigation import (
    ACTION_COST,
    BOUND,
    ENV_ID,
    GOAL,
    MAX_EPISODE_STEPS,
    START,
    NavigationEnv,
    draw,
)
from latentvi.envs.pixels import make_env


def test_fixed_start_whatever_the_seed():
    env = NavigationEnv()
    starts = [env.reset(seed=seed)[0] for seed in (0, 1, 2, None)]
    for start in starts:
        np.testing.assert_array_equal(start, np.float32(START))


def test_start_noise_follows_the_reset_seed():
    env, other = NavigationEnv(start_noise=0.3), NavigationEnv(start_noise=0.3)
    a, b, c = env.reset(seed=4)[0], other.reset(seed=4)[0], other.reset(seed=5)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.abs(a - np.float32(START)) <= 0.3 + 1e-6)


def test_action_moves_the_point_clipped_to_the_box():
    env = NavigationEnv()
    env.reset(seed=0)
    position, *_ = env.step(np.array([0.5, 0.25]))
    np.testing.assert_allclose(position, [-1.5, -1.75], atol=1e-6)
    position, *_ = env.step(np.array([3.0, -7.0]))  # actions are clipped to [-1, 1]
    np.testing.assert_allclose(position, [-0.5, -2.75], atol=1e-6)
    position, *_ = env.step(np.array([0.0, -1.0]))  # the point stays in the box
    np.testing.assert_allclose(position, [-0.5, -BOUND], atol=1e-6)


def test_reward_is_minus_squared_distance_after_the_move_and_action_cost():
    env = NavigationEnv()
    env.reset(seed=0)
    action = np.array([1.0, 0.5])
    position, reward, terminated, truncated, info = env.step(action)
    expected = ((position - np.array(GOAL)) ** 2).sum() + ACTION_COST * (action**2).sum()
    assert reward == pytest.approx(-expected, rel=1e-6)
    assert not terminated and not truncated
    assert info["distance"] == pytest.approx(np.linalg.norm(position), rel=1e-6)


def test_success_inside_the_goal_region_only():
    env = NavigationEnv(goal_radius=0.4)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0, 1.0]))  # (-1, -1): far
    assert not info["success"]
    _, _, _, _, info = env.step(np.array([0.8, 0.8]))  # (-0.2, -0.2): 0.28 from the goal
    assert info["success"]
    _, _, _, _, info = env.step(np.array([0.5, 0.0]))  # (0.3, -0.2): 0.36
    assert info["success"]
    _, _, _, _, info = env.step(np.array([0.2, 0.0]))  # (0.5, -0.2): 0.54
    assert not info["success"]


def test_registered_with_a_fifty_step_horizon_and_no_early_end():
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    ends = []
    for _ in range(MAX_EPISODE_STEPS):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        ends.append((terminated, truncated))
    assert ends[:-1] == [(False, False)] * (MAX_EPISODE_STEPS - 1)
    assert ends[-1] == (False, True)


def test_frames_through_make_env_have_the_agents_shape_and_dtype():
    rgb = make_env(ENV_ID, pixels=True, size=32, grayscale=False)
    gray = make_env(ENV_ID, pixels=True, size=64, grayscale=True)
    frame, _ = rgb.reset(seed=0)
    assert frame.shape == (3, 32, 32) and frame.dtype == np.uint8
    frame, _ = gray.reset(seed=0)
    assert frame.shape == (1, 64, 64) and frame.dtype == np.uint8
    assert set(np.unique(frame)) >= {0, 70, 255}  # background, goal, point


def test_frames_show_where_the_point_is():
    image = draw((-2.0, 2.0), GOAL, 0.4, 32).astype(float)  # top left
    point, goal = image[..., 0] > 128, (image[..., 1] > 60) & (image[..., 0] < 60)
    rows, columns = np.nonzero(point)
    assert rows.mean() < 8 and columns.mean() < 8
    rows, columns = np.nonzero(goal)
    assert abs(rows.mean() - 15.5) < 0.5 and abs(columns.mean() - 15.5) < 0.5
    assert np.all(image[-4:, -4:] == 0)  # background


def test_subpixel_moves_change_the_frame():
    first, second = draw((1.0, 1.0), GOAL, 0.4, 32), draw((1.05, 1.0), GOAL, 0.4, 32)
    assert not np.array_equal(first, second)
    # the point's mass moves right
    columns = np.arange(32)
    centre = [(im[..., 0].sum(0) * columns).sum() / im[..., 0].sum() for im in (first, second)]
    assert centre[1] > centre[0]


def test_same_actions_same_frames():
    envs = [make_env(ENV_ID, pixels=True, size=32) for _ in range(2)]
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 2)).astype(np.float32)
    frames = []
    for env in envs:
        obs, _ = env.reset(seed=3)
        frames.append([obs] + [env.step(a)[0] for a in actions])
    np.testing.assert_array_equal(np.stack(frames[0]), np.stack(frames[1]))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="start"):
        NavigationEnv(start=(5.0, 0.0))
    with pytest.raises(ValueError, match="goal_radius"):
        NavigationEnv(goal_radius=0.0)
    with pytest.raises(ValueError, match="render_mode"):
        NavigationEnv(render_mode="human")
