"""VariationalProblem and fit_vi: the loss contract, exact posteriors, the closed-form MLE.

Exactness claims run in float64. "Exact ELBO" is E_q log p(x|z) − KL(q ‖ p(z)) in closed form for
probabilistic PCA (``LinearGaussian.expected_log_likelihood``): a deterministic objective whose
gradient is the expectation of every unbiased estimator's.
"""

import pytest
import torch
from torch import nn

from latentvi.distributions import kl
from latentvi.gradients import MovingAverageBaseline, reparameterized_elbo, score_function_elbo
from latentvi.inference import LocalGaussians, VariationalProblem, fit_vi
from latentvi.models import LinearGaussian
from latentvi.nn import DiagonalGaussianEncoder

DTYPE = torch.float64


def make_data(data_dim=5, latent_dim=2, num_points=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=g, dtype=DTYPE)
    truth = LinearGaussian(weight, torch.randn(data_dim, generator=g, dtype=DTYPE), 0.5)
    return truth, truth.sample(num_points, g)


def initial_model(data_dim, latent_dim, seed=5):
    g = torch.Generator().manual_seed(seed)
    weight = 0.1 * torch.randn(data_dim, latent_dim, generator=g, dtype=DTYPE)
    return LinearGaussian(weight, torch.zeros(data_dim, dtype=DTYPE), 1.0)


def exact_estimator(model):
    """An estimator callable with the deterministic exact ELBO as its value and gradient."""

    def estimator(x, q, prior, likelihood, num_samples):
        return model.expected_log_likelihood(x, q) - kl(q, prior)

    return estimator


def exact_mean_elbo(problem, x):
    with torch.no_grad():
        q = problem.approximate_posterior(torch.arange(x.shape[0]), x)
        model = problem.model
        return (model.expected_log_likelihood(x, q) - kl(q, model.prior)).mean().item()


# --------------------------------------------------------------------------------------------------
# The loss contract


@pytest.mark.parametrize("local", [True, False])
def test_loss_contract(local):
    truth, x = make_data(num_points=20)
    posterior = LocalGaussians(20, 2, dtype=DTYPE) if local else DiagonalGaussianEncoder(5, 2)
    problem = VariationalProblem(truth, posterior.to(DTYPE), "reparameterization", num_samples=3)
    index = torch.tensor([4, 0, 7])
    torch.manual_seed(0)
    loss, metrics = problem.loss((index, x[index]))
    assert loss.shape == () and loss.requires_grad
    assert set(metrics) == {"elbo", "loss/neg_elbo"}
    assert not metrics["elbo"].requires_grad
    # The value is −mean ELBO surrogate: the same draws give the same number.
    torch.manual_seed(0)
    q = problem.approximate_posterior(index, x[index])
    expected = reparameterized_elbo(x[index], q, truth.prior, truth.likelihood, 3).mean()
    torch.testing.assert_close(loss, -expected)
    torch.testing.assert_close(metrics["elbo"], expected.detach())
    torch.testing.assert_close(metrics["loss/neg_elbo"], -expected.detach())


def test_estimator_is_resolved_once():
    truth, _ = make_data(num_points=4)
    table = LocalGaussians(4, 2, dtype=DTYPE)
    assert VariationalProblem(truth, table).estimator is reparameterized_elbo
    assert VariationalProblem(truth, table, "score_function").estimator is score_function_elbo
    problem = VariationalProblem(truth, table, "score_function", baseline=MovingAverageBaseline())
    assert problem.estimator.keywords["baseline"] is problem.baseline
    assert "baseline" in dict(problem.named_modules())  # a module baseline is registered


