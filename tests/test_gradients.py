"""Gradient estimators against exact gradients (float64, fixed seeds).

The reference gradients are exact: autograd of the closed-form ELBO of a LinearGaussian
(``exact_elbo_linear_gaussian``) and of the enumerated ELBO of a GaussianMixture
(``bounds.elbo_enumerated``).

Statistics. Each probe draw averages ``R`` independent replicas of the data (the batch is
``[R, N]``, q's parameters are shared by the replicas and the objective is the surrogate summed
over examples and divided by R), so ``num_draws`` probe draws stand for ``R * num_draws`` single
draws at a fraction of the cost; means and variances are still estimated from the probe draws.

* Unbiasedness: every coordinate of the mean gradient is within ``Z_LIMIT = 4.5`` standard errors
  of the exact gradient (per coordinate; under normality a false alarm has probability 7e-6 per
  coordinate, about 1e-3 over all ~200 coordinates tested here). That the check has power is itself
  tested: a baseline that includes the sample's own reward (biased) is flagged.
* Variance orderings are asserted with margins of about 1.5x or more over the measured ratios,
  which are printed in the comments; the variances compared are of q's parameters, where the
  estimators differ (the gradient w.r.t. θ is the same pathwise one in both estimators).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import OneHotCategorical

from latentvi.bounds import elbo_enumerated, elbo_kl
from latentvi.diagnostics import (
    ProbeResult,
    exact_elbo_linear_gaussian,
    format_probe_table,
    variance_probe,
)
from latentvi.distributions import diagonal_gaussian, inverse_softplus, positive_scale
from latentvi.gradients import (
    LearnedBaseline,
    LeaveOneOut,
    MovingAverageBaseline,
    gumbel_softmax_elbo,
    reparameterized_elbo,
    score_function_elbo,
)
from latentvi.models import GaussianMixture, LinearGaussian

Z_LIMIT = 4.5
DTYPE = torch.float64
REPLICAS = 25
DRAWS = 300


class LinearHead(nn.Module):
    """b_ψ(x) = wᵀx + c: ``[*B, D] -> [*B]``."""

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(data_dim, 1, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run single-threaded: on tensors this small, waking the intra-op thread pool (softmax,
    multinomial) costs far more than the work, and on a busy 2-core machine made the mixture
    probes ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# LinearGaussian: D = 4, k = 2, N = 3


class LinearProblem:
    """A LinearGaussian, three data points and a diagonal Gaussian q with leaf parameters."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(4, 2, generator=g, dtype=DTYPE)
        self.model = LinearGaussian(weight, torch.randn(4, generator=g, dtype=DTYPE), 0.7)
        self.x = self.model.sample(3, g)  # (3, 4)
        loc = 0.5 * torch.randn(3, 2, generator=g, dtype=DTYPE)
        scale = 0.5 + 0.3 * torch.rand(3, 2, generator=g, dtype=DTYPE)
        self.loc = loc.requires_grad_(True)
        self.raw_scale = inverse_softplus(scale).clone().requires_grad_(True)
        self.q_params = [self.loc, self.raw_scale]
        self.params = [*self.q_params, *self.model.parameters()]
        self.num_q_coordinates = sum(p.numel() for p in self.q_params)

    def q(self, replicas: int | None = None):
        loc, scale = self.loc, positive_scale(self.raw_scale)
        if replicas is not None:
            loc, scale = loc.expand(replicas, 3, 2), scale.expand(replicas, 3, 2)
        return diagonal_gaussian(loc, scale)

    def data(self, replicas: int | None = None) -> torch.Tensor:
        return self.x if replicas is None else self.x.expand(replicas, 3, 4)

    def exact_gradient(self) -> list[torch.Tensor]:
        elbo = exact_elbo_linear_gaussian(self.model, self.x, self.q()).sum()
        return list(torch.autograd.grad(elbo, self.params))

    def objective(self, estimator, replicas: int = REPLICAS, **kwargs):
        """A zero-argument callable: the surrogate summed over the N examples, averaged over R."""

        def draw() -> torch.Tensor:
            q = self.q(replicas)
            model = self.model
            return estimator(self.data(replicas), q, model.prior, model.likelihood, **kwargs).sum()

        return lambda: draw() / replicas


