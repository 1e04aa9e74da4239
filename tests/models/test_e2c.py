"""E2C: the transition's form, the pushed-forward covariance, the full-vs-diagonal KL, the loss."""

import math

import pytest
import torch

from latentvi.distributions import diagonal_gaussian, kl
from latentvi.models.e2c import E2C, E2CConfig
from latentvi.train import TrainConfig, fit

SHAPE = (2, 8, 8)


def tiny(**overrides) -> E2C:
    torch.manual_seed(0)
    defaults = {"latent_dim": 3, "hidden": (16,), "transition_hidden": (8,), "channels": (4, 8)}
    return E2C(SHAPE, 2, E2CConfig(**{**defaults, **overrides})).double()


def test_transition_is_identity_plus_rank_one():
    model = tiny()
    z = torch.randn(5, 3, dtype=torch.float64)
    v, r, b, o = model.transition.factors(z)
    a, b2, o2 = model.transition(z)
    torch.testing.assert_close(a, torch.eye(3, dtype=z.dtype) + torch.einsum("ni,nj->nij", v, r))
    assert (torch.linalg.matrix_rank(a - torch.eye(3, dtype=z.dtype), atol=1e-10) == 1).all()
    torch.testing.assert_close(b, b2)
    torch.testing.assert_close(o, o2)
    u = torch.randn(5, 2, dtype=torch.float64)
    expected = torch.einsum("nij,nj->ni", a, z) + torch.einsum("nij,nj->ni", b, u) + o
    torch.testing.assert_close(model.step(z, u), expected)
    # The linearization E2C hands to iLQR is (A, B) at z.
    a3, b3 = model.linearization(z, u)
    torch.testing.assert_close(a3, a)
    torch.testing.assert_close(b3, b)


def test_predicted_latent_is_q_pushed_through_the_linear_map():
    model = tiny(transition_noise=0.05)
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.1
    u = torch.randn(4, 2, generator=g, dtype=torch.float64)
    q = diagonal_gaussian(mean, scale)
    predicted = model.predict(q, u)
    a, b, o = model.transition(mean)
    sigma = torch.diag_embed(scale**2)
    torch.testing.assert_close(
        predicted.covariance_matrix,
        a @ sigma @ a.transpose(-1, -2) + 0.05**2 * torch.eye(3, dtype=torch.float64),
    )
    torch.testing.assert_close(predicted.mean, model.step(mean, u))
    # Monte Carlo: pushing samples of q through z -> A z + B u + o (+ noise) gives that covariance.
    z = q.sample((200_000,))
    pushed = torch.einsum("nij,snj->sni", a, z) + torch.einsum("nij,nj->ni", b, u) + o
    pushed = pushed + 0.05 * torch.randn_like(pushed)
    centered = pushed - pushed.mean(0)
    empirical = torch.einsum("sni,snj->nij", centered, centered) / (z.shape[0] - 1)
    # standard error of a covariance entry ≈ σ_i σ_j √(2/S) ≲ 0.01 here: allow 5 of them
    torch.testing.assert_close(empirical, predicted.covariance_matrix, atol=0.05, rtol=0.05)


def test_full_versus_diagonal_gaussian_kl_matches_monte_carlo_and_closed_form():
    g = torch.Generator().manual_seed(2)
    L = torch.randn(3, 3, generator=g, dtype=torch.float64)
    covariance = L @ L.T + 0.5 * torch.eye(3, dtype=torch.float64)
    full = torch.distributions.MultivariateNormal(
        torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64), covariance_matrix=covariance
    )
    diagonal = diagonal_gaussian(
        torch.tensor([0.0, 0.5, 0.2], dtype=torch.float64),
        torch.tensor([1.5, 0.8, 2.0], dtype=torch.float64),
    )
    value = kl(full, diagonal)
    # closed form: ½ [tr(S⁻¹Σ) + (m−μ)ᵀ S⁻¹ (m−μ) − k + log det S − log det Σ]
    s = diagonal.variance
    d = diagonal.mean - full.mean
    closed = 0.5 * (
        (torch.diagonal(covariance) / s).sum()
        + (d**2 / s).sum()
        - 3
        + s.log().sum()
        - torch.logdet(covariance)
    )
    torch.testing.assert_close(value, closed)
    z = full.sample((400_000,))
    samples = full.log_prob(z) - diagonal.log_prob(z)
    error = samples.std() / math.sqrt(z.shape[0])
    assert abs(samples.mean() - value) < 4 * error