def test_bad_arguments_name_the_argument():
    truth, x = make_data(num_points=10)
    table = LocalGaussians(10, 2, dtype=DTYPE)
    with pytest.raises(ValueError, match="estimator"):
        VariationalProblem(truth, table, "reinforce")
    with pytest.raises(ValueError, match="baseline"):
        VariationalProblem(truth, table, "reparameterization", baseline=MovingAverageBaseline())
    with pytest.raises(ValueError, match="num_samples"):
        VariationalProblem(truth, table, num_samples=0)
    problem = VariationalProblem(truth, table)
    with pytest.raises(ValueError, match="x must be a"):
        fit_vi(problem, x[:, :3], steps=1, batch_size=5, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="num_points"):
        fit_vi(problem, x[:8], steps=1, batch_size=5, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit_vi(problem, x, steps=1, batch_size=11, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit_vi(problem, x, steps=0, batch_size=5, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit_vi(problem, x, steps=1, batch_size=5, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="index"):
        problem.loss((torch.tensor([0, 10]), x[:2]))
    with pytest.raises(ValueError, match="one index per row"):
        problem.loss((torch.tensor([0, 1]), x[:3]))


def test_history_and_rng():
    truth, x = make_data(num_points=40)
    problem = VariationalProblem(truth, LocalGaussians(40, 2, dtype=DTYPE))
    torch.manual_seed(123)
    expected_next = torch.rand(())
    torch.manual_seed(123)
    history = fit_vi(problem, x, steps=20, batch_size=10, lr=0.01, eval_every=5, progress=False)
    assert torch.rand(()) == expected_next  # the caller's RNG stream is left alone
    assert [r["step"] for r in history] == [0, 5, 10, 15, 20]
    assert set(history[-1]) == {"step", "elbo", "log_marginal", "train_elbo", "seconds"}
    stops = []
    history = fit_vi(
        problem,
        x,
        steps=20,
        batch_size=10,
        lr=0.01,
        eval_every=5,
        callback=lambda record: stops.append(record["step"]) or record["step"] == 10,
        progress=False,
    )
    assert stops == [5, 10] and history[-1]["step"] == 10


# --------------------------------------------------------------------------------------------------
# Exact answers


def test_full_covariance_q_recovers_the_exact_posterior():
    """θ fixed, q_i full-covariance Gaussians: the ELBO's maximizer is p(z|x) itself."""
    truth, x = make_data(data_dim=6, latent_dim=3, num_points=16, seed=1)
    before = [p.detach().clone() for p in truth.parameters()]
    table = LocalGaussians(16, 3, full_covariance=True, dtype=DTYPE)
    problem = VariationalProblem(truth, table, exact_estimator(truth))
    fit_vi(
        problem,
        x,
        steps=1000,
        batch_size=16,
        lr=0.1,
        fit_model=False,
        anneal_lr=True,
        progress=False,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, truth.parameters(), strict=True))
    assert all(p.requires_grad for p in truth.parameters())  # restored after the fit
    q, posterior = table(torch.arange(16)), truth.posterior(x)
    # Deterministic gradients and an annealed step size: converged to ~1e-10; 1e-6 leaves room.
    torch.testing.assert_close(q.mean, posterior.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.covariance_matrix, posterior.covariance_matrix, atol=1e-6, rtol=0)


def test_diagonal_q_recovers_a_diagonal_posterior():
    """W with orthogonal columns: p(z|x) is diagonal, so a diagonal q can match it exactly."""
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=DTYPE))
    scales = torch.tensor([2.0, 1.0, 0.5], dtype=DTYPE)
    model = LinearGaussian(basis * scales, torch.randn(6, generator=g, dtype=DTYPE), 0.7)
    x = model.sample(16, g)
    table = LocalGaussians(16, 3, dtype=DTYPE)
    problem = VariationalProblem(model, table, exact_estimator(model))
    fit_vi(
        problem,
        x,
        steps=1000,
        batch_size=8,
        lr=0.1,
        fit_model=False,
        anneal_lr=True,
        progress=False,
    )
    q, posterior = table(torch.arange(16)), model.posterior(x)
    torch.testing.assert_close(q.mean, posterior.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.variance, posterior.variance, atol=1e-6, rtol=0)