@pytest.fixture(scope="module")
def linear() -> LinearProblem:
    return LinearProblem()


@pytest.fixture(scope="module")
def trained_baselines(linear):
    """A moving average warmed up for 100 calls, and a learned baseline trained for 600 steps.

    Both are frozen afterwards (``update=False``; ψ no longer requires grad) for the probes.
    """
    torch.manual_seed(1)
    moving_average = MovingAverageBaseline(decay=0.9)
    data, prior, likelihood = linear.data(REPLICAS), linear.model.prior, linear.model.likelihood
    with torch.no_grad():
        for _ in range(100):
            score_function_elbo(
                data, linear.q(REPLICAS), prior, likelihood, baseline=moving_average
            )
    moving_average.update = False

    learned = LearnedBaseline(LinearHead(4))
    optimizer = torch.optim.Adam(learned.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[400, 500], gamma=0.2)
    for _ in range(600):
        optimizer.zero_grad()
        surrogate = score_function_elbo(
            data, linear.q(REPLICAS), prior, likelihood, baseline=learned
        )
        (-surrogate.mean()).backward()  # ascent on the surrogate trains ψ only (φ, θ not stepped)
        optimizer.step()
        schedule.step()
    for parameter in learned.parameters():
        parameter.requires_grad_(False)
    return moving_average, learned


@pytest.fixture(scope="module")
def linear_probe(linear, trained_baselines) -> dict[str, ProbeResult]:
    moving_average, learned = trained_baselines
    estimators = {
        "reparameterization": linear.objective(reparameterized_elbo),
        "score function": linear.objective(score_function_elbo),
        "score function, full form": linear.objective(score_function_elbo, analytic_kl=False),
        "score function + moving average": linear.objective(
            score_function_elbo, baseline=moving_average
        ),
        "score function + learned": linear.objective(score_function_elbo, baseline=learned),
        "score function, M=4": linear.objective(score_function_elbo, num_samples=4),
        "score function + leave-one-out, M=4": linear.objective(
            score_function_elbo, num_samples=4, baseline=LeaveOneOut()
        ),
    }
    torch.manual_seed(2)
    results = variance_probe(estimators, linear.params, DRAWS, linear.exact_gradient())
    return {result.name: result for result in results}


def q_variance(result: ProbeResult, problem) -> float:
    """Total gradient variance over q's parameters only (the first coordinates)."""
    return result.per_coordinate_variance[: problem.num_q_coordinates].sum().item()


@pytest.mark.parametrize(
    "name",
    [
        "reparameterization",
        "score function",
        "score function, full form",
        "score function + moving average",
        "score function + learned",
        "score function + leave-one-out, M=4",
    ],
)
def test_linear_gaussian_estimators_are_unbiased(linear_probe, name):
    # All 25 coordinates (q: loc, raw scale; θ: W, b, raw σ) within 4.5 standard errors.
    result = linear_probe[name]
    assert result.num_draws == DRAWS
    assert result.max_abs_z < Z_LIMIT, format_probe_table(list(linear_probe.values()))


def test_score_function_variance_exceeds_reparameterization(linear_probe, linear):
    # Measured: 910 vs 31 on q's parameters (29x).
    score = q_variance(linear_probe["score function"], linear)
    pathwise = q_variance(linear_probe["reparameterization"], linear)
    assert score > 10 * pathwise


def test_baselines_reduce_score_function_variance(linear_probe, linear):
    # Measured ratios (q's parameters) to the plain score function: moving average 0.48, learned
    # 0.39, and leave-one-out 0.40 (against the plain estimator with the same M = 4).
    plain = q_variance(linear_probe["score function"], linear)
    assert q_variance(linear_probe["score function + moving average"], linear) < 0.65 * plain
    assert q_variance(linear_probe["score function + learned"], linear) < 0.65 * plain
    plain_4 = q_variance(linear_probe["score function, M=4"], linear)
    assert q_variance(linear_probe["score function + leave-one-out, M=4"], linear) < 0.7 * plain_4


