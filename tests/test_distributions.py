"""Distribution helpers: closed forms against Monte Carlo, shapes, registered KLs."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from latentvi.distributions import (
    check_finite,
    diagonal_gaussian,
    entropy,
    inverse_softplus,
    kl,
    log_mean_exp,
    positive_scale,
    sample,
    standard_normal,
)


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_diagonal_gaussian_shapes(batch):
    q = diagonal_gaussian(torch.zeros(*batch, 5), torch.ones(*batch, 5))
    assert q.batch_shape == batch and q.event_shape == (5,)
    z = sample(q, 7)
    assert z.shape == (7, *batch, 5)
    assert q.log_prob(z).shape == (7, *batch)
    assert kl(q, standard_normal(5)).shape == batch


def test_kl_and_entropy_closed_forms_match_monte_carlo():
    torch.manual_seed(0)
    q = diagonal_gaussian(torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4).double() + 0.3)
    p = diagonal_gaussian(torch.randn(4, dtype=torch.float64), torch.rand(4).double() + 0.5)
    z = q.sample((200_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((kl(q, p) - log_ratio.mean(0)).abs() < 4.5 * stderr).all()
    neg_log_q = -q.log_prob(z)
    stderr = neg_log_q.std(0) / math.sqrt(z.shape[0])
    assert ((entropy(q) - neg_log_q.mean(0)).abs() < 4.5 * stderr).all()


def test_kl_between_full_and_diagonal_gaussians_is_registered_both_ways():
    torch.manual_seed(1)
    a = torch.randn(3, 3, dtype=torch.float64)
    full = MultivariateNormal(torch.randn(3, dtype=torch.float64), a @ a.T + torch.eye(3))
    diag = diagonal_gaussian(torch.zeros(3, dtype=torch.float64), torch.ones(3).double() * 2)
    diag_as_full = MultivariateNormal(diag.mean, torch.diag(diag.variance))
    torch.testing.assert_close(kl(full, diag), kl(full, diag_as_full))
    torch.testing.assert_close(kl(diag, full), kl(diag_as_full, full))


def test_monte_carlo_fallback_when_no_closed_form():
    torch.manual_seed(2)
    shifted = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(torch.zeros(2), 1.0),
        torch.distributions.AffineTransform(1.0, 2.0),
    )
    q = torch.distributions.Independent(shifted, 1)  # N(1, 2²) per dim, with no registered KL
    p = standard_normal(2)
    with pytest.raises(ValueError, match="pass samples z"):
        kl(q, p)
    z = q.sample((100_000,))
    # KL(N(1, 4) ‖ N(0, 1)) per dim = −log 2 + (4 + 1)/2 − 1/2; MC sd ≈ 0.01 at this sample size.
    expected = 2 * (-math.log(2.0) + 2.0)
    assert abs(kl(q, p, z).item() - expected) < 0.05


def test_log_mean_exp_is_stable_and_exact():
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, 1000.0 + math.log(3.0)]], dtype=torch.float64)
    torch.testing.assert_close(
        log_mean_exp(x, 0), torch.tensor([1000.0 - math.log(2.0), 1000.0 + math.log(2.0)]).double()
    )


def test_softplus_scale_round_trip():
    scale = torch.tensor([1e-3, 0.5, 3.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(positive_scale(inverse_softplus(scale)), scale)


def test_check_finite_names_the_argument():
    with pytest.raises(ValueError, match="weights contains NaN"):
        check_finite("weights", torch.tensor([1.0, math.nan]))


def test_image_likelihoods_sum_over_pixels():
    from latentvi.distributions import bernoulli, continuous_bernoulli

    logits = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    binary = (x > 0.5).double()
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, binary, reduction="none"
    ).sum((1, 2, 3))
    torch.testing.assert_close(bernoulli(logits, 3).log_prob(binary), expected)
    cb = continuous_bernoulli(logits, 3)
    assert cb.batch_shape == (4,) and cb.event_shape == (1, 3, 3)
    # The continuous Bernoulli density integrates to one: check one pixel by the trapezoid rule.
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    single = continuous_bernoulli(torch.tensor([[0.7]], dtype=torch.float64).expand(20001, 1))
    integral = torch.trapezoid(single.log_prob(grid.unsqueeze(-1)).exp(), grid)
    assert abs(integral.item() - 1.0) < 1e-6
    gauss = diagonal_gaussian(torch.zeros(4, 1, 3, 3), torch.ones(4, 1, 3, 3), event_dims=3)
    assert gauss.log_prob(torch.zeros(4, 1, 3, 3)).shape == (4,)
