"""The Gymnasium tasks and the scripted demonstrators."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import latentvi.envs  # noqa: F401 (registers the latentvi/ ids)
from latentvi.envs.demos import (
    DemoConfig,
    Demonstrations,
    WaypointDemonstrator,
    collect_demonstrations,
)
from latentvi.envs.tasks import TASKS, PointNavigationEnv, make_task, rollout


@pytest.mark.parametrize("task", list(TASKS))
def test_env_passes_gymnasium_checker(task):
    env = gym.make(TASKS[task].env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports problems as warnings
        check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == 60


def test_obstacle_dynamics_collision_and_success():
    env = PointNavigationEnv("obstacle")
    start, info = env.reset(seed=0)
    assert info["mode"] == -1 and np.abs(start - [0, -1]).max() <= 0.02 + 1e-6
    for _ in range(5):  # straight up at 0.1 per step: the disc (radius 0.35) is hit at step 7
        observation, reward, terminated, _, info = env.step(np.array([0.0, 2.0]))  # clipped to 1
        assert not terminated and reward == 0.0
    np.testing.assert_allclose(observation, start + np.array([0.0, 0.5]), atol=1e-6)
    for _ in range(2):
        observation, reward, terminated, _, info = env.step(np.array([0.0, 1.0]))
    assert terminated and info["collision"] and reward == -1.0
    # Around the right of the disc: mode 1 ("right"), then success at the goal.
    observation, _ = env.reset(seed=0)
    for target in ([0.6, -0.4], [0.6, 0.4], [0.0, 1.0]):
        for _ in range(40):
            offset = np.asarray(target) - observation
            distance = np.linalg.norm(offset)
            if distance < 0.05:
                break
            observation, reward, terminated, _, info = env.step(offset / max(0.1, distance))
            if terminated:
                break
    assert info["success"] and not info["collision"] and info["mode"] == 1 and reward == 1.0


@pytest.mark.parametrize("task", list(TASKS))
def test_demonstrators_succeed_and_cover_every_mode(task):
    """Scripted demonstrators succeed in ≥ 95% of 200 episodes and take each of the K modes in
    a share within 4 binomial standard errors of 1/K (the mode they report is the one the
    environment measures)."""
    env = make_task(task)
    demonstrator = WaypointDemonstrator(task, noise=0.1, seed=3)
    episodes = []
    for i in range(200):
        episode = rollout(env, demonstrator, seed=i)
        assert episode.mode == demonstrator.mode or not episode.success
        episodes.append(episode)
    assert np.mean([e.success for e in episodes]) >= 0.95
    k = len(TASKS[task].mode_names)
    successes = [e for e in episodes if e.success]
    shares = np.bincount([e.mode for e in successes], minlength=k) / len(successes)
    tolerance = 4 * np.sqrt((1 / k) * (1 - 1 / k) / len(successes))
    assert np.all(np.abs(shares - 1 / k) < tolerance), shares


def test_demonstrations_views_agree():
    demos = collect_demonstrations("obstacle", DemoConfig(demos=20, demo_noise=0.1, demo_seed=1))
    states, actions = demos.transitions()
    assert states.shape == actions.shape == (int(demos.lengths.sum()), 2)
    chunk_states, chunks = demos.chunks(3)
    assert torch.equal(chunk_states, states) and chunks.shape == (states.shape[0], 6)
    assert torch.equal(chunks[:, :2], actions)
    assert torch.equal(chunks[:-1, 2:4][demos.lengths[0] - 2], actions[demos.lengths[0] - 1])
    assert torch.equal(chunks[demos.lengths[0] - 1, 2:], torch.zeros(4))  # past the end: stay
    window_states, window_actions, goals = demos.windows(4)
    assert window_states.shape == (states.shape[0], 4, 2) and goals.shape == (states.shape[0], 2)
    assert torch.equal(window_states[:, 0], states) and torch.equal(window_actions[:, 0], actions)
    assert torch.equal(goals[0], demos.final_states[0])


def test_bad_names_and_mismatched_demonstrations_are_named():
    with pytest.raises(ValueError, match="task = 'maze'"):
        make_task("maze")
    with pytest.raises(ValueError, match="demos"):
        DemoConfig(demos=1)
    good = dict(
        states=torch.zeros(3, 5, 2),
        actions=torch.zeros(3, 5, 2),
        final_states=torch.zeros(3, 2),
        lengths=torch.full((3,), 5),
        modes=torch.zeros(3, dtype=torch.long),
    )
    Demonstrations(**good)
    with pytest.raises(ValueError, match="same episodes E and steps T"):
        Demonstrations(**{**good, "actions": torch.zeros(3, 4, 2)})
    with pytest.raises(ValueError, match="one row of lengths per episode"):
        Demonstrations(**{**good, "lengths": torch.full((2,), 5)})
    with pytest.raises(ValueError, match="final_states"):
        Demonstrations(**{**good, "final_states": torch.zeros(3, 3)})


LATENTVI_IDS = (
    "latentvi/Obstacle-v0",
    "latentvi/Passages-v0",
    "latentvi/PixelChain-v0",
    "latentvi/PixelChainContinuous-v0",
)


def test_gym_make_finds_every_latentvi_id_after_one_import():
    import subprocess
    import sys

    script = (
        "import gymnasium as gym\n"
        f"ids = {LATENTVI_IDS!r}\n"
        "try:\n    gym.make(ids[2])\nexcept gym.error.Error:\n    print('unknown before')\n"
        "gym.make('latentvi.envs:' + ids[0])\n"  # Gymnasium's module:id form imports us
        "import latentvi.envs\n"
        "for i in ids:\n    gym.make(i).reset(seed=0)\n"
        "print('made', len(ids))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.split("\n")[:2] == ["unknown before", "made 4"], result.stderr


@pytest.mark.parametrize(
    ("env_id", "options"),
    [
        ("Pendulum-v1", {"pixels": True, "size": 32, "frame_stack": 2, "action_repeat": 2}),
        ("latentvi/PixelChain-v0", {"pixels": True, "size": 32, "frame_stack": 2}),
        ("latentvi/Obstacle-v0", {"pixels": True, "size": 32}),
        ("CartPole-v1", {"action_repeat": 3}),
    ],
)
def test_wrapped_environments_pass_gymnasium_checker_and_recreate_from_spec(env_id, options):
    from latentvi.envs.pixels import make_env

    env = make_env(env_id, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it recommends env.unwrapped: the point is not to
        check_env(env)
    again = gym.make(env.spec)  # every wrapper records its constructor arguments
    assert again.observation_space == env.observation_space
    first, _ = env.reset(seed=3)
    second, _ = again.reset(seed=3)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("task", list(TASKS))
def test_imitation_tasks_render_rgb_array(task):
    env = gym.make(TASKS[task].env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    base = env.unwrapped
    arena = base.layout.arena

    def pixel(point):  # world (x, y) -> the pixel drawn there (row 0 at y = +arena)
        column = int((point[0] + arena) / (2 * arena) * 96)
        row = int((arena - point[1]) / (2 * arena) * 96)
        return tuple(frame[min(row, 95), min(column, 95)])

    assert pixel(base._position) == (210, 40, 40)  # the robot, red
    assert pixel(base.goal) == (40, 170, 60)  # the goal, green
    obstacle = base.layout.discs[0][:2] if base.layout.discs else None
    if obstacle is not None:
        assert pixel(obstacle) == (150, 150, 150)
    with pytest.raises(ValueError, match="render_mode"):
        PointNavigationEnv(task, render_mode="ansi")
