"""Refinement and the amortization gap (Cremer et al. 2018) against closed forms (float64).

For probabilistic PCA the posterior is N(m(x), S) with precision Λ = S⁻¹ = (WᵀW + σ²I)/σ². The
best diagonal Gaussian (the mean-field optimum) has mean m(x) and variances 1/Λ_ii, and its gap
log p(x) − ELBO = KL(q* ‖ p(z|x)) = ½ (Σ_i log Λ_ii − log det Λ), the same for every x. So the
approximation gap is known exactly, and it is 0 when WᵀW is diagonal.
"""

import pytest
import torch
from torch import nn

from latentvi.distributions import diagonal_gaussian, kl
from latentvi.inference import amortization_gap, refine
from latentvi.models import LinearGaussian
from latentvi.nn import DiagonalGaussianEncoder

DTYPE = torch.float64


def orthogonal_model(seed=0, data_dim=6, latent_dim=3, noise_std=0.6):
    """W with orthogonal columns: WᵀW is diagonal, so p(z|x) is a diagonal Gaussian."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=g, dtype=DTYPE))
    scales = torch.tensor([2.0, 1.2, 0.7], dtype=DTYPE)[:latent_dim]
    return LinearGaussian(
        basis * scales, torch.randn(data_dim, generator=g, dtype=DTYPE), noise_std
    )


def correlated_model(seed=1, data_dim=6, latent_dim=3):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=g, dtype=DTYPE)
    return LinearGaussian(weight, torch.randn(data_dim, generator=g, dtype=DTYPE), 0.6)


def mean_field_gap(model):
    """½ (Σ log Λ_ii − log det Λ): the exact approximation gap of the best diagonal q."""
    variance = model.noise_std.detach() ** 2
    eye = torch.eye(model.latent_dim, dtype=DTYPE)
    precision = (model.weight.detach().T @ model.weight.detach() + variance * eye) / variance
    return 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()


def exact_elbo(model, x, q):
    return model.expected_log_likelihood(x, q) - kl(q, model.prior)


def freeze(module):
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def test_refine_recovers_a_diagonal_posterior_exactly():
    model = freeze(orthogonal_model())
    x = model.sample(20, torch.Generator().manual_seed(3))
    start = diagonal_gaussian(torch.zeros(20, 3, dtype=DTYPE), torch.ones(20, 3, dtype=DTYPE))
    refined = refine(
        x,
        start,
        model.prior,
        model.likelihood,
        steps=1000,
        lr=0.1,
        objective=lambda q: exact_elbo(model, x, q),
    )
    posterior = model.posterior(x)
    # Deterministic ascent on a smooth concave-like objective, annealed: agreement to 1e-6.
    torch.testing.assert_close(refined.mean, posterior.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(refined.variance, posterior.variance, atol=1e-6, rtol=0)
    gap = model.log_marginal(x) - exact_elbo(model, x, refined)
    assert gap.abs().max() < 1e-9


def test_refine_with_monte_carlo_elbo_approaches_the_optimum():
    model = freeze(orthogonal_model())
    x = model.sample(50, torch.Generator().manual_seed(4))
    start = diagonal_gaussian(torch.zeros(50, 3, dtype=DTYPE), torch.ones(50, 3, dtype=DTYPE))
    torch.manual_seed(0)
    refined = refine(x, start, model.prior, model.likelihood, steps=500, lr=0.05, num_samples=8)
    gap = (model.log_marginal(x) - exact_elbo(model, x, refined)).mean().item()
    start_gap = (model.log_marginal(x) - exact_elbo(model, x, start)).mean().item()
    # From a gap of several nats to within 0.01 nats of the optimum (gap 0) with noisy gradients.
    assert start_gap > 2.0
    assert 0 <= gap < 0.01


def test_refine_leaves_the_model_and_encoder_untouched():
    model = correlated_model()
    encoder = DiagonalGaussianEncoder(6, 3, (8,)).double()
    x = model.sample(10, torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in [*model.parameters(), *encoder.parameters()]]
    amortization_gap(model, encoder, x, refine_steps=20)
    after = [*model.parameters(), *encoder.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in after)


@pytest.fixture(scope="module")
def trained_encoder():
    """An encoder fitted (briefly) to the exact ELBO of the correlated model, θ fixed."""
    model = freeze(correlated_model())
    x = model.sample(400, torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    encoder = DiagonalGaussianEncoder(6, 3, (16,), activation=nn.Tanh).double()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        (-exact_elbo(model, x, encoder(x)).mean()).backward()
        optimizer.step()
    return model, encoder, x


def test_amortization_gap_orders_the_bounds(trained_encoder):
    model, encoder, x = trained_encoder
    gaps = amortization_gap(model, encoder, x[:100], refine_steps=500, lr=0.05)
    assert gaps["elbo_amortized"] <= gaps["elbo_refined"] <= gaps["log_marginal"]
    assert gaps["amortization_gap"] >= 0 and gaps["approximation_gap"] >= 0
    assert gaps["amortization_gap"] > 1e-3  # a small tanh MLP is not the exact linear map
    torch.testing.assert_close(
        gaps["log_marginal"], model.log_marginal(x[:100]).mean().item(), rtol=0, atol=1e-12
    )
    # The refined q is the mean-field optimum: its gap is the closed form above.
    assert gaps["approximation_gap"] == pytest.approx(mean_field_gap(model), abs=1e-5)
    assert mean_field_gap(model) > 0.05  # a correlated posterior: the gap is real
    total = gaps["log_marginal"] - gaps["elbo_amortized"]
    assert total == pytest.approx(gaps["approximation_gap"] + gaps["amortization_gap"], abs=1e-9)


def test_amortization_gap_vanishes_for_a_diagonal_posterior():
    model = freeze(orthogonal_model())
    x = model.sample(100, torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    encoder = DiagonalGaussianEncoder(6, 3, (8,)).double()  # untrained: a large amortization gap
    gaps = amortization_gap(model, encoder, x, refine_steps=1000, lr=0.1)
    assert mean_field_gap(model) == pytest.approx(0, abs=1e-12)
    assert gaps["approximation_gap"] == pytest.approx(0, abs=1e-6)
    assert gaps["amortization_gap"] > 1.0
    assert gaps["elbo_refined"] == pytest.approx(gaps["log_marginal"], abs=1e-6)


class _OpaqueModel(nn.Module):
    """A LinearGaussian seen only through prior and likelihood: forces the Monte Carlo path."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    @property
    def prior(self):
        return self.inner.prior

    def likelihood(self, z):
        return self.inner.likelihood(z)


