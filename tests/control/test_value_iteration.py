"""Grid value iteration against the discounted Riccati solution; swing-up of the true pendulum."""

import functools
import math

import pytest
import torch

from latentvi.control.value_iteration import Grid, greedy_policy, value_iteration
from latentvi.envs.pendulum import angle_of, step_normalized

pytestmark = pytest.mark.usefixtures("float64")  # exact-answer tests (tests/conftest.py)


def box(dim, cells):
    return Grid(-torch.ones(dim), 2 * torch.ones(dim), cells)


def test_interpolation_is_exact_at_nodes_and_for_multilinear_functions():
    grid = box(3, 5)
    points = grid.points()
    assert points.shape == (125, 3)

    def f(x):  # multilinear: affine in each coordinate
        return 1.5 + x[..., 0] - 2 * x[..., 1] * x[..., 2] + 0.5 * x.prod(-1)

    values = f(points)
    assert torch.allclose(grid.interpolate(values, points), values, atol=1e-12)
    inside = -1 + 3 * torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(grid.interpolate(values, inside), f(inside), atol=1e-12)
    indices, weights = grid.weights(inside)
    assert indices.shape == weights.shape == (200, 8)
    assert (weights >= 0).all() and torch.allclose(weights.sum(-1), torch.ones(200))
    assert torch.allclose(grid.matrix(inside) @ values, f(inside), atol=1e-12)  # the sparse form


def test_points_outside_the_box_are_projected_onto_it():
    grid = box(2, 4)
    values = grid.points().sum(-1)
    outside = torch.tensor([[-5.0, 0.5], [9.0, 9.0]])
    assert torch.allclose(grid.interpolate(values, outside), torch.tensor([-0.5, 4.0]))


def discounted_riccati(a, b, q, r, gamma):
    """P of V(x) = ½ P x² for x' = a x + b u, cost ½ q x² + ½ r u², discount γ; and the gain K."""
    p = q
    for _ in range(10_000):
        p = q + gamma * a * a * p - (gamma * a * b * p) ** 2 / (r + gamma * b * b * p)
    return p, gamma * a * b * p / (r + gamma * b * b * p)


def test_value_iteration_matches_the_discounted_riccati_solution():
    a, b, q, r, gamma = 1.1, 0.5, 1.0, 0.5, 0.95  # open-loop unstable
    P, K = discounted_riccati(a, b, q, r, gamma)

    def dynamics(x, u):
        return a * x + b * u

    def cost(x, u):
        return 0.5 * q * x[..., 0] ** 2 + 0.5 * r * u[..., 0] ** 2

    grid = Grid(torch.tensor([-3.0]), torch.tensor([3.0]), 601)
    actions = torch.linspace(-6, 6, 241).unsqueeze(-1)
    value = value_iteration(dynamics, cost, grid, actions, discount=gamma, tolerance=1e-10)
    assert value.residual < 1e-10 and value.sweeps < 500
    x = torch.linspace(-1, 1, 21).unsqueeze(-1)
    exact = 0.5 * P * x[:, 0] ** 2
    # interpolation error ~ P h² / 8 per step, accumulated over ~1/(1−γ) steps; actions 0.05 apart
    assert torch.allclose(value(x), exact, atol=2e-3)
    policy = greedy_policy(dynamics, cost, value, torch.linspace(-6, 6, 1201).unsqueeze(-1))
    assert torch.allclose(policy(x), -K * x, atol=0.02)
    assert policy(x).shape == (21, 1)


def test_value_iteration_stops_at_max_sweeps_and_reports_the_residual():
    grid = Grid(torch.tensor([0.0]), torch.tensor([1.0]), 3)
    value = value_iteration(
        lambda x, u: x,
        lambda x, u: torch.ones(x.shape[0]),
        grid,
        torch.zeros(1, 1),
        discount=0.5,
        max_sweeps=3,
    )
    # V_k = 1 + ½ + ¼ after three sweeps; the last change was ¼
    assert value.sweeps == 3 and value.residual == pytest.approx(0.25)
    assert torch.allclose(value.values, torch.full((3,), 1.75))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Grid(torch.zeros(2), torch.ones(3), 4), "low"),
        (lambda: Grid(torch.zeros(2), torch.tensor([1.0, 0.0]), 4), "high"),
        (lambda: Grid(torch.zeros(2), torch.ones(2), 1), "cells"),
        (
            lambda: value_iteration(
                lambda x, u: x, lambda x, u: x[..., 0], box(1, 3), torch.zeros(1, 1), discount=1.0
            ),
            "discount",
        ),
        (
            lambda: value_iteration(
                lambda x, u: x, lambda x, u: x[..., 0], box(1, 3), torch.zeros(3), discount=0.9
            ),
            "actions",
        ),
    ],
)
def test_bad_arguments_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.slow
def test_greedy_policy_swings_the_pendulum_up_and_balances():
    """On the true pendulum's features (cos θ, sin θ, θ̇), agent step 0.1 s, |torque| ≤ 2: the
    value function's greedy policy swings up from hanging down and holds upright, where
    receding-horizon iLQR with the same stage cost and an 80-step plan needs an exact model."""
    torch.set_default_dtype(torch.float32)

    pendulum = functools.partial(step_normalized, repeat=2)

    goal = torch.tensor([1.0, 0.0, 0.0])

    def cost(x, u):
        return 0.05 * (x - goal).square().sum(-1) + 0.05 * u.square().sum(-1)

    grid = Grid(torch.tensor([-1.1, -1.1, -8.5]), torch.tensor([1.1, 1.1, 8.5]), 60)
    value = value_iteration(pendulum, cost, grid, torch.linspace(-1, 1, 9)[:, None], discount=0.99)
    policy = greedy_policy(pendulum, cost, value, torch.linspace(-1, 1, 21)[:, None])
    theta = math.pi + torch.linspace(-0.2, 0.2, 8)
    x = torch.stack([theta.cos(), theta.sin(), torch.zeros(8)], -1)
    angles = []
    for _ in range(100):
        x = pendulum(x, policy(x))
        angles.append(angle_of(x).abs())
    assert (torch.stack(angles, 1)[:, -25:] < 0.1).all()