def test_learned_baseline_tracks_expected_reward(linear, trained_baselines):
    # The reward is log p(x|z); E_q[log p(x|z)] is in closed form. Its standard deviation over z
    # is 6.6-16 nats per example; after training (25 rewards per example and step), b_ψ(x) is
    # within a tenth of that standard deviation of E[r | x] for every x (measured: under 0.04).
    _, learned = trained_baselines
    torch.manual_seed(13)
    with torch.no_grad():
        expected_reward = linear.model.expected_log_likelihood(linear.x, linear.q())
        z = linear.q().sample(torch.Size([10000]))
        reward_std = linear.model.likelihood(z).log_prob(linear.x).std(0)
        prediction = learned.predict(linear.x)
    assert prediction.shape == (3,)
    error = (prediction - expected_reward).abs()
    assert (error < 0.1 * reward_std).all(), (prediction, expected_reward, reward_std)


def test_learned_baseline_term_is_zero_valued_and_trains_psi(linear):
    learned = LearnedBaseline(LinearHead(4))
    prior, likelihood = linear.model.prior, linear.model.likelihood
    torch.manual_seed(3)
    plain = score_function_elbo(linear.x, linear.q(), prior, likelihood, num_samples=5)
    torch.manual_seed(3)
    with_baseline = score_function_elbo(
        linear.x, linear.q(), prior, likelihood, num_samples=5, baseline=learned
    )
    torch.testing.assert_close(with_baseline, plain, rtol=0, atol=1e-12)
    # The ψ-gradient of the surrogate is that of -½ mean_s (r_s - b(x))²: mean_s (r_s - b) ∇ψ b.
    torch.manual_seed(3)
    z = linear.q().sample(torch.Size([5]))
    reward = likelihood(z).log_prob(linear.x)  # (5, 3)
    prediction = learned.predict(linear.x)
    expected = torch.autograd.grad(
        -0.5 * (reward - prediction).pow(2).mean(0).sum(), [*learned.parameters()]
    )
    actual = torch.autograd.grad(with_baseline.sum(), [*learned.parameters()])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_probe_detects_a_biased_baseline(linear):
    # A "baseline" that includes the sample's own reward (the mean of all M = 2 rewards) halves
    # the score term on average: biased. The same |z| check must flag it.
    def own_mean(x, reward):
        return reward.mean(0, keepdim=True), reward.new_zeros(reward.shape[1:])

    torch.manual_seed(4)
    results = variance_probe(
        {
            "biased": linear.objective(score_function_elbo, num_samples=2, baseline=own_mean),
            "leave-one-out": linear.objective(
                score_function_elbo, num_samples=2, baseline=LeaveOneOut()
            ),
        },
        linear.q_params,
        200,
        linear.exact_gradient()[:2],
    )
    assert results[0].max_abs_z > 3 * Z_LIMIT
    assert results[1].max_abs_z < Z_LIMIT


# --------------------------------------------------------------------------------------------------
# Values: the surrogate's value is the ELBO estimate


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_score_function_value_equals_elbo_on_same_draws(linear, analytic_kl):
    prior, likelihood = linear.model.prior, linear.model.likelihood
    for baseline, m in [(None, 3), (MovingAverageBaseline(), 3), (LeaveOneOut(), 3)]:
        torch.manual_seed(5)
        reference = elbo_kl(linear.x, linear.q(), prior, likelihood, m, analytic_kl)
        torch.manual_seed(5)
        value = score_function_elbo(
            linear.x, linear.q(), prior, likelihood, m, baseline=baseline, analytic_kl=analytic_kl
        )
        torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)


def test_reparameterized_value_is_elbo_kl(linear):
    prior, likelihood = linear.model.prior, linear.model.likelihood
    torch.manual_seed(6)
    reference = elbo_kl(linear.x, linear.q(), prior, likelihood, 2)
    torch.manual_seed(6)
    value = reparameterized_elbo(linear.x, linear.q(), prior, likelihood, 2)
    torch.testing.assert_close(value, reference, rtol=0, atol=0)