@pytest.mark.parametrize("body", ["mlp", "conv"])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_loss_terms_are_finite_with_batch_shapes(body, batch):
    model = tiny(body=body)
    x = torch.rand(*batch, *SHAPE, dtype=torch.float64)
    x_next = torch.rand(*batch, *SHAPE, dtype=torch.float64)
    u = torch.randn(*batch, 2, dtype=torch.float64)
    losses = model.losses(x, u, x_next)
    assert set(losses) == {"recon", "predict", "kl", "consistency"}
    for name, value in losses.items():
        assert value.shape == batch, name
        assert torch.isfinite(value).all(), name
    assert (losses["kl"] >= 0).all() and (losses["consistency"] >= 0).all()
    assert model.encode(x).batch_shape == batch
    assert model.decode(model.encode(x).mean).log_prob(x).shape == batch


def _constant_transition(model: E2C, generator: torch.Generator):
    """Make h(z) constant (last layer's weights zero): returns the fixed (A, B, o)."""
    last = [m for m in model.transition.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(
            0.5 * torch.randn(last.bias.shape, generator=generator, dtype=last.bias.dtype)
        )
    return model.transition(torch.zeros(3, dtype=torch.float64))


def test_multi_step_terms_push_q_through_the_chain_of_linear_maps():
    model = tiny(transition_noise=0.05)
    g = torch.Generator().manual_seed(4)
    a, b, o = _constant_transition(model, g)
    x = torch.rand(4, *SHAPE, generator=g, dtype=torch.float64)
    x_next = torch.rand(4, 2, *SHAPE, generator=g, dtype=torch.float64)
    u = torch.randn(4, 2, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(5)
    two = model.losses(x, u, x_next)
    torch.manual_seed(5)  # the same draws for z_t and the first step's noise
    one = model.losses(x, u[:, 0], x_next[:, 0])
    torch.testing.assert_close(two["recon"], one["recon"])
    torch.testing.assert_close(two["kl"], one["kl"])
    # Q̂_2 in closed form: mean A(Aμ + Bu₁ + o) + Bu₂ + o, covariance A²Σ(A²)ᵀ + σ_w²(AAᵀ + I)
    q = model.encode(x)
    eye = torch.eye(3, dtype=torch.float64)
    mean_1 = q.mean @ a.T + u[:, 0] @ b.T + o
    mean_2 = mean_1 @ a.T + u[:, 1] @ b.T + o
    covariance = a @ a @ torch.diag_embed(q.variance) @ (a @ a).T + 0.05**2 * (a @ a.T + eye)
    second = kl(
        torch.distributions.MultivariateNormal(mean_2, covariance_matrix=covariance),
        model.encode(x_next[:, 1]),
    )
    torch.testing.assert_close(two["consistency"], (one["consistency"] + second) / 2)
    assert two["predict"].shape == (4,) and torch.isfinite(two["predict"]).all()
    with pytest.raises(ValueError, match="K steps"):
        model.losses(x, u, x_next[:, :1])


def test_mean_transition_fits_a_b_o_through_the_mean_prediction_only():
    model = tiny(mean_transition=True, transition_noise=0.05)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(5, *SHAPE, generator=g, dtype=torch.float64)
    x_next = torch.rand(5, *SHAPE, generator=g, dtype=torch.float64)
    u = torch.randn(5, 2, generator=g, dtype=torch.float64)
    parameters = list(model.transition.parameters())
    consistency = model.losses(x, u, x_next)["consistency"].sum()
    # the same value as Q̂ built at q's mean (what predict() does) ...
    q, q_next = model.encode(x), model.encode(x_next)
    torch.testing.assert_close(consistency, kl(model.predict(q, u), q_next).sum())
    # ... with A's gradient from the mean A μ + B u + o only: Σ goes through A without gradient
    a, b, o = model.transition(q.mean)
    eye = torch.eye(3, dtype=torch.float64)
    covariance = a.detach() @ torch.diag_embed(q.variance) @ a.detach().transpose(-1, -2)
    manual = kl(
        torch.distributions.MultivariateNormal(
            torch.einsum("nij,nj->ni", a, q.mean) + torch.einsum("nij,nj->ni", b, u) + o,
            covariance_matrix=covariance + 0.05**2 * eye,
        ),
        q_next,
    ).sum()
    expected = torch.autograd.grad(manual, parameters, retain_graph=True)
    for got, want in zip(torch.autograd.grad(consistency, parameters), expected, strict=True):
        torch.testing.assert_close(got, want)
    # the paper's loss (the default) does send the covariance's gradient to A
    plain = tiny(transition_noise=0.05)
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(7)
    value = plain.losses(x, u, x_next)["consistency"].sum()
    grads = torch.autograd.grad(value, list(plain.transition.parameters()))
    assert any((g1 - g2).abs().max() > 1e-6 for g1, g2 in zip(grads, expected, strict=True))


def test_loss_is_the_weighted_sum_of_the_named_terms():
    model = tiny(beta=0.5, consistency=2.0)
    x, x_next = (
        torch.rand(6, *SHAPE, dtype=torch.float64),
        torch.rand(6, *SHAPE, dtype=torch.float64),
    )
    u = torch.randn(6, 2, dtype=torch.float64)
    torch.manual_seed(3)
    total, metrics = model.loss((x, u, x_next))
    torch.manual_seed(3)
    terms = {k: v.mean() for k, v in model.losses(x, u, x_next).items()}
    expected = terms["recon"] + terms["predict"] + 0.5 * terms["kl"] + 2.0 * terms["consistency"]
    torch.testing.assert_close(total, expected)
    assert set(metrics) == {"loss/recon", "loss/predict", "loss/kl", "loss/consistency"}


def test_bad_config_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="transition_noise"):
        E2CConfig(transition_noise=0.0)
    with pytest.raises(ValueError, match="body"):
        E2CConfig(body="resnet")


def point_images(position: torch.Tensor, size: int = 16) -> torch.Tensor:
    """A Gaussian blob at ``position [N] ∈ [-1, 1]`` along a row: ``[N, 1, 1, size]`` in [0, 1]."""
    grid = torch.linspace(-1, 1, size)
    return torch.exp(-((grid - position[:, None]) ** 2) / (2 * 0.15**2))[:, None, None, :]


@pytest.mark.slow
def test_e2c_on_a_moving_point_recovers_position_and_linear_dynamics(tmp_path):
    """A point on a line, x' = x + 0.2 u (clipped to [-1, 1]), seen as a 16-pixel image: after a
    short training run the latent mean is an (almost) linear function of the position, and the
    model's one-step prediction lands on the encoding of the true next image."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    position = torch.rand(n, generator=g) * 1.6 - 0.8
    action = torch.rand(n, 1, generator=g) * 2 - 1
    following = (position + 0.2 * action[:, 0]).clamp(-1, 1)
    x, x_next = point_images(position), point_images(following)
    torch.manual_seed(0)
    config = E2CConfig(latent_dim=1, hidden=(128, 128), transition_hidden=(16,))
    model = E2C((1, 1, 16), 1, config)

    def batches(epoch, generator):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, 128):
            index = order[i : i + 128]
            yield x[index], action[index], x_next[index]

    fit(model, batches, n // 128, TrainConfig(epochs=30, lr=3e-3, progress=False, seed=0))
    with torch.no_grad():
        mu = model.encode(x).mean[:, 0]
        design = torch.stack([mu, torch.ones(n)], -1)
        coefficients = torch.linalg.lstsq(design, position[:, None]).solution
        residual = position - (design @ coefficients)[:, 0]
        r_squared = 1 - residual.var() / position.var()
        assert r_squared > 0.95  # an untrained encoder gives ≈ 0.2
        predicted = model.step(model.encode(x).mean, action)
        target = model.encode(x_next).mean
        assert (predicted - target).pow(2).mean() < 0.05 * target.var()
