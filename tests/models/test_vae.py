"""The VAE: shapes, the bound ordering, objective bookkeeping, and the two-layer chain."""

import math

import pytest
import torch

from latentvi.distributions import diagonal_gaussian
from latentvi.models.chain import GaussianChain
from latentvi.models.vae import VAE, VAEConfig

SHAPE = (1, 8, 8)


def tiny(**overrides) -> VAE:
    torch.manual_seed(0)
    defaults = {"latent_dim": 3, "hidden": (16,), "latent_dim_1": 4, "hidden_1": (8,)}
    return VAE(SHAPE, VAEConfig(**{**defaults, **overrides}))


def binary_images(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) > 0.5).float()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"body": "conv"},
        {"stochastic_layers": 2},
        {"likelihood": "gaussian"},
        {"likelihood": "gaussian-fixed"},
        {"likelihood": "continuous-bernoulli"},
    ],
)
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_vae_shapes(overrides, batch):
    model = tiny(**overrides)
    x = torch.rand(*batch, *SHAPE)
    q = model.encode(x)
    assert q.batch_shape == batch and q.event_shape == (model.latent_dim,)
    z = q.rsample((2,))
    p = model.decode(z)
    assert p.batch_shape == (2, *batch) and p.event_shape == SHAPE
    assert model.elbo(x).shape == batch
    assert model.iwae(x, 3).shape == batch
    estimate, stderr = model.log_likelihood(x, 6, chunk_size=4, return_stderr=True)
    assert estimate.shape == batch and stderr.shape == batch
    assert model.sample(3).shape == (3, *SHAPE)
    assert model.reconstruct(x).shape == (*batch, *SHAPE)


@pytest.mark.parametrize("layers", [1, 2])
@torch.no_grad()
def test_elbo_below_iwae_below_importance_estimate(layers):
    """E[ELBO] ≤ E[IWAE_10] ≤ E[IWAE_1000] (≈ log p(x)) on an untrained model, with MC error."""
    model = tiny(stochastic_layers=layers)
    x = binary_images()
    torch.manual_seed(2)
    elbo = torch.stack([model.elbo(x) for _ in range(300)])
    iwae = torch.stack([model.iwae(x, 10) for _ in range(300)])
    log_px, stderr = model.log_likelihood(x, 20000, chunk_size=5000, return_stderr=True)
    se = lambda d: d.std(0) / math.sqrt(d.shape[0])  # noqa: E731
    assert (elbo.mean(0) < iwae.mean(0) + 4.5 * (se(elbo) + se(iwae))).all()
    assert (iwae.mean(0) < log_px + 4.5 * (se(iwae) + stderr)).all()
    # The gap ELBO → IWAE_10 is real (not noise) on an untrained model, averaged over examples.
    gap = iwae.mean(0) - elbo.mean(0)
    assert gap.mean() > 4.5 * (se(elbo) + se(iwae)).mean()


def test_loss_is_negative_elbo_and_beta_weights_the_kl():
    x = binary_images()
    model = tiny()
    torch.manual_seed(3)
    loss, metrics = model.loss(x)
    torch.manual_seed(3)
    elbo = model.elbo(x).mean()
    torch.testing.assert_close(loss, -elbo)
    torch.testing.assert_close(metrics["elbo"], elbo.detach())
    beta_model = tiny(beta=4.0)
    torch.manual_seed(3)
    beta_loss, beta_metrics = beta_model.loss((x, torch.zeros(5)))
    expected = beta_metrics["loss/recon"] + 4.0 * beta_metrics["loss/kl"]
    torch.testing.assert_close(beta_loss, expected)


def test_iwae_objective_value():
    x = binary_images()
    model = tiny(objective="iwae", num_samples=5)
    torch.manual_seed(4)
    loss, metrics = model.loss(x)
    torch.manual_seed(4)
    torch.testing.assert_close(loss, -model.iwae(x, 5).mean())
    assert "iwae" in metrics


