"""The CVAE: shapes, ELBO ≤ log p(y|x), the KL against a learned prior, and a bimodal fit."""

import math

import pytest
import torch

from latentvi.data import Batches
from latentvi.distributions import kl, standard_normal
from latentvi.models.cvae import CVAE, CVAEConfig, Regressor
from latentvi.train import TrainConfig, fit

X, Y = 3, 2


def tiny(**overrides) -> CVAE:
    torch.manual_seed(0)
    defaults = {"latent_dim": 2, "hidden": (16,)}
    return CVAE(X, Y, CVAEConfig(**{**defaults, **overrides}))


@pytest.mark.parametrize("prior", ["learned", "standard"])
@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian-fixed", "bernoulli"])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_cvae_shapes(prior, likelihood, batch):
    model = tiny(prior=prior, likelihood=likelihood)
    x, y = torch.randn(*batch, X), torch.rand(*batch, Y).round()
    q = model.encode(x, y)
    assert q.batch_shape == batch and q.event_shape == (2,)
    p = model.decode(x, q.rsample((5,)))
    assert p.batch_shape == (5, *batch) and p.event_shape == (Y,)
    assert model.elbo(x, y).shape == batch
    estimate, stderr = model.log_likelihood(x, y, 6, chunk_size=4, return_stderr=True)
    assert estimate.shape == batch and stderr.shape == batch
    assert model.sample(x).shape == (*batch, Y)
    assert model.sample(x, 7).shape == (7, *batch, Y)
    assert model.sample_latent(x, 7).shape == (7, *batch, 2)
    loss, metrics = model.loss((x, y))
    assert loss.shape == () and set(metrics) == {"loss/recon", "loss/kl", "elbo"}


def test_learned_prior_kl_matches_monte_carlo():
    """The loss's KL term is KL(q(z|x,y) ‖ p(z|x)) between the two Gaussians: it equals the Monte
    Carlo mean of log q(z) − log p(z|x) over 20 000 draws within 4 standard errors, and differs
    from the KL against N(0, I) (so the learned prior really enters)."""
    model = tiny(prior="learned")
    with torch.no_grad():  # move the prior away from N(0, I)
        model.prior_net.body[-1].bias.add_(torch.tensor([0.7, -0.4, 0.5, -0.3]))
    torch.manual_seed(3)
    x, y = torch.randn(6, X), torch.randn(6, Y)
    _, divergence = model.elbo_terms(x, y)
    q, prior = model.encode(x, y), model.prior(x)
    z = q.sample((20_000,))
    log_ratio = (q.log_prob(z) - prior.log_prob(z)).detach()
    mc_mean, mc_se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    assert torch.all((divergence.detach() - mc_mean).abs() < 4 * mc_se + 1e-5)
    standard = kl(q, standard_normal(2))
    assert torch.all((standard - divergence).abs() > 0.05)


def _bimodal(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x + 0.5·s + 0.1·ε, s = ±1 with equal odds: p(y|x) has two modes 1 apart."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    s = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
    return x, x + 0.5 * s + 0.1 * torch.randn(n, 1, generator=g)


def _train(model, x, y, steps=1500):
    batches = Batches(x, y, batch_size=128)
    config = TrainConfig(max_steps=steps, lr=3e-3, progress=False, tensorboard=False, log_every=500)
    fit(model, batches.make_batches, batches, config)
    return model.eval()


@pytest.fixture(scope="module")
def bimodal_fit():
    x, y = _bimodal(2000, seed=0)
    torch.manual_seed(0)
    cvae = _train(CVAE(1, 1, CVAEConfig(latent_dim=1, hidden=(32, 32))), x, y)
    regressor = _train(Regressor(1, 1, CVAEConfig(hidden=(32, 32))), x, y)
    return cvae, regressor


def test_elbo_below_importance_log_likelihood_on_held_out(bimodal_fit):
    """On held-out data the mean ELBO (100 draws per example) lies below the importance-sampled
    log p(y|x) (K = 2000), beyond both estimates' standard errors."""
    cvae, _ = bimodal_fit
    x, y = _bimodal(300, seed=1)
    torch.manual_seed(4)
    with torch.no_grad():
        elbo = cvae.elbo(x, y, num_samples=100)
    log_likelihood = cvae.log_likelihood(x, y, 2000)
    gap = log_likelihood - elbo
    assert gap.mean() > 3 * gap.std() / math.sqrt(gap.numel())
    assert torch.all(gap > -0.05)  # per example too, up to Monte Carlo error


def test_cvae_fits_two_modes_the_regressor_cannot(bimodal_fit):
    """The best single Gaussian for this p(y|x) has variance 0.26, so the regressor's held-out
    log-likelihood is at most −½ log(2πe·0.26) = −0.745 nats; the true one is +0.19. The CVAE must
    beat the regressor by 0.4 nats and its samples must fall on both modes."""
    cvae, regressor = bimodal_fit
    x, y = _bimodal(1000, seed=2)
    torch.manual_seed(5)
    cvae_ll = cvae.log_likelihood(x, y, 500).mean().item()
    regressor_ll = regressor.log_likelihood(x, y).mean().item()
    assert regressor_ll < -0.70
    assert cvae_ll > regressor_ll + 0.4
    offsets = (cvae.sample(x, mean=True) - x).squeeze(-1)
    upper = (offsets > 0).float().mean().item()
    assert 0.3 < upper < 0.7
    assert (offsets.abs() - 0.5).abs().median() < 0.15


def test_bad_input_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="x has shape"):
        model.elbo(torch.randn(4, X + 1), torch.randn(4, Y))
    with pytest.raises(ValueError, match="y has shape"):
        model.elbo(torch.randn(4, X), torch.randn(4, Y + 1))
    with pytest.raises(ValueError, match="one x per y"):
        model.elbo(torch.randn(4, X), torch.randn(5, Y))
    with pytest.raises(ValueError, match="prior"):
        CVAEConfig(prior="flat")
    with pytest.raises(ValueError, match="tuple"):
        model.loss(torch.randn(4, X))