def test_score_function_value_is_exact_elbo_in_expectation(linear):
    # 4000 single-sample values per example; the mean is within 4.5 standard errors of the ELBO.
    torch.manual_seed(7)
    with torch.no_grad():
        values = score_function_elbo(
            linear.data(4000), linear.q(4000), linear.model.prior, linear.model.likelihood
        )  # (4000, 3)
        exact = exact_elbo_linear_gaussian(linear.model, linear.x, linear.q())
    stderr = values.std(0) / math.sqrt(values.shape[0])
    assert ((values.mean(0) - exact).abs() < Z_LIMIT * stderr).all()


def test_moving_average_baseline_state():
    baseline = MovingAverageBaseline(decay=0.5)
    reward = torch.tensor([[-4.0, -2.0]], dtype=DTYPE)
    b, extra = baseline(None, reward)
    assert b.item() == 0.0 and torch.equal(extra, torch.zeros(2, dtype=DTYPE))
    assert baseline.value.item() == pytest.approx(-3.0)  # bias-corrected: the first mean itself
    b, _ = baseline(None, reward + 2.0)  # mean -1: average (0.5·-3·0.5 + 0.5·-1)/(1-0.25) = -5/3
    assert b.item() == pytest.approx(-3.0)
    assert baseline.value.item() == pytest.approx(-5.0 / 3.0)
    baseline.update = False
    baseline(None, reward + 100.0)
    assert baseline.value.item() == pytest.approx(-5.0 / 3.0)
    assert set(baseline.state_dict()) == {"average", "num_updates"}


def test_leave_one_out_baseline_values():
    reward = torch.tensor([[1.0], [2.0], [6.0]], dtype=DTYPE)  # (M=3, B=1)
    b, _ = LeaveOneOut()(None, reward)
    torch.testing.assert_close(b, torch.tensor([[4.0], [3.5], [1.5]], dtype=DTYPE))


# --------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_surrogate_shapes(batch):
    torch.manual_seed(8)
    model = LinearGaussian(torch.randn(5, 2, dtype=DTYPE), torch.zeros(5, dtype=DTYPE), 0.5)
    x = torch.randn(*batch, 5, dtype=DTYPE)
    q = diagonal_gaussian(torch.zeros(*batch, 2, dtype=DTYPE), torch.ones(*batch, 2, dtype=DTYPE))
    args = (x, q, model.prior, model.likelihood)
    assert reparameterized_elbo(*args, num_samples=3).shape == batch
    for baseline in (None, MovingAverageBaseline(), LearnedBaseline(LinearHead(5)), LeaveOneOut()):
        assert score_function_elbo(*args, num_samples=3, baseline=baseline).shape == batch

    mixture = GaussianMixture(
        torch.zeros(3, dtype=DTYPE), torch.randn(3, 5, dtype=DTYPE), torch.ones(3, dtype=DTYPE)
    )
    logits = torch.randn(*batch, 3, dtype=DTYPE)
    for straight_through in (False, True):
        surrogate = gumbel_softmax_elbo(
            x, logits, mixture.prior, mixture.likelihood, 0.5, 3, straight_through
        )
        assert surrogate.shape == batch
    q = OneHotCategorical(logits=logits)
    assert score_function_elbo(x, q, mixture.prior, mixture.likelihood, 2).shape == batch


# --------------------------------------------------------------------------------------------------
# GaussianMixture: K = 3 components, D = 2, N = 3, q = OneHotCategorical(logits) per example

MIXTURE_REPLICAS = 50


