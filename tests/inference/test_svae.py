"""Structured VI (the SVAE construction): exact where the encoder is exact, and its KL, log Z and
transition statistics against the joint Gaussian written out in full."""

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from latentvi.inference.svae import Potentials, affine_ssm, structured_elbo, structured_posterior
from latentvi.models.kalman import LinearGaussianSSM

pytestmark = pytest.mark.usefixtures("float64")

A = torch.tensor([[0.9, 0.2], [-0.1, 0.95]], dtype=torch.float64)
B = torch.tensor([[0.0, 0.3], [0.5, 0.1]], dtype=torch.float64)
C_OFF = torch.tensor([0.1, -0.2], dtype=torch.float64)
Q = torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=torch.float64)
M0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
P0 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)


def _model():
    return affine_ssm(torch.cat([A, B, C_OFF[:, None]], 1), Q, M0, P0)


def test_elbo_equals_kalman_log_marginal_with_exact_encoder():
    g = torch.Generator().manual_seed(0)
    steps, batch, d = 6, 3, 5
    emission = torch.randn(d, 2, generator=g)
    root = torch.randn(d, d, generator=g)
    obs_cov = 0.3 * root @ root.T / d + 0.1 * torch.eye(d)
    # the true model: bias folded into the control, as affine_ssm does
    truth = LinearGaussianSSM(
        A, emission, Q, obs_cov, M0, P0, control=torch.cat([B, C_OFF[:, None]], 1)
    )
    actions = torch.randn(steps, batch, 2, generator=g)
    controls = torch.cat([actions, torch.ones(steps, batch, 1)], -1)
    _, obs = truth.sample(steps, (batch,), controls, generator=g)
    # exact potentials: the likelihood p(o_t | x_t) as a function of x_t
    precision = torch.linalg.inv(obs_cov)
    J = (emission.T @ precision @ emission).expand(steps, batch, 2, 2)
    h = obs @ (precision @ emission)
    potentials = Potentials.from_natural(h, J)
    posterior = structured_posterior(_model(), potentials, actions)
    # E_q[log N(o; C x, R)] in closed form from the marginals
    mean_obs = posterior.means @ emission.T
    expected = MultivariateNormal(mean_obs, covariance_matrix=obs_cov).log_prob(obs) - 0.5 * (
        torch.diagonal(precision @ emission @ posterior.covs @ emission.T, dim1=-2, dim2=-1).sum(-1)
    )
    elbo = structured_elbo(expected.sum(0), posterior)
    exact = truth.log_marginal(obs, controls)
    torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-6)
    means, covs, _ = truth.smooth(obs, controls)
    torch.testing.assert_close(posterior.means, means)
    torch.testing.assert_close(posterior.covs, covs)


def _joint_prior(actions):
    """p(x_{1:T} | u) as one Gaussian over the flattened [T·n]."""
    steps = actions.shape[0]
    means, covs = [M0], {(0, 0): P0}
    for t in range(1, steps):
        means.append(A @ means[-1] + B @ actions[t] + C_OFF)
        for s in range(t):
            covs[(t, s)] = A @ covs[(t - 1, s)]
        covs[(t, t)] = A @ covs[(t - 1, t - 1)] @ A.T + Q
    full = torch.zeros(2 * steps, 2 * steps)
    for (t, s), block in covs.items():
        full[2 * t : 2 * t + 2, 2 * s : 2 * s + 2] = block
        full[2 * s : 2 * s + 2, 2 * t : 2 * t + 2] = block.T
    return torch.cat(means), full


def test_kl_log_normalizer_and_statistics_against_the_joint_gaussian():
    g = torch.Generator().manual_seed(1)
    steps = 4
    actions = torch.randn(steps, 2, generator=g)
    y = torch.randn(steps, 2, generator=g)
    root = torch.randn(steps, 2, 2, generator=g)
    R = root @ root.mT + 0.2 * torch.eye(2)
    posterior = structured_posterior(_model(), Potentials(y, R), actions)
    mean_p, cov_p = _joint_prior(actions)
    noise = torch.block_diag(*R)
    log_z = MultivariateNormal(mean_p, covariance_matrix=cov_p + noise).log_prob(y.reshape(-1))
    torch.testing.assert_close(posterior.log_normalizer, log_z)
    precision_q = torch.linalg.inv(cov_p) + torch.linalg.inv(noise)
    cov_q = torch.linalg.inv(precision_q)
    mean_q = cov_q @ (torch.linalg.solve(cov_p, mean_p) + torch.linalg.solve(noise, y.reshape(-1)))
    q = MultivariateNormal(mean_q, covariance_matrix=0.5 * (cov_q + cov_q.T))
    p = MultivariateNormal(mean_p, covariance_matrix=cov_p)
    torch.testing.assert_close(posterior.kl, kl_divergence(q, p))
    assert float(posterior.kl.detach()) > 0
    # expected transition statistics: Σ_t E[x_{t+1} x_tᵀ] from the joint's blocks
    second = cov_q + torch.outer(mean_q, mean_q)
    expected = sum(second[2 * t + 2 : 2 * t + 4, 2 * t : 2 * t + 2] for t in range(steps - 1))
    stats = posterior.transition_stats(actions)
    torch.testing.assert_close(stats.yz[:, :2], expected)
    torch.testing.assert_close(stats.yz[:, 4], mean_q.reshape(steps, 2)[1:].sum(0))
    assert float(stats.count) == steps - 1


def test_gradients_reach_the_potentials_and_bad_shapes_fail():
    y = torch.zeros(3, 2, requires_grad=True)
    posterior = structured_posterior(
        _model(), Potentials.diagonal(y, torch.ones(3, 2)), torch.zeros(3, 2)
    )
    posterior.kl.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="actions"):
        structured_posterior(_model(), Potentials.diagonal(y, torch.ones(3, 2)), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="weights"):
        affine_ssm(torch.zeros(2, 2), Q, M0, P0)
