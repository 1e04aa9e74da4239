"""The MNIW prior: its conjugate update against closed forms, its expectations against samples."""

import math

import pytest
import torch

from latentvi.models.mniw import MNIW, transition_stats

pytestmark = pytest.mark.usefixtures("float64")


def _problem(seed=0, n=2, p=3, count=40):
    g = torch.Generator().manual_seed(seed)
    prior = MNIW.create(
        torch.randn(n, p, generator=g),
        torch.eye(p) * 0.5 + 0.1 * torch.ones(p, p),
        torch.eye(n) * 1.5 + 0.2 * torch.ones(n, n),
        n + 3.0,
    )
    x = torch.randn(count, p, generator=g)
    y = x @ torch.randn(p, n, generator=g) + 0.3 * torch.randn(count, n, generator=g)
    return prior, x, y


def test_update_equals_bayesian_linear_regression_via_ols_form():
    prior, x, y = _problem()
    post = prior.update(transition_stats(x, y))
    # closed form written around the least-squares fit Ŵ (a different route from the update)
    w_hat = torch.linalg.lstsq(x, y).solution.T  # [n, p]
    v0 = torch.linalg.inv(prior.col_precision)
    k_n = prior.col_precision + x.T @ x
    m_n = (prior.mean @ prior.col_precision + w_hat @ (x.T @ x)) @ torch.linalg.inv(k_n)
    residual = y - x @ w_hat.T
    gap = w_hat - prior.mean
    psi = (
        prior.scale
        + residual.T @ residual
        + gap @ torch.linalg.inv(v0 + torch.linalg.inv(x.T @ x)) @ gap.T
    )
    torch.testing.assert_close(post.mean, m_n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.col_precision, k_n)
    torch.testing.assert_close(post.scale, psi, rtol=1e-9, atol=1e-9)
    assert float(post.dof) == float(prior.dof) + x.shape[0]


def test_update_mean_equals_gaussian_posterior_for_fixed_noise():
    """Given Σ, vec W has prior N(vec M, V ⊗ Σ); its exact Gaussian posterior (built as one
    [n·p] system) has the MNIW posterior mean, for any Σ."""
    prior, x, y = _problem(seed=1)
    n, p = prior.shape
    sigma = torch.tensor([[0.7, 0.2], [0.2, 0.4]])
    v0 = torch.linalg.inv(prior.col_precision)
    # column-major vec: vec(W) with W [n, p]; Cov = V ⊗ Σ
    prior_precision = torch.linalg.inv(torch.kron(v0.contiguous(), sigma))
    design = torch.kron(x, torch.eye(n))  # y_i = (z_iᵀ ⊗ I) vec W
    noise_precision = torch.kron(torch.eye(x.shape[0]), torch.linalg.inv(sigma).contiguous())
    precision = prior_precision + design.T @ noise_precision @ design
    vec_m0 = prior.mean.T.reshape(-1)
    rhs = prior_precision @ vec_m0 + design.T @ noise_precision @ y.reshape(-1)
    posterior_vec = torch.linalg.solve(precision, rhs)
    post = prior.update(transition_stats(x, y))
    torch.testing.assert_close(post.mean, posterior_vec.reshape(p, n).T, rtol=1e-10, atol=1e-10)


def test_sequential_updates_and_natural_step():
    prior, x, y = _problem(seed=2)
    whole = prior.update(transition_stats(x, y))
    twice = prior.update(transition_stats(x[:15], y[:15])).update(transition_stats(x[15:], y[15:]))
    stepped = prior.natural_step(prior, transition_stats(x, y), 1.0)
    for a, b, c in zip(whole, twice, stepped, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="rate"):
        prior.natural_step(prior, transition_stats(x, y), 0.0)


def test_expected_stats_match_samples():
    prior, _, _ = _problem(seed=3)
    weights, cov = prior.sample(40_000, torch.Generator().manual_seed(0))
    precision = torch.linalg.inv(cov)
    e = prior.expected_stats()
    torch.testing.assert_close(precision.mean(0), e.precision, rtol=0.03, atol=0.03)
    torch.testing.assert_close(
        (precision @ weights).mean(0), e.precision_weights, rtol=0.03, atol=0.03
    )
    torch.testing.assert_close(
        (weights.mT @ precision @ weights).mean(0),
        e.weights_precision_weights,
        rtol=0.03,
        atol=0.05,
    )
    log_det = torch.linalg.slogdet(precision)[1].mean()
    assert abs(float(log_det - e.log_det_precision)) < 0.03
    torch.testing.assert_close(cov.mean(0), prior.noise_mean(), rtol=0.05, atol=0.05)


def test_expected_log_likelihood_matches_samples():
    prior, x, y = _problem(seed=4, count=5)
    stats = transition_stats(x, y)
    weights, cov = prior.sample(20_000, torch.Generator().manual_seed(1))
    dist = torch.distributions.MultivariateNormal(
        (x @ weights.mT).transpose(0, 1), covariance_matrix=cov
    )
    monte_carlo = dist.log_prob(y[:, None]).sum(0).mean()
    assert abs(float(monte_carlo - prior.expected_log_likelihood(stats))) < 0.05 * abs(
        float(monte_carlo)
    )


def test_posterior_converges_to_true_dynamics():
    g = torch.Generator().manual_seed(5)
    a = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
    b = torch.tensor([[0.0, 0.05], [0.1, 0.0]])
    sigma = torch.tensor([[0.02, 0.005], [0.005, 0.01]])
    x = torch.randn(20_000, 2, generator=g)
    u = torch.randn(20_000, 2, generator=g)
    noise = torch.randn(20_000, 2, generator=g) @ torch.linalg.cholesky(sigma).T
    y = x @ a.T + u @ b.T + noise
    post = MNIW.weak(2, 4).update(transition_stats(torch.cat([x, u], -1), y))
    torch.testing.assert_close(post.mean, torch.cat([a, b], -1), atol=5e-3, rtol=0)
    torch.testing.assert_close(post.noise_mean(), sigma, atol=1e-3, rtol=0)
    torch.testing.assert_close(post.point_estimate()[1], sigma, atol=1e-3, rtol=0)


def test_latent_statistics_add_covariances():
    z, y = torch.randn(3, 2), torch.randn(3, 1)
    zc = torch.eye(2).expand(3, 2, 2)
    stats = transition_stats(z, y, zc, torch.ones(3, 1, 1), torch.zeros(3, 1, 2))
    torch.testing.assert_close(stats.zz, z.T @ z + 3 * torch.eye(2))
    torch.testing.assert_close(stats.yy, y.T @ y + 3)
    assert math.isclose(float(stats.count), 3.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dof"):
        MNIW.create(torch.zeros(2, 3), torch.eye(3), torch.eye(2), 0.5)
    with pytest.raises(ValueError, match="scale"):
        MNIW.create(torch.zeros(2, 3), torch.eye(3), -torch.eye(2), 4.0)
    with pytest.raises(ValueError, match="inputs"):
        transition_stats(torch.zeros(3, 2), torch.zeros(4, 1))