class MixtureProblem:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        means = 1.5 * torch.randn(3, 2, generator=g, dtype=DTYPE)
        logits = torch.tensor([0.2, -0.3, 0.1], dtype=DTYPE)
        self.model = GaussianMixture(logits, means, torch.tensor([0.8, 1.0, 1.3], dtype=DTYPE))
        self.x = self.model.sample(3, g)  # (3, 2)
        self.logits = torch.randn(3, 3, generator=g, dtype=DTYPE).requires_grad_(True)
        self.params = [self.logits, *self.model.parameters()]
        self.num_q_coordinates = self.logits.numel()

    def exact_gradient(self) -> list[torch.Tensor]:
        q = OneHotCategorical(logits=self.logits)
        elbo = elbo_enumerated(self.x, q, self.model.prior, self.model.likelihood).sum()
        return list(torch.autograd.grad(elbo, self.params))

    def objective(self, estimator, **kwargs):
        r = MIXTURE_REPLICAS
        x, logits = self.x.expand(r, 3, 2), self.logits.expand(r, 3, 3)
        model = self.model
        if estimator is gumbel_softmax_elbo:
            return lambda: estimator(x, logits, model.prior, model.likelihood, **kwargs).sum() / r
        return lambda: (
            estimator(x, OneHotCategorical(logits=logits), model.prior, model.likelihood, **kwargs)
            .sum()
            .div(r)
        )


@pytest.fixture(scope="module")
def mixture() -> MixtureProblem:
    return MixtureProblem()


@pytest.fixture(scope="module")
def mixture_probe(mixture) -> dict[str, ProbeResult]:
    estimators = {
        "score function": mixture.objective(score_function_elbo),
        "score function, full form": mixture.objective(score_function_elbo, analytic_kl=False),
        "score function, M=4": mixture.objective(score_function_elbo, num_samples=4),
        "score function + leave-one-out, M=4": mixture.objective(
            score_function_elbo, num_samples=4, baseline=LeaveOneOut()
        ),
        "gumbel-softmax, τ=1": mixture.objective(gumbel_softmax_elbo, temperature=1.0),
        "gumbel-softmax, τ=0.5": mixture.objective(gumbel_softmax_elbo, temperature=0.5),
        "gumbel-softmax, τ=0.1": mixture.objective(gumbel_softmax_elbo, temperature=0.1),
        "straight-through, τ=0.5": mixture.objective(
            gumbel_softmax_elbo, temperature=0.5, straight_through=True
        ),
    }
    torch.manual_seed(9)
    results = variance_probe(estimators, mixture.params, DRAWS, mixture.exact_gradient())
    return {result.name: result for result in results}


@pytest.mark.parametrize(
    "name", ["score function", "score function, full form", "score function + leave-one-out, M=4"]
)
def test_discrete_score_function_is_unbiased(mixture_probe, name):
    # All 24 coordinates (q's logits; θ: mixing logits, means, raw scales) within 4.5 std errors.
    assert mixture_probe[name].max_abs_z < Z_LIMIT, format_probe_table(list(mixture_probe.values()))


def test_discrete_leave_one_out_reduces_variance(mixture_probe, mixture):
    # Measured ratio 0.23 on q's logits.
    plain = q_variance(mixture_probe["score function, M=4"], mixture)
    assert q_variance(mixture_probe["score function + leave-one-out, M=4"], mixture) < 0.5 * plain


def test_gumbel_softmax_has_lower_variance_than_score_function(mixture_probe, mixture):
    # On q's logits, single sample, at τ = 0.5: measured ratio 0.12 (0.03 at τ = 1). Not asserted
    # at τ = 0.1, where the variance has grown to 0.88 of the score function's.
    plain = q_variance(mixture_probe["score function"], mixture)
    assert q_variance(mixture_probe["gumbel-softmax, τ=0.5"], mixture) < 0.3 * plain


def test_gumbel_softmax_is_biased_and_the_bias_shrinks_with_temperature(mixture_probe):
    # What is asserted: at τ = 1 and 0.5 the mean gradient is detectably off the exact one
    # (|z| > 20); the mean |error| over all coordinates falls as τ goes 1 -> 0.5 -> 0.1
    # (measured 0.45, 0.24, 0.05 nats per unit parameter), and at τ = 0.1 it is below 0.1.
    errors = [mixture_probe[f"gumbel-softmax, τ={t}"].mean_abs_error for t in ("1", "0.5", "0.1")]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1
    assert mixture_probe["gumbel-softmax, τ=1"].max_abs_z > 20
    assert mixture_probe["gumbel-softmax, τ=0.5"].max_abs_z > 20


