"""Distribution helpers: closed forms against Monte Carlo, shapes, registered KLs."""

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from latentvi.density_kernels import GaussianKL, GaussianLogDensity
from latentvi.distributions import (
    DiagonalGaussian,
    bernoulli,
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


# --------------------------------------------------------------------------------------------------
# DiagonalGaussian: the fused log density and KL against torch.distributions, and their gradients

DTYPE = torch.float64
BATCHES = [(), (4,), (2, 3)]


def _reference(loc, scale, event_dims=1):
    return Independent(Normal(loc, scale), event_dims)


@pytest.mark.parametrize("batch", BATCHES)
def test_diagonal_gaussian_is_the_independent_normal(batch):
    """Same shapes, moments, log density and entropy as ``Independent(Normal(loc, scale), 1)``."""
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(*batch, 5, dtype=DTYPE, generator=generator)
    scale = 0.3 + torch.rand(*batch, 5, dtype=DTYPE, generator=generator)
    q, reference = diagonal_gaussian(loc, scale), _reference(loc, scale)
    assert isinstance(q, DiagonalGaussian) and isinstance(q, Independent)
    assert isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1
    assert (q.batch_shape, q.event_shape) == (reference.batch_shape, reference.event_shape)
    value = torch.randn(7, *batch, 5, dtype=DTYPE, generator=generator)
    torch.testing.assert_close(q.log_prob(value), reference.log_prob(value), rtol=1e-12, atol=0)
    torch.testing.assert_close(q.entropy(), reference.entropy(), rtol=1e-12, atol=0)
    for moment in ("mean", "mode", "variance", "stddev"):
        torch.testing.assert_close(getattr(q, moment), getattr(reference, moment))
    torch.testing.assert_close(q.base_dist.loc, loc)
    torch.testing.assert_close(q.base_dist.scale, scale)
    assert q.rsample((3,)).shape == q.sample((3,)).shape == (3, *batch, 5)
    assert q.expand((6, *batch)).batch_shape == (6, *batch)


def test_diagonal_gaussian_keeps_broadcast_parameters_unexpanded():
    """One scalar σ for every coordinate (LinearGaussian's noise) counts once per coordinate."""
    loc = torch.randn(3, 4, 6, dtype=DTYPE)
    scale = torch.tensor(0.7, dtype=DTYPE)
    q = diagonal_gaussian(loc, scale, event_dims=2)
    assert q.scale.shape == () and q.batch_shape == (3,) and q.event_shape == (4, 6)
    value = torch.randn(2, 3, 4, 6, dtype=DTYPE)
    expected = _reference(loc, scale.expand_as(loc), 2).log_prob(value)
    torch.testing.assert_close(q.log_prob(value), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.stddev, scale.expand_as(loc))
    point = diagonal_gaussian(torch.zeros(5, dtype=DTYPE), 2.0, event_dims=0)  # event shape []
    torch.testing.assert_close(
        point.log_prob(torch.ones(5, dtype=DTYPE)),
        Normal(0.0, 2.0).log_prob(torch.ones(5, dtype=DTYPE)),
    )


@pytest.mark.parametrize("batch", BATCHES)
def test_kl_closed_form_matches_torch_and_monte_carlo(batch):
    generator = torch.Generator().manual_seed(1)
    loc_q = torch.randn(*batch, 4, dtype=DTYPE, generator=generator)
    scale_q = 0.4 + torch.rand(*batch, 4, dtype=DTYPE, generator=generator)
    loc_p = torch.randn(4, dtype=DTYPE, generator=generator)  # broadcast over the batch
    scale_p = 0.6 + torch.rand(4, dtype=DTYPE, generator=generator)
    q, p = diagonal_gaussian(loc_q, scale_q), diagonal_gaussian(loc_p, scale_p)
    exact = kl(q, p)
    assert exact.shape == batch
    torch.testing.assert_close(
        exact,
        kl_divergence(_reference(loc_q, scale_q), _reference(loc_p, scale_p)),
        rtol=1e-12,
        atol=1e-14,
    )
    torch.manual_seed(2)
    z = q.sample((200_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((exact - log_ratio.mean(0)).abs() < 4.5 * stderr).all()


def test_kl_against_the_standard_normal_uses_no_prior_parameters():
    """standard_normal's fast path equals the general closed form, and gives p no gradient."""
    loc = torch.randn(6, 3, dtype=DTYPE, requires_grad=True)
    scale = (0.5 + torch.rand(6, 3, dtype=DTYPE)).requires_grad_(True)
    prior = standard_normal(3, dtype=DTYPE)
    assert prior.is_standard
    general = diagonal_gaussian(torch.zeros(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE))
    assert not general.is_standard
    q = diagonal_gaussian(loc, scale)
    torch.testing.assert_close(kl(q, prior), kl(q, general), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(
        kl(q, prior), kl_divergence(_reference(loc, scale), _reference(general.loc, general.scale))
    )
    assert prior.expand((2,)).is_standard


def test_fused_functions_pass_gradcheck():
    """Hand-written gradients against finite differences, with broadcasting in every argument."""
    generator = torch.Generator().manual_seed(3)

    def leaf(*shape, positive=False):
        value = torch.randn(shape, dtype=DTYPE, generator=generator)
        return (value.abs() + 0.5 if positive else value).requires_grad_(True)

    log_density = GaussianLogDensity.apply
    # value with a sample dimension, loc per example, one scale per coordinate
    assert gradcheck(
        lambda v, m, s: log_density(v, m, s, 1), (leaf(2, 3, 4), leaf(3, 4), leaf(4, positive=True))
    )
    # scalar scale, two event dimensions, loc broadcast over the batch
    assert gradcheck(
        lambda v, m, s: log_density(v, m, s, 2), (leaf(3, 2, 4), leaf(2, 4), leaf(positive=True))
    )
    kl_function = GaussianKL.apply
    assert gradcheck(
        lambda a, b, c, d: kl_function(a, b, c, d, 1),
        (leaf(3, 4), leaf(3, 4, positive=True), leaf(4), leaf(4, positive=True)),
    )
    assert gradcheck(
        lambda a, b: kl_function(a, b, None, None, 2), (leaf(2, 3, 4), leaf(2, 3, 4, positive=True))
    )


def _second_derivatives(build, params):
    """d/dθ of Σ (d loss / dθ)², a gradient penalty: a second derivative through every node."""
    loss = build(*params).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    return torch.autograd.grad(penalty, params)


def _gaussian_params(shape=(4, 3), scale_shape=None, seed=11):
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, dtype=DTYPE, generator=generator).requires_grad_()
    raw = torch.randn(scale_shape or shape, dtype=DTYPE, generator=generator)
    scale = (raw.exp() * 0.5 + 0.3).requires_grad_()
    value = torch.randn(shape, dtype=DTYPE, generator=generator).requires_grad_()
    return loc, scale, value


@pytest.mark.parametrize("scale_shape", [(4, 3), (3,), ()])
def test_double_backward_of_log_prob_equals_torch(scale_shape):
    params = _gaussian_params(scale_shape=scale_shape)
    ours = _second_derivatives(lambda m, s, v: diagonal_gaussian(m, s).log_prob(v), params)
    torch_ = _second_derivatives(lambda m, s, v: Independent(Normal(m, s), 1).log_prob(v), params)
    for a, b in zip(ours, torch_, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        assert b.abs().max() > 1e-3  # a real second derivative, not zeros on both sides


@pytest.mark.parametrize("standard", [False, True])
def test_double_backward_of_kl_equals_torch(standard):
    loc, scale, _ = _gaussian_params()
    loc_p, scale_p, _ = _gaussian_params(scale_shape=(3,), seed=12)
    if standard:
        p_ours, p_torch = (
            standard_normal(3, dtype=DTYPE),
            Independent(Normal(torch.zeros(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE)), 1),
        )
        params = (loc, scale)
    else:
        params = (loc, scale, loc_p, scale_p)

    def ours(m, s, *p):
        prior = diagonal_gaussian(*p) if p else p_ours
        return kl(diagonal_gaussian(m, s), prior)

    def reference(m, s, *p):
        prior = Independent(Normal(*p), 1) if p else p_torch
        return kl_divergence(Independent(Normal(m, s), 1), prior)

    for a, b in zip(
        _second_derivatives(ours, params), _second_derivatives(reference, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        assert b.abs().max() > 1e-3


def test_double_backward_of_rsample_and_entropy_equals_torch():
    loc, scale, _ = _gaussian_params()

    def ours(m, s):
        torch.manual_seed(3)
        q = diagonal_gaussian(m, s)
        return q.rsample((2,)).square().sum(-1).sum(0) * q.entropy()

    def reference(m, s):
        torch.manual_seed(3)
        q = Independent(Normal(m, s), 1)
        return q.rsample((2,)).square().sum(-1).sum(0) * q.entropy()

    for a, b in zip(
        _second_derivatives(ours, (loc, scale)),
        _second_derivatives(reference, (loc, scale)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_double_backward_of_bernoulli_log_prob_equals_torch():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 7, dtype=DTYPE, generator=generator).requires_grad_()
    value = torch.rand(5, 7, dtype=DTYPE, generator=generator).requires_grad_()
    ours = _second_derivatives(lambda ell, v: bernoulli(ell).log_prob(v), (logits, value))
    reference = _second_derivatives(
        lambda ell, v: (ell * v - torch.nn.functional.softplus(ell)).sum(-1), (logits, value)
    )
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_torch_func_transforms_give_torch_values():
    loc, scale, value = (t.detach() for t in _gaussian_params())

    def ours(m):
        return (
            diagonal_gaussian(m, scale).log_prob(value).sum()
            + kl(diagonal_gaussian(m, scale), standard_normal(3, dtype=DTYPE)).sum()
        )

    def reference(m):
        q = Independent(Normal(m, scale), 1)
        prior = Independent(Normal(torch.zeros(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE)), 1)
        return q.log_prob(value).sum() + kl_divergence(q, prior).sum()

    torch.testing.assert_close(torch.func.grad(ours)(loc), torch.func.grad(reference)(loc))
    torch.testing.assert_close(torch.func.jacrev(ours)(loc), torch.func.jacrev(reference)(loc))
    batched = torch.func.vmap(lambda m: diagonal_gaussian(m, scale[0]).log_prob(value[0]))(loc)
    torch.testing.assert_close(batched, Independent(Normal(loc, scale[0]), 1).log_prob(value[0]))
    logits = torch.randn(4, 6, dtype=DTYPE)
    bits = torch.rand(4, 6, dtype=DTYPE)
    torch.testing.assert_close(
        torch.func.vmap(lambda ell, x: bernoulli(ell).log_prob(x))(logits, bits),
        bernoulli(logits).log_prob(bits),
    )


def test_kl_of_scalar_event_diagonal_gaussian_against_normal():
    loc, scale, _ = _gaussian_params()
    other = Normal(loc.detach() * 0.5, scale.detach() * 2)
    expected = kl_divergence(Normal(loc, scale), other)
    torch.testing.assert_close(kl(diagonal_gaussian(loc, scale, event_dims=0), other), expected)
    expected = kl_divergence(other, Normal(loc, scale))
    torch.testing.assert_close(kl(other, diagonal_gaussian(loc, scale, event_dims=0)), expected)


def test_importing_latentvi_leaves_torch_kl_registry_for_torch_classes_alone():
    import subprocess
    import sys

    script = (
        "import torch.distributions.kl as k\n"
        "def torch_pairs():\n"
        "    return sorted((a.__name__, b.__name__) for a, b in k._KL_REGISTRY\n"
        "                  if a.__module__.startswith('torch') and b.__module__.startswith('torch'))\n"
        "before = torch_pairs()\n"
        "import latentvi.distributions, latentvi.models, latentvi.bounds\n"
        "print(before == torch_pairs())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


def test_diagonal_gaussian_validation():
    with pytest.raises(ValueError, match="scale"):
        diagonal_gaussian(torch.zeros(3), -torch.ones(3), validate_args=True)
    with pytest.raises(ValueError, match="broadcastable"):
        diagonal_gaussian(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="event_dims"):
        diagonal_gaussian(torch.zeros(3), torch.ones(3), event_dims=2)
    q = diagonal_gaussian(torch.zeros(3), torch.ones(3), validate_args=True)
    with pytest.raises(ValueError):
        q.log_prob(torch.zeros(4))
    # Valid by construction: no checks (and no host synchronizations) when told so.
    diagonal_gaussian(torch.zeros(3), -torch.ones(3), validate_args=False)


@pytest.mark.parametrize("event_dims", [1, 3])
def test_bernoulli_log_prob_and_gradients_equal_torch(event_dims):
    """The one-node Bernoulli log-density against torch's Independent(Bernoulli), float64, with
    logits [S, B, *E] broadcast against values [B, *E] (binary and grey-level values)."""
    from torch.distributions import Bernoulli, Independent

    from latentvi.distributions import IndependentBernoulli, bernoulli

    g = torch.Generator().manual_seed(0)
    event = (3, 4) if event_dims == 1 else (1, 3, 4)
    shape = (2, 5, *event) if event_dims == 3 else (2, 5, 12)
    logits = (8 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    for value in ((torch.rand(shape[1:], generator=g) > 0.5).double(), torch.rand(shape[1:])):
        value = value.double().requires_grad_()
        ours = bernoulli(logits, event_dims)
        assert isinstance(ours, IndependentBernoulli)
        theirs = Independent(Bernoulli(logits=logits, validate_args=False), event_dims)
        got, want = ours.log_prob(value), theirs.log_prob(value)
        assert got.shape == want.shape == shape[: len(shape) - event_dims]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
        ours_grads = torch.autograd.grad((got * weights).sum(), (logits, value))
        their_grads = torch.autograd.grad((want * weights).sum(), (logits, value))
        for a, b in zip(ours_grads, their_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
