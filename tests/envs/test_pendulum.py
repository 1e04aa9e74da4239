"""Pendulum-v1's equations (latentvi.envs.pendulum) against the Gymnasium environment itself."""

import gymnasium as gym
import numpy as np
import torch

from latentvi.envs.pendulum import (
    MAX_TORQUE,
    angle_of,
    pendulum_step,
    step_features,
    step_normalized,
)


def environment_steps(theta, velocity, torques, g=10.0):
    """Set the environment's state, step it under ``torques``: the states after and the rewards."""
    env = gym.make("Pendulum-v1", g=g).unwrapped
    env.reset(seed=0)
    env.state = np.array([theta, velocity])
    states, rewards = [], []
    for torque in torques:
        _, reward, *_ = env.step(np.array([torque], np.float32))
        states.append(env.state.copy())
        rewards.append(reward)
    env.close()
    return np.array(states), np.array(rewards)


def test_steps_and_cost_match_the_environment():
    """Random states over the circle and the speed range, torques beyond the limit included (the
    environment clips them): states agree to 1e-6 and rewards are minus the cost, over 5 steps."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        theta, velocity = rng.uniform(-np.pi, np.pi), rng.uniform(-8, 8)
        torques = rng.uniform(-3, 3, 5).astype(np.float32).astype(np.float64)
        states, rewards = environment_steps(theta, velocity, torques)
        th, vel = theta, velocity
        for t, torque in enumerate(torques):
            th, vel, cost = pendulum_step(th, vel, torque)
            np.testing.assert_allclose([th, vel], states[t], atol=1e-6)
            np.testing.assert_allclose(-cost, rewards[t], atol=1e-6)


def test_gravity_matches_the_environment_built_with_that_g():
    """The ``gravity`` keyword (a deliberately wrong model for robustness checks) is the
    environment's own ``g``: g = 7 steps agree with ``Pendulum-v1(g=7)`` and differ from g = 10."""
    torques = np.array([0.5, -1.0, 2.0, 0.0])
    states, _ = environment_steps(0.4, -1.0, torques, g=7.0)
    th, vel = 0.4, -1.0
    for t, torque in enumerate(torques):
        th, vel, _ = pendulum_step(th, vel, torque, gravity=7.0)
        np.testing.assert_allclose([th, vel], states[t], atol=1e-6)
    assert (
        abs(pendulum_step(0.4, -1.0, 0.5)[1] - pendulum_step(0.4, -1.0, 0.5, gravity=7.0)[1]) > 0.05
    )


def test_repeat_sums_the_single_steps_and_torch_matches_numpy():
    rng = np.random.default_rng(1)
    theta, velocity = rng.uniform(-np.pi, np.pi, 50), rng.uniform(-8, 8, 50)
    torque = rng.uniform(-MAX_TORQUE, MAX_TORQUE, 50)
    th, vel, total = theta, velocity, 0.0
    for _ in range(3):
        th, vel, cost = pendulum_step(th, vel, torque)
        total = total + cost
    repeated = pendulum_step(theta, velocity, torque, repeat=3)
    np.testing.assert_allclose(repeated, (th, vel, total), rtol=1e-12)
    as_torch = pendulum_step(*(torch.from_numpy(v) for v in (theta, velocity, torque)), repeat=3)
    np.testing.assert_allclose([v.numpy() for v in as_torch], repeated, rtol=1e-12)


def test_features_step_is_the_same_motion_and_differentiable():
    theta = torch.tensor([0.3, -2.0, 3.1], dtype=torch.float64)
    velocity = torch.tensor([1.0, -7.0, 0.0], dtype=torch.float64)
    x = torch.stack([theta.cos(), theta.sin(), velocity], -1).requires_grad_()
    torque = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    nxt = step_features(x, torque, repeat=2)
    th, vel, _ = pendulum_step(theta, velocity, torque[:, 0], repeat=2)
    torch.testing.assert_close(angle_of(nxt), torch.atan2(th.sin(), th.cos()))
    torch.testing.assert_close(nxt[:, 2], vel)
    nxt[:, 2].sum().backward()  # θ̇' depends on θ through sin θ: a non-zero gradient
    assert x.grad.abs().sum() > 0
    # the normalized action u = torque / MAX_TORQUE gives the same step
    torch.testing.assert_close(step_normalized(x, torque / MAX_TORQUE, repeat=2), nxt)