def test_straight_through_theta_gradient_is_unbiased(mixture_probe, mixture):
    # Straight-through evaluates p(x|z) at the hard sample, so θ's gradient is the unbiased
    # pathwise one; the logits' gradient is biased.
    result = mixture_probe["straight-through, τ=0.5"]
    exact = flat(mixture.exact_gradient())
    stderr = (result.per_coordinate_variance / result.num_draws).sqrt()
    z = (result.mean - exact).abs() / stderr.clamp_min(1e-12)  # the prior logits' is exact: 0
    k = mixture.num_q_coordinates
    assert z[k:].max() < Z_LIMIT
    assert z[:k].max() > 2 * Z_LIMIT


def test_gumbel_softmax_value_is_an_unbiased_elbo_estimate(mixture):
    # The value is the ELBO estimate at the hard (Gumbel-max) samples, exact draws from q: its
    # mean over 4000 replicas is within 4.5 standard errors of the enumerated ELBO, and the
    # straight-through value (also at the hard sample) is identical on the same seed.
    r = 4000
    x, logits, model = mixture.x.expand(r, 3, 2), mixture.logits.expand(r, 3, 3), mixture.model
    with torch.no_grad():
        torch.manual_seed(10)
        values = gumbel_softmax_elbo(x, logits, model.prior, model.likelihood, 0.5)
        torch.manual_seed(10)
        straight = gumbel_softmax_elbo(x, logits, model.prior, model.likelihood, 0.5, 1, True)
        exact = elbo_enumerated(
            mixture.x, OneHotCategorical(logits=mixture.logits), model.prior, model.likelihood
        )
    torch.testing.assert_close(values, straight, rtol=1e-12, atol=1e-12)
    stderr = values.std(0) / math.sqrt(r)
    assert ((values.mean(0) - exact).abs() < Z_LIMIT * stderr).all()


def test_discrete_score_function_value_equals_elbo_on_same_draws(mixture):
    q, model = OneHotCategorical(logits=mixture.logits), mixture.model
    torch.manual_seed(11)
    reference = elbo_kl(mixture.x, q, model.prior, model.likelihood, 4)
    torch.manual_seed(11)
    value = score_function_elbo(mixture.x, q, model.prior, model.likelihood, 4)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# The probe and its table


def test_variance_probe_on_a_known_distribution():
    # objective = θ·ε with ε ~ N(0, diag(1, 4)): gradient ε, mean 0, variances 1 and 4.
    theta = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    scale = torch.tensor([1.0, 2.0], dtype=DTYPE)
    torch.manual_seed(12)
    (result,) = variance_probe(
        {"gaussian": lambda: (theta * scale * torch.randn(2, dtype=DTYPE)).sum()},
        [theta],
        4000,
        [torch.zeros(2, dtype=DTYPE)],
    )
    # Variance of a sample variance of a Gaussian: 2σ⁴/(N−1); 4.5 of those standard errors.
    torch.testing.assert_close(
        result.per_coordinate_variance, scale**2, rtol=4.5 * math.sqrt(2 / 3999), atol=0
    )
    assert result.variance == pytest.approx(result.per_coordinate_variance.sum().item())
    assert result.max_abs_z < Z_LIMIT and result.mean_abs_error is not None


def test_format_probe_table_lists_each_estimator(linear_probe):
    table = format_probe_table(list(linear_probe.values()))
    print("\n" + table)
    lines = table.splitlines()
    assert "total variance" in lines[0] and "max |z|" in lines[0]
    assert len(lines) == 2 + len(linear_probe) + 1
    row = next(line for line in lines if line.startswith("reparameterization "))
    assert "1.0" in row.split()  # the ratio of the reference to itself


def test_probe_without_exact_gradient_leaves_bias_columns_empty():
    theta = torch.ones(1, dtype=DTYPE, requires_grad=True)
    (result,) = variance_probe({"constant": lambda: 3.0 * theta.sum()}, [theta], 5)
    assert result.variance == 0.0 and result.max_abs_z is None and result.mean_abs_error is None
    assert "constant" in format_probe_table([result])


