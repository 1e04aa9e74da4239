"""CEM against the closed-form optimum of a linear-quadratic problem; λ-returns by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvi.control.cem import cem
from latentvi.rl.returns import discounted_weights, lambda_return

# A double integrator: position and velocity, force as the action (dt = 0.1).
A = np.array([[1.0, 0.1], [0.0, 1.0]])
B = np.array([[0.0], [0.1]])
Q = np.diag([1.0, 0.1])
R = np.array([[0.01]])
X0 = np.array([1.0, 0.0])
H = 6


def _rollout_cost(actions: torch.Tensor) -> torch.Tensor:
    """Σ_{t=1..H} x_tᵀ Q x_t + Σ_{t=0..H-1} u_tᵀ R u_t for actions ``[N, H, 1]`` (float64)."""
    a, b, q, r = (torch.as_tensor(m) for m in (A, B, Q, R))
    x = torch.as_tensor(X0).expand(actions.shape[0], 2)
    cost = torch.zeros(actions.shape[0], dtype=torch.float64)
    for t in range(actions.shape[1]):
        u = actions[:, t].double()
        cost = cost + ((u @ r) * u).sum(-1)
        x = x @ a.T + u @ b.T
        cost = cost + ((x @ q) * x).sum(-1)
    return cost


def _lqr_plan() -> np.ndarray:
    """The optimal open-loop controls of the finite-horizon LQR by the Riccati recursion."""
    p = Q.copy()  # terminal cost x_Hᵀ Q x_H
    gains = []
    for _ in range(H):
        gain = np.linalg.solve(R + B.T @ p @ B, B.T @ p @ A)
        gains.append(gain)
        p = Q + A.T @ p @ (A - B @ gain)
    gains.reverse()
    x, plan = X0.copy(), []
    for gain in gains:
        u = -gain @ x
        plan.append(u)
        x = A @ x + B @ u
    return np.array(plan)  # [H, 1]


def _least_squares_plan() -> np.ndarray:
    """The same optimum as a quadratic program in the stacked controls (a check of the reference)."""
    # x_t = A^t x0 + Σ_{s<t} A^{t-1-s} B u_s, for t = 1..H
    rows, offsets = [], []
    for t in range(1, H + 1):
        row = np.zeros((2, H))
        for s in range(t):
            row[:, s] = (np.linalg.matrix_power(A, t - 1 - s) @ B)[:, 0]
        rows.append(row)
        offsets.append(np.linalg.matrix_power(A, t) @ X0)
    g, c = np.vstack(rows), np.concatenate(offsets)
    q_big = np.kron(np.eye(H), Q)
    hessian = g.T @ q_big @ g + R[0, 0] * np.eye(H)
    return np.linalg.solve(hessian, -g.T @ q_big @ c)[:, None]


def test_references_agree():
    np.testing.assert_allclose(_lqr_plan(), _least_squares_plan(), atol=1e-10)


def test_cem_finds_the_lqr_optimum():
    optimum = torch.as_tensor(_lqr_plan())
    generator = torch.Generator().manual_seed(0)
    plan = cem(
        lambda actions: -_rollout_cost(actions),
        horizon=H,
        action_dim=1,
        low=-20.0,
        high=20.0,
        candidates=1000,
        iterations=30,
        top_k=50,
        generator=generator,
    )
    assert plan.shape == (H, 1)
    best = _rollout_cost(optimum[None])[0]
    found = _rollout_cost(plan[None].double())[0]
    # The cost is quadratic: within 1e-4 of its minimum means ‖plan − u*‖_Hess small.
    assert found - best < 1e-4 * best
    np.testing.assert_allclose(plan.double().numpy(), optimum.numpy(), atol=0.05)
    # a uniform guess is far worse, so the test can fail
    assert _rollout_cost(torch.zeros(1, H, 1))[0] - best > 0.1 * best


def test_cem_respects_bounds_and_validates():
    plan = cem(lambda a: a.sum((1, 2)), 4, 2, low=-1.0, high=0.5, candidates=64, iterations=3,
               top_k=8, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert plan.shape == (4, 2) and bool((plan <= 0.5).all()) and bool((plan >= -1).all())
    assert float(plan.mean()) > 0.3  # pushed to the upper bound
    with pytest.raises(ValueError, match="top_k"):
        cem(lambda a: a.sum((1, 2)), 4, 2, -1.0, 1.0, candidates=8, top_k=9)
    with pytest.raises(ValueError, match="objective returned"):
        cem(lambda a: a.sum(2), 4, 2, -1.0, 1.0, candidates=8, top_k=2)


def test_lambda_return_hand_computation():
    # H = 3, one trajectory; γ_t = 0.9, 0.9, 0 (terminal after step 2), λ = 0.5
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    discounts = torch.tensor([[0.9], [0.9], [0.0]])
    # G_2 = 3 + 0 = 3
    # G_1 = 2 + 0.9 (0.5·30 + 0.5·3) = 2 + 0.9·16.5 = 16.85
    # G_0 = 1 + 0.9 (0.5·20 + 0.5·16.85) = 1 + 0.9·18.425 = 17.5825
    expected = torch.tensor([[17.5825], [16.85], [3.0]])
    torch.testing.assert_close(lambda_return(rewards, values, discounts, 0.5), expected)


def test_lambda_one_is_monte_carlo_and_zero_is_td():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    values = torch.randn(6, 2, 3, generator=generator, dtype=torch.float64)
    gamma = 0.95
    monte_carlo = torch.stack([
        sum(gamma ** (k - t) * rewards[k] for k in range(t, 5)) + gamma ** (5 - t) * values[5]
        for t in range(5)
    ])  # fmt: skip
    torch.testing.assert_close(lambda_return(rewards, values, gamma, 1.0), monte_carlo)
    torch.testing.assert_close(
        lambda_return(rewards, values, gamma, 0.0), rewards + gamma * values[1:]
    )
    with pytest.raises(ValueError, match="lam"):
        lambda_return(rewards, values, gamma, 1.5)
    with pytest.raises(ValueError, match="one more step"):
        lambda_return(rewards, values[:-1], gamma, 0.5)


def test_discounted_weights():
    discounts = torch.tensor([[0.9], [0.5], [0.0], [0.9]])
    torch.testing.assert_close(
        discounted_weights(discounts), torch.tensor([[1.0], [0.9], [0.45], [0.0]])
    )
