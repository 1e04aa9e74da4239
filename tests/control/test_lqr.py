"""LQR against brute-force least squares and the Riccati fixed point; iLQR on a true pendulum."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from latentvi.control.lqr import MPC, goal_regulator, ilqr, jacobians, lqr, quadratic_cost, rollout
from latentvi.envs.pendulum import MAX_TORQUE, angle_of, step_features

pytestmark = pytest.mark.usefixtures("float64")  # exact-answer tests (tests/conftest.py)


def random_problem(horizon=5, x_dim=3, u_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(x_dim) + 0.3 * torch.randn(horizon, x_dim, x_dim, generator=g)
    B = torch.randn(horizon, x_dim, u_dim, generator=g)
    c = 0.5 * torch.randn(horizon, x_dim, generator=g)
    L = torch.randn(x_dim, x_dim, generator=g)
    Q = L @ L.T + 0.1 * torch.eye(x_dim)
    M = torch.randn(u_dim, u_dim, generator=g)
    R = M @ M.T + 0.5 * torch.eye(u_dim)
    q = torch.randn(horizon, x_dim, generator=g)
    r = torch.randn(horizon, u_dim, generator=g)
    Q_final = 2 * Q
    q_final = torch.randn(x_dim, generator=g)
    x0 = torch.randn(x_dim, generator=g)
    return A, B, c, Q, R, q, r, Q_final, q_final, x0


def total_cost(U, x0, A, B, c, Q, R, q, r, Q_final, q_final):
    x, cost = x0, 0.0
    for t in range(U.shape[0]):
        u = U[t]
        cost = cost + 0.5 * x @ Q @ x + q[t] @ x + 0.5 * u @ R @ u + r[t] @ u
        x = A[t] @ x + B[t] @ u + c[t]
    return cost + 0.5 * x @ Q_final @ x + q_final @ x


def test_lqr_matches_brute_force_least_squares():
    A, B, c, Q, R, q, r, Q_final, q_final, x0 = random_problem()
    args = (A, B, c, Q, R, q, r, Q_final, q_final)
    U0 = torch.zeros(5, 2)
    # The cost is an exact quadratic in U: its minimizer is −H⁻¹ g from the Hessian and gradient at 0.
    H = torch.autograd.functional.hessian(lambda U: total_cost(U, x0, *args), U0).reshape(10, 10)
    grad = torch.autograd.functional.jacobian(lambda U: total_cost(U, x0, *args), U0).reshape(10)
    best = -torch.linalg.solve(H, grad)
    solution = lqr(A, B, Q, R, Q_final, q=q, r=r, q_final=q_final, c=c)
    x, actions = x0, []
    for t in range(5):
        u = solution.K[t] @ x + solution.k[t]
        actions.append(u)
        x = A[t] @ x + B[t] @ u + c[t]
    torch.testing.assert_close(torch.stack(actions).reshape(10), best, atol=1e-9, rtol=1e-9)

    # The value function: V_0(x) − V_0(x') = J*(x) − J*(x') for the optimal costs from two starts.
    def optimal_cost(start):
        Hs = torch.autograd.functional.hessian(lambda U: total_cost(U, start, *args), U0)
        gs = torch.autograd.functional.jacobian(lambda U: total_cost(U, start, *args), U0)
        U = -torch.linalg.solve(Hs.reshape(10, 10), gs.reshape(10)).reshape(5, 2)
        return total_cost(U, start, *args)

    other = x0 + torch.tensor([1.0, -2.0, 0.5])
    value = lambda x: 0.5 * x @ solution.P[0] @ x + solution.p[0] @ x  # noqa: E731
    torch.testing.assert_close(
        value(x0) - value(other), optimal_cost(x0) - optimal_cost(other), atol=1e-8, rtol=1e-8
    )


def test_lqr_gain_converges_to_discrete_algebraic_riccati_solution():
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[1.0, 0.1], [0.0, 1.0]]) + 0.05 * torch.randn(2, 2, generator=g)
    B = torch.tensor([[0.0], [0.1]])
    Q, R = torch.diag(torch.tensor([1.0, 0.2])), torch.tensor([[0.1]])
    horizon = 400
    solution = lqr(A.expand(horizon, 2, 2), B.expand(horizon, 2, 1), Q, R, Q)
    P = scipy.linalg.solve_discrete_are(A.numpy(), B.numpy(), Q.numpy(), R.numpy())
    K = -np.linalg.solve(R.numpy() + B.numpy().T @ P @ B.numpy(), B.numpy().T @ P @ A.numpy())
    np.testing.assert_allclose(solution.P[0].numpy(), P, rtol=1e-8)
    np.testing.assert_allclose(solution.K[0].numpy(), K, rtol=1e-8)


def test_lqr_batches_match_single_problems():
    problems = [random_problem(seed=s) for s in range(3)]
    stacked = [torch.stack(items) for items in zip(*problems, strict=True)]
    A, B, c, Q, R, q, r, Q_final, q_final, _ = stacked
    # per-problem costs without a time axis broadcast as [N, 1, X, X]
    batched = lqr(A, B, Q[:, None], R[:, None], Q_final, q=q, r=r, q_final=q_final, c=c)
    for i, (A1, B1, c1, Q1, R1, q1, r1, Qf1, qf1, _) in enumerate(problems):
        single = lqr(A1, B1, Q1, R1, Qf1, q=q1, r=r1, q_final=qf1, c=c1)
        torch.testing.assert_close(batched.K[i], single.K)
        torch.testing.assert_close(batched.k[i], single.k)


def test_boxed_lqr_one_control_is_the_clamped_optimum():
    """One control, one step, x_0 = 0 and x_1 = x_0 + B u + c: the box-constrained optimum is the
    free optimum clamped to the box (found here by a grid search), and its feedback is dropped."""
    A = torch.eye(2).expand(1, 2, 2)
    B = torch.tensor([[1.0], [0.5]]).expand(1, 2, 1)
    c = torch.tensor([[3.0, 1.0]])
    Q, R = torch.eye(2), torch.tensor([[0.1]])
    free = lqr(A, B, Q, R, Q, c=c)
    boxed = lqr(A, B, Q, R, Q, c=c, low=-1.0, high=1.0)
    assert free.k.item() < -1.0  # the box is active
    grid = torch.linspace(-1, 1, 2001)
    costs = [
        total_cost(
            u.reshape(1, 1),
            torch.zeros(2),
            A,
            B,
            c,
            Q,
            R,
            torch.zeros(1, 2),
            torch.zeros(1, 1),
            Q,
            torch.zeros(2),
        )
        for u in grid
    ]
    best = grid[int(torch.stack(costs).argmin())]
    torch.testing.assert_close(boxed.k[0, 0], best, atol=1e-3, rtol=0)
    assert free.K.abs().sum() > 0
    assert (boxed.K == 0).all()


def test_ilqr_on_linear_dynamics_reaches_the_lqr_optimum_in_one_iteration():
    A, B, c, Q, R, *_ = random_problem(horizon=6, seed=5)
    A0, B0, c0 = A[0], B[0], c[0]
    goal = torch.tensor([1.0, -1.0, 0.5])
    x0 = torch.tensor([0.3, 0.2, -0.4])

    def dynamics(x, u):
        return x @ A0.T + u @ B0.T + c0

    result = ilqr(dynamics, x0, torch.zeros(6, 2), goal, Q, R, 3 * Q, iterations=1)

    # Brute force: the cost as a function of U is quadratic.
    def cost(U):
        return quadratic_cost(rollout(dynamics, x0, U), U, goal, Q, R, 3 * Q)

    U0 = torch.zeros(6, 2)
    H = torch.autograd.functional.hessian(cost, U0).reshape(12, 12)
    grad = torch.autograd.functional.jacobian(cost, U0).reshape(12)
    best = -torch.linalg.solve(H, grad)
    torch.testing.assert_close(result.actions.reshape(12), best, atol=1e-6, rtol=1e-6)
    assert result.history[0] > result.history[-1]


def test_jacobians_by_autograd_match_the_linear_map():
    A0 = torch.randn(3, 3)
    B0 = torch.randn(3, 2)
    a, b = jacobians(lambda x, u: torch.tanh(x) @ A0.T + u @ B0.T)(
        torch.zeros(4, 3), torch.ones(4, 2)
    )
    torch.testing.assert_close(a, A0.expand(4, 3, 3))
    torch.testing.assert_close(b, B0.expand(4, 3, 2))


def test_ilqr_swings_up_the_true_pendulum():
    """From hanging down (slightly off, to break the symmetry), with |u| ≤ 2 (too weak to lift it
    directly: it has to pump energy), the planned trajectory ends upright and at rest."""
    start = math.pi - 0.05
    x0 = torch.tensor([[math.cos(start), math.sin(start), 0.0]])
    Q = torch.diag(torch.tensor([1.0, 1.0, 0.1]))
    R = torch.tensor([[0.01]])
    goal = torch.tensor([1.0, 0.0, 0.0])
    result = ilqr(
        step_features,
        x0,
        torch.zeros(1, 100, 1),
        goal,
        Q,
        R,
        100 * Q,
        low=-MAX_TORQUE,
        high=MAX_TORQUE,
        iterations=100,
    )
    states = rollout(step_features, x0, result.actions)  # the plan, replayed
    assert result.actions.abs().max() <= MAX_TORQUE
    assert abs(angle_of(states[0, -1])) < 0.05
    assert abs(states[0, -1, 2]) < 0.2
    assert (result.history[1:] <= result.history[:-1]).all()


@pytest.mark.slow
def test_mpc_swings_up_and_balances_the_true_pendulum():
    Q = torch.diag(torch.tensor([1.0, 1.0, 0.1]))
    R = torch.tensor([[0.01]])
    goal = torch.tensor([1.0, 0.0, 0.0])
    starts = torch.tensor([math.pi - 0.1, math.pi + 0.1, math.pi - 0.02])
    x = torch.stack([torch.cos(starts), torch.sin(starts), torch.zeros(3)], -1)
    controller = MPC(
        step_features,
        goal,
        Q,
        R,
        10 * Q,
        horizon=50,
        action_dim=1,
        low=-MAX_TORQUE,
        high=MAX_TORQUE,
        iterations=5,
    )
    angles = []
    for _ in range(150):
        x = step_features(x, controller(x))
        angles.append(angle_of(x))
    angles = torch.stack(angles)
    assert (angles[-50:].abs() < 0.1).all()


def test_goal_regulator_holds_an_offset_goal_of_drifting_dynamics():
    # x' = 1.2 x + u + 0.3: unstable, and the goal 1 is no fixed point (u must cancel 0.5).
    # (A small action cost R leaves an offset of order R: 1e-5 here.)
    def dynamics(x, u):
        return 1.2 * x + u + 0.3

    goal = torch.tensor([1.0])
    eye = torch.eye(1)
    policy = goal_regulator(dynamics, goal, eye, 1e-4 * eye, eye, horizon=50, action_dim=1)
    x = torch.tensor([[3.0], [-2.0]])
    for _ in range(40):
        x = dynamics(x, policy(x))
    torch.testing.assert_close(x, torch.ones(2, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(policy(goal[None]), torch.tensor([[-0.5]]), atol=1e-3, rtol=0)


def _upright_pendulum_mpc(fallback: bool) -> float:
    """Largest |θ| over 60 agent steps (dt 0.1 s) of MPC from θ = 0.15 at rest, |u| ≤ 2."""

    def pendulum(x, u):
        return step_features(x, u, repeat=2)

    goal = torch.tensor([1.0, 0.0, 0.0])
    eye = torch.eye(3)
    box = {"horizon": 40, "action_dim": 1, "low": -MAX_TORQUE, "high": MAX_TORQUE}
    costs = (0.1 * eye, 0.1 * torch.eye(1), 10 * eye)
    policy = goal_regulator(pendulum, goal, *costs, **box) if fallback else None
    controller = MPC(pendulum, goal, *costs, iterations=8, fallback=policy, **box)
    x = torch.tensor([[math.cos(0.15), math.sin(0.15), 0.0]])
    worst = 0.0
    for _ in range(60):
        x = pendulum(x, controller(x))
        worst = max(worst, angle_of(x).abs().item())
    return worst


def test_mpc_with_the_goal_regulator_as_fallback_balances_where_warm_starts_fall():
    """Near the unstable upright state every open-loop start plans a fall, and iLQR stays in
    that basin; the regulator's closed-loop rollout starts it in the basin of balancing."""
    assert _upright_pendulum_mpc(fallback=False) > 1.0
    assert _upright_pendulum_mpc(fallback=True) < 0.2