def test_monte_carlo_path_agrees_with_the_exact_one(trained_encoder):
    model, encoder, x = trained_encoder
    x = x[:50]
    exact = amortization_gap(model, encoder, x, refine_steps=300, lr=0.05)
    torch.manual_seed(1)
    estimated = amortization_gap(
        _OpaqueModel(model),
        encoder,
        x,
        refine_steps=300,
        lr=0.05,
        num_samples=8,
        elbo_samples=2000,
        log_marginal_samples=2000,
    )
    assert "log_marginal_stderr" in estimated and "log_marginal_stderr" not in exact
    # Monte Carlo ELBOs over 50 examples × 2000 draws: per-draw sd ≈ 1.4 nats, so the standard
    # error of the mean is ≈ 0.0045 nats and 0.02 is ≈ 4.5 of them. Refinement with noisy gradients
    # adds a little (the refined q is not exactly the optimum): 0.03. log p(x) is an importance
    # estimate with its own standard error.
    assert estimated["elbo_amortized"] == pytest.approx(exact["elbo_amortized"], abs=0.02)
    assert estimated["elbo_refined"] == pytest.approx(exact["elbo_refined"], abs=0.03)
    tolerance = 4.5 * estimated["log_marginal_stderr"]
    assert estimated["log_marginal"] == pytest.approx(exact["log_marginal"], abs=tolerance)


def test_bad_arguments():
    model = correlated_model()
    x = model.sample(4)
    posterior = model.posterior(x)  # full covariance: not a diagonal q
    with pytest.raises(ValueError, match="q_init"):
        refine(x, posterior, model.prior, model.likelihood)
    q = diagonal_gaussian(torch.zeros(4, 3, dtype=DTYPE), torch.ones(4, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match="steps"):
        refine(x, q, model.prior, model.likelihood, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        refine(x, q, model.prior, model.likelihood, lr=0.0)
    with pytest.raises(ValueError, match="elbo_samples"):
        amortization_gap(model, lambda x: q, x, elbo_samples=0)