def test_chain_log_prob_is_the_sum_of_its_parts():
    torch.manual_seed(5)
    first = diagonal_gaussian(torch.randn(4, 2), torch.rand(4, 2) + 0.5)
    weight = torch.randn(2, 3)

    def conditional(a):
        return diagonal_gaussian(a @ weight, torch.ones(*a.shape[:-1], 3))

    chain = GaussianChain(first, conditional)
    z = chain.rsample((6,))
    assert z.shape == (6, 4, 5)
    expected = first.log_prob(z[..., :2]) + conditional(z[..., :2]).log_prob(z[..., 2:])
    torch.testing.assert_close(chain.log_prob(z), expected)
    reverse = GaussianChain(first, conditional, reverse=True)
    zr = reverse.rsample()
    expected = first.log_prob(zr[..., 3:]) + conditional(zr[..., 3:]).log_prob(zr[..., :3])
    torch.testing.assert_close(reverse.log_prob(zr), expected)


def test_bad_input_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="x has shape"):
        model.elbo(torch.zeros(2, 1, 7, 7))
    with pytest.raises(ValueError, match="latent_dim"):
        VAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="dreg"):
        VAEConfig(dreg=True)
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


@pytest.mark.parametrize("layers", [1, 2])
def test_every_hidden_layer_has_its_activation(layers):
    """784-200-200-50 means two tanh layers in the encoder and in the decoder (Burda et al.)."""
    model = VAE((1, 28, 28), VAEConfig(stochastic_layers=layers))

    def count(module):
        return sum(isinstance(m, torch.nn.Tanh) for m in module.modules())

    assert count(model.encoder) == 2 and count(model.decoder) == 2
    if layers == 2:
        assert count(model.encoder_2) == 2 and count(model.decoder_2) == 2


def test_custom_vae_of_a_vaes_own_networks_gives_the_vaes_loss_and_reloads(tmp_path):
    """A CustomVAE from the networks of a VAE gives the VAE's (generic-path) objective, bitwise,
    for the ELBO, β-VAE and IWAE; fit trains it; load(run, model=...) refills a fresh one."""
    from torch import nn

    import latentvi as lv

    torch.manual_seed(0)
    for options in ({}, {"beta": 2.0, "num_samples": 3}, {"objective": "iwae", "num_samples": 4}):
        config = VAEConfig(latent_dim=3, hidden=(16,), **options)
        vae = VAE((1, 4, 4), config)
        vae.fused = False
        custom = lv.CustomVAE(
            vae.encoder, nn.Sequential(vae.decoder, vae.likelihood_head), latent_dim=3,
            objective=config.objective, num_samples=config.num_samples, beta=config.beta,
        )  # fmt: skip
        x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))
        torch.manual_seed(1)
        expected, expected_metrics = vae.loss(x)
        torch.manual_seed(1)
        got, metrics = custom.loss(x)
        assert torch.equal(got, expected) and metrics.keys() == expected_metrics.keys()

    def build():
        encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(16, 6), _GaussianFromParams())
        decoder = nn.Sequential(nn.Linear(3, 16), nn.Unflatten(-1, (1, 4, 4)), _Bernoulli())
        return lv.CustomVAE(encoder, decoder, latent_dim=3)

    data = torch.bernoulli(torch.full((40, 1, 4, 4), 0.3))
    trained = build()
    batches = lv_batches(data)
    lv.fit(trained, batches.make_batches, batches,
           lv.TrainConfig(max_steps=10, out=str(tmp_path / "run"), progress=False,
                          tensorboard=False))  # fmt: skip
    reopened = lv.load(tmp_path / "run", model=build())
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), reopened.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="does not match the model"):
        lv.load(tmp_path / "run", model=lv.CustomVAE(nn.Linear(16, 2), nn.Linear(2, 16), 2))
    with pytest.raises(TypeError, match=r"must return a torch\.distributions\.Distribution"):
        lv.CustomVAE(nn.Identity(), nn.Identity(), latent_dim=2).encode(torch.zeros(2))


class _GaussianFromParams(torch.nn.Module):
    def forward(self, params):
        from latentvi import diagonal_gaussian

        loc, raw = params.chunk(2, -1)
        return diagonal_gaussian(loc, torch.nn.functional.softplus(raw) + 1e-3)


class _Bernoulli(torch.nn.Module):
    def forward(self, logits):
        from latentvi import bernoulli

        return bernoulli(logits, 3)


def lv_batches(data):
    from latentvi.data import Batches

    return Batches(data, batch_size=10)