def test_diagonal_q_with_reparameterized_gradients_gets_close():
    """The same with the real (noisy) estimator, 16 samples: within Monte Carlo reach."""
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=DTYPE))
    model = LinearGaussian(basis * torch.tensor([2.0, 1.0, 0.5], dtype=DTYPE), torch.zeros(6), 0.7)
    x = model.sample(16, g)
    table = LocalGaussians(16, 3, dtype=DTYPE)
    problem = VariationalProblem(model, table, "reparameterization", num_samples=16)
    fit_vi(
        problem,
        x,
        steps=800,
        batch_size=16,
        lr=0.05,
        fit_model=False,
        anneal_lr=True,
        progress=False,
    )
    gap = model.log_marginal(x) - exact_mean_elbo(problem, x)
    # Starting gap is several nats; annealed SGD ends within 0.01 nats of the optimum (gap 0).
    assert 0 <= gap.mean() < 0.01


def mle_gap(problem, x, latent_dim):
    with torch.no_grad():
        fitted = problem.model.log_marginal(x).mean().item()
        best = LinearGaussian.fit_mle(x, latent_dim).log_marginal(x).mean().item()
    return (best - fitted) / abs(best)


def test_amortized_vi_reaches_the_maximum_likelihood():
    """θ by VI with a linear encoder (the exact posterior mean is linear in x): mean log p(x)
    within 0.5% of the closed-form MLE (it gets to ~0.02%)."""
    _, x = make_data(data_dim=5, latent_dim=2, num_points=500)
    model = initial_model(5, 2)
    torch.manual_seed(0)
    encoder = DiagonalGaussianEncoder(5, 2, hidden=()).to(DTYPE)
    problem = VariationalProblem(model, encoder, "reparameterization")
    history = fit_vi(
        problem, x, steps=2000, batch_size=100, lr=0.02, anneal_lr=True, progress=False
    )
    assert history[-1]["log_marginal"] > history[0]["log_marginal"] + 5
    assert 0 <= mle_gap(problem, x, 2) < 0.005


@pytest.mark.slow
def test_per_datapoint_vi_reaches_the_maximum_likelihood():
    _, x = make_data(data_dim=10, latent_dim=3, num_points=1000, seed=3)
    model = initial_model(10, 3)
    problem = VariationalProblem(model, LocalGaussians(1000, 3, dtype=DTYPE), "reparameterization")
    fit_vi(problem, x, steps=10_000, batch_size=250, lr=0.05, anneal_lr=True, progress=False)
    assert 0 <= mle_gap(problem, x, 3) < 0.005


@pytest.mark.parametrize("baseline", [None, MovingAverageBaseline(decay=0.9)])
def test_score_function_also_increases_the_elbo(baseline):
    """REINFORCE fits too, more slowly: after 500 steps the exact ELBO has closed at least 80% of
    the way from its start to the MLE log-likelihood (reparameterization: ~99%)."""
    _, x = make_data(data_dim=5, latent_dim=2, num_points=500)
    model = initial_model(5, 2)
    torch.manual_seed(1)
    encoder = DiagonalGaussianEncoder(5, 2, hidden=()).to(DTYPE)
    problem = VariationalProblem(model, encoder, "score_function", baseline=baseline)
    start = exact_mean_elbo(problem, x)
    fit_vi(problem, x, steps=500, batch_size=100, lr=0.01, progress=False)
    best = LinearGaussian.fit_mle(x, 2).log_marginal(x).mean().item()
    assert exact_mean_elbo(problem, x) > start + 0.8 * (best - start)


def test_fit_model_false_freezes_theta_but_fits_the_encoder():
    truth, x = make_data(num_points=100)
    before = [p.detach().clone() for p in truth.parameters()]
    encoder = DiagonalGaussianEncoder(5, 2, (8,), activation=nn.ReLU).to(DTYPE)
    problem = VariationalProblem(truth, encoder)
    start = exact_mean_elbo(problem, x)
    fit_vi(problem, x, steps=200, batch_size=50, lr=0.02, fit_model=False, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, truth.parameters(), strict=True))
    assert exact_mean_elbo(problem, x) > start + 1.0