# --------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_raise_value_errors_naming_the_argument(linear, mixture):
    args = (linear.x, linear.q(), linear.model.prior, linear.model.likelihood)
    for estimator in (reparameterized_elbo, score_function_elbo):
        with pytest.raises(ValueError, match="num_samples"):
            estimator(*args, num_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        score_function_elbo(*args, num_samples=1, baseline=LeaveOneOut())

    mixture_args = (mixture.x, mixture.logits, mixture.model.prior, mixture.model.likelihood)
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            gumbel_softmax_elbo(*mixture_args, temperature=temperature)
    with pytest.raises(ValueError, match="num_samples"):
        gumbel_softmax_elbo(*mixture_args, num_samples=0)
    with pytest.raises(ValueError, match="logits_or_q"):
        gumbel_softmax_elbo(mixture.x, linear.q(), mixture.model.prior, mixture.model.likelihood)

    q = OneHotCategorical(logits=mixture.logits)
    with pytest.raises(ValueError, match="score_function_elbo"):
        reparameterized_elbo(mixture.x, q, mixture.model.prior, mixture.model.likelihood)

    with pytest.raises(ValueError, match="decay"):
        MovingAverageBaseline(decay=1.0)
    with pytest.raises(ValueError, match="num_draws"):
        variance_probe({"a": lambda: linear.loc.sum()}, [linear.loc], num_draws=1)
    with pytest.raises(ValueError, match="exact_gradient"):
        variance_probe({"a": lambda: linear.loc.sum()}, [linear.loc], 2, [])
    with pytest.raises(ValueError, match="baseline module"):
        bad = LearnedBaseline(nn.Linear(4, 2, dtype=DTYPE))
        score_function_elbo(*args, baseline=bad)


def test_dreg_value_is_iwae_and_gradients_are_unbiased():
    """DReG: same value and θ-gradient as IWAE on the same draws; φ-gradient equal in expectation."""
    from latentvi.bounds import iwae_bound
    from latentvi.gradients import iwae_dreg

    g = torch.Generator().manual_seed(20)
    model = LinearGaussian(
        torch.randn(4, 2, generator=g, dtype=torch.float64),
        torch.zeros(4, dtype=torch.float64),
        0.7,
    )
    x = model.sample(3, g)
    loc = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    raw = torch.zeros(3, 2, dtype=torch.float64).requires_grad_(True)

    def q():
        return diagonal_gaussian(loc, torch.nn.functional.softplus(raw))

    theta = list(model.parameters())
    torch.manual_seed(21)
    dreg = iwae_dreg(x, q(), model.prior, model.likelihood, 8)
    dreg_theta = torch.autograd.grad(dreg.sum(), theta)
    torch.manual_seed(21)
    iwae = iwae_bound(x, q(), model.prior, model.likelihood, 8)
    iwae_theta = torch.autograd.grad(iwae.sum(), theta)
    torch.testing.assert_close(dreg, iwae)
    for a, b in zip(dreg_theta, iwae_theta, strict=True):
        torch.testing.assert_close(a, b)

    draws = 3000
    torch.manual_seed(22)
    dreg_grads = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(
                        iwae_dreg(x, q(), model.prior, model.likelihood, 8).sum(), [loc, raw]
                    )
                ]
            )
            for _ in range(draws)
        ]
    )
    iwae_grads = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(
                        iwae_bound(x, q(), model.prior, model.likelihood, 8).sum(), [loc, raw]
                    )
                ]
            )
            for _ in range(draws)
        ]
    )
    difference = dreg_grads.mean(0) - iwae_grads.mean(0)
    stderr = ((dreg_grads.var(0) + iwae_grads.var(0)) / draws).sqrt()
    assert (difference.abs() < 4.5 * stderr).all(), difference / stderr
    # And the point of DReG: a lower-variance φ-gradient than plain IWAE at the same K.
    assert dreg_grads.var(0).sum() < iwae_grads.var(0).sum()
