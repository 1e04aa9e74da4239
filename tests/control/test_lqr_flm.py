"""LQR-FLM: the KL bound holds, the KL formula agrees with samples, and a large bound gives LQR."""

import pytest
import torch

from latentvi.control.lqr import lqr
from latentvi.control.lqr_flm import (
    LinearGaussianDynamics,
    LinearGaussianPolicy,
    QuadraticCost,
    expected_cost,
    lqr_flm,
    max_entropy_lqr,
    trajectory_kl,
)

pytestmark = pytest.mark.usefixtures("float64")


def _problem(seed=0, n=3, m=2, horizon=12):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(n) + 0.1 * torch.randn(horizon, n, n, generator=g)
    B = 0.3 * torch.randn(horizon, n, m, generator=g)
    c = 0.05 * torch.randn(horizon, n, generator=g)
    dynamics = LinearGaussianDynamics(
        A, B, c, 0.01 * torch.eye(n).expand(horizon, n, n), torch.ones(n), 0.1 * torch.eye(n)
    )
    cost = QuadraticCost.stationary(
        torch.eye(n), 0.1 * torch.eye(m), horizon, Q_final=5 * torch.eye(n)
    )
    old = LinearGaussianPolicy.initial(horizon, n, m, 1.0)
    return dynamics, cost, old


@pytest.mark.parametrize("bound", [0.05, 0.5, 2.0])
def test_kl_bound_holds_and_is_active(bound):
    dynamics, cost, old = _problem()
    result = lqr_flm(dynamics, cost, old, bound, tolerance=0.02)
    kl = float(trajectory_kl(dynamics, result.policy, old)) / old.K.shape[0]
    assert kl == pytest.approx(result.kl)
    assert (1 - 0.02) * bound <= kl <= bound * (1 + 1e-9)
    assert expected_cost(dynamics, result.policy, cost) < expected_cost(dynamics, old, cost)


def test_tighter_bound_costs_more():
    dynamics, cost, old = _problem(seed=1)
    costs = [
        float(expected_cost(dynamics, lqr_flm(dynamics, cost, old, b).policy, cost))
        for b in (0.05, 0.2, 1.0)
    ]
    assert costs[0] > costs[1] > costs[2]


def test_trajectory_kl_and_cost_match_samples():
    dynamics, cost, old = _problem(seed=2)
    new = max_entropy_lqr(dynamics, cost, old, eta=3.0)
    g = torch.Generator().manual_seed(0)
    count, horizon = 40_000, old.K.shape[0]
    x = (
        dynamics.initial_mean
        + torch.randn(count, 3, generator=g) @ torch.linalg.cholesky(dynamics.initial_cov).T
    )
    log_ratio, total = torch.zeros(count), torch.zeros(count)
    for t in range(horizon):
        mean_new = x @ new.K[t].T + new.k[t]
        p_new = torch.distributions.MultivariateNormal(mean_new, covariance_matrix=new.cov[t])
        p_old = torch.distributions.MultivariateNormal(
            x @ old.K[t].T + old.k[t], covariance_matrix=old.cov[t]
        )
        u = mean_new + torch.randn(count, 2, generator=g) @ (torch.linalg.cholesky(new.cov[t]).T)
        log_ratio += p_new.log_prob(u) - p_old.log_prob(u)
        total += 0.5 * ((x @ cost.Q[t]) * x).sum(-1) + 0.5 * ((u @ cost.R[t]) * u).sum(-1)
        noise = torch.randn(count, 3, generator=g) @ torch.linalg.cholesky(dynamics.noise[t]).T
        x = x @ dynamics.A[t].T + u @ dynamics.B[t].T + dynamics.c[t] + noise
    total += 0.5 * ((x @ cost.Q_final) * x).sum(-1)
    kl = float(trajectory_kl(dynamics, new, old))
    assert abs(float(log_ratio.mean()) - kl) < 0.03 * kl
    exact = float(expected_cost(dynamics, new, cost))
    assert abs(float(total.mean()) - exact) < 0.02 * exact


def test_large_bound_gives_the_lqr_controller():
    dynamics, cost, old = _problem(seed=3)
    result = lqr_flm(dynamics, cost, old, 50.0)
    assert result.eta == pytest.approx(1e-6)
    plain = lqr(dynamics.A, dynamics.B, cost.Q, cost.R, cost.Q_final, c=dynamics.c)
    torch.testing.assert_close(result.policy.K, plain.K, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.policy.k, plain.k, rtol=1e-4, atol=1e-5)


def test_cross_term_one_step_closed_form():
    dynamics, _, old = _problem(seed=4, horizon=1)
    g = torch.Generator().manual_seed(1)
    N = 0.2 * torch.randn(1, 2, 3, generator=g)
    cost = QuadraticCost(
        torch.eye(3)[None], torch.zeros(1, 3), 0.5 * torch.eye(2)[None],
        torch.tensor([[0.1, -0.2]]), N, 2 * torch.eye(3), torch.tensor([0.3, 0.0, -0.1]),
    )  # fmt: skip
    x0 = torch.tensor([0.4, -0.3, 1.0])
    policy = max_entropy_lqr(dynamics, cost, old, eta=1e-9)
    A, B, c = dynamics.A[0], dynamics.B[0], dynamics.c[0]
    hessian = cost.R[0] + B.T @ cost.Q_final @ B
    gradient = N[0] @ x0 + cost.r[0] + B.T @ (cost.Q_final @ (A @ x0 + c) + cost.q_final)
    torch.testing.assert_close(
        policy.K[0] @ x0 + policy.k[0], -torch.linalg.solve(hessian, gradient), rtol=1e-6, atol=1e-6
    )


def test_bad_arguments():
    dynamics, cost, old = _problem()
    with pytest.raises(ValueError, match="kl_bound"):
        lqr_flm(dynamics, cost, old, 0.0)
    with pytest.raises(ValueError, match="eta_range"):
        lqr_flm(dynamics, cost, old, 1.0, eta_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="eta"):
        max_entropy_lqr(dynamics, cost, old, -1.0)
