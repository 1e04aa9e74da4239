"""The exact models against identities that hold to floating-point precision (float64)."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from latentvi.distributions import diagonal_gaussian
from latentvi.models import GaussianMixture, LinearGaussian

TOL = 1e-9  # float64 identities; the largest residual seen is ~1e-13


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return LinearGaussian(weight, torch.randn(6, generator=g, dtype=torch.float64), 0.7)


@pytest.fixture
def mixture():
    g = torch.Generator().manual_seed(1)
    means = 2.0 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    scales = 0.5 + torch.rand(4, 3, generator=g, dtype=torch.float64)
    logits = torch.randn(4, generator=g, dtype=torch.float64)
    return GaussianMixture(logits, means, scales)


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_linear_gaussian_shapes(linear, batch):
    x = torch.randn(*batch, 6, dtype=torch.float64)
    assert linear.log_marginal(x).shape == batch
    post = linear.posterior(x)
    assert post.batch_shape == batch and post.event_shape == (3,)
    z = torch.randn(5, *batch, 3, dtype=torch.float64)
    assert linear.log_joint(x, z).shape == (5, *batch)


def test_linear_gaussian_bayes_identity(linear):
    """log p(x) = log p(x, z) − log p(z|x) for every z: ties marginal and posterior together."""
    x = linear.sample(8, torch.Generator().manual_seed(2))
    z = torch.randn(5, 8, 3, dtype=torch.float64)
    via_bayes = linear.log_joint(x, z) - linear.posterior(x).log_prob(z)
    expected = linear.log_marginal(x).expand(5, 8)
    torch.testing.assert_close(via_bayes, expected, rtol=TOL, atol=TOL)


def test_linear_gaussian_marginal_is_ppca_formula(linear):
    x = linear.sample(4, torch.Generator().manual_seed(3))
    w, b, s2 = linear.weight, linear.bias, linear.noise_std**2
    cov = w @ w.T + s2 * torch.eye(6, dtype=torch.float64)
    r = x - b
    quad = torch.einsum("nd,de,ne->n", r, torch.linalg.inv(cov), r)
    expected = -0.5 * (6 * math.log(2 * math.pi) + torch.logdet(cov) + quad)
    torch.testing.assert_close(linear.log_marginal(x), expected, rtol=TOL, atol=TOL)


def test_linear_gaussian_expected_log_likelihood_matches_monte_carlo(linear):
    torch.manual_seed(4)
    x = linear.sample(3)
    q = diagonal_gaussian(
        torch.randn(3, 3, dtype=torch.float64), torch.full((3, 3), 0.6, dtype=torch.float64)
    )
    z = q.sample((200_000,))
    values = linear.likelihood(z).log_prob(x)
    stderr = values.std(0) / math.sqrt(z.shape[0])
    error = (values.mean(0) - linear.expected_log_likelihood(x, q)).abs()
    assert (error < 4.5 * stderr).all(), (error, stderr)


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_linear_gaussian_likelihood_is_the_isotropic_gaussian(linear, batch):
    """p(x|z) = N(Wz + b, σ² I) — one scalar σ, not expanded — against torch's MultivariateNormal."""
    z = torch.randn(5, *batch, 3, dtype=torch.float64)
    x = torch.randn(*batch, 6, dtype=torch.float64)
    likelihood = linear.likelihood(z)
    assert likelihood.batch_shape == (5, *batch) and likelihood.event_shape == (6,)
    assert likelihood.scale.shape == ()
    covariance = linear.noise_std**2 * torch.eye(6, dtype=torch.float64)
    expected = MultivariateNormal(z @ linear.weight.T + linear.bias, covariance).log_prob(x)
    torch.testing.assert_close(likelihood.log_prob(x), expected, rtol=TOL, atol=TOL)


def test_linear_gaussian_prior_is_made_once_and_follows_the_dtype(linear):
    prior = linear.prior
    assert linear.prior is prior and prior.event_shape == (3,) and prior.is_standard
    assert prior.mean.dtype == torch.float64
    single = linear.to(torch.float32)
    assert single.prior.mean.dtype == torch.float32 and single.prior is not prior
    torch.testing.assert_close(single.prior.stddev, torch.ones(3))
    fresh = LinearGaussian(torch.ones(4, 2), torch.zeros(4), 1.0)
    with torch.inference_mode():
        fresh.prior.log_prob(torch.zeros(2))
    z = torch.zeros(2, requires_grad=True)
    fresh.prior.log_prob(z).backward()  # no inference tensor was cached for later training


def test_linear_gaussian_samples_follow_the_marginal(linear):
    x = linear.sample(100_000, torch.Generator().manual_seed(5))
    marginal = linear.marginal()
    # Sample mean error has sd ≈ sqrt(var / n) ≤ 0.02 here; 0.1 is > 5 sd.
    torch.testing.assert_close(x.mean(0), marginal.mean.detach(), atol=0.1, rtol=0)
    torch.testing.assert_close(x.T.cov(), marginal.covariance_matrix.detach(), atol=0.15, rtol=0.05)


def test_fit_mle_is_a_stationary_point_and_beats_perturbations(linear):
    x = linear.sample(2000, torch.Generator().manual_seed(6))
    fitted = LinearGaussian.fit_mle(x, 3)
    log_lik = fitted.log_marginal(x).mean()
    grads = torch.autograd.grad(log_lik, list(fitted.parameters()))
    for grad in grads:
        assert grad.abs().max() < 1e-8
    with torch.no_grad():
        for parameter in fitted.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    assert fitted.log_marginal(x).mean() < log_lik


def test_fit_mle_recovers_true_marginal_covariance(linear):
    x = linear.sample(200_000, torch.Generator().manual_seed(7))
    fitted = LinearGaussian.fit_mle(x, 3)
    torch.testing.assert_close(
        fitted.marginal().covariance_matrix,
        linear.marginal().covariance_matrix,
        atol=0.05,
        rtol=0.02,
    )


def test_mixture_log_marginal_by_direct_sum(mixture):
    x = mixture.sample(6, torch.Generator().manual_seed(8))
    probs = torch.softmax(mixture.logits, -1)
    density = torch.zeros(6, dtype=torch.float64)
    for k in range(4):
        density += (
            probs[k] * diagonal_gaussian(mixture.means[k], mixture.scales[k]).log_prob(x).exp()
        )
    torch.testing.assert_close(mixture.log_marginal(x), density.log(), rtol=TOL, atol=TOL)


def test_mixture_bayes_identity_and_normalized_posterior(mixture):
    x = mixture.sample(5, torch.Generator().manual_seed(9))
    post = mixture.posterior(x)
    torch.testing.assert_close(post.probs.sum(-1), torch.ones(5, dtype=torch.float64))
    z = post.enumerate_support()  # (K, 5, K)
    via_bayes = mixture.log_joint(x, z) - post.log_prob(z)
    torch.testing.assert_close(via_bayes, mixture.log_marginal(x).expand(4, 5), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"weight": torch.ones(3), "bias": torch.zeros(3), "noise_std": 1.0}, "weight"),
        ({"weight": torch.ones(3, 2), "bias": torch.zeros(2), "noise_std": 1.0}, "bias"),
        ({"weight": torch.ones(3, 2), "bias": torch.zeros(3), "noise_std": 0.0}, "noise_std"),
        ({"weight": torch.ones(3, 2), "bias": torch.zeros(3), "noise_std": -1.0}, "noise_std"),
        (
            {"weight": torch.full((3, 2), math.nan), "bias": torch.zeros(3), "noise_std": 1.0},
            "weight",
        ),
    ],
)
def test_linear_gaussian_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LinearGaussian(**kwargs)


def test_bad_data_is_refused(linear, mixture):
    with pytest.raises(ValueError, match="x has shape"):
        linear.log_marginal(torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x contains NaN"):
        linear.posterior(torch.full((2, 6), math.nan, dtype=torch.float64))
    with pytest.raises(ValueError, match="x has shape"):
        mixture.posterior(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture(torch.zeros(2), torch.zeros(2, 3), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="k must be"):
        LinearGaussian.fit_mle(torch.randn(10, 3), 3)
    with pytest.raises(ValueError, match="n must be"):
        linear.sample(0)
