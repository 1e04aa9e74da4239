"""Conditional VAEs (Sohn, Lee & Yan 2015) and the deterministic regressor they are compared with.

The conditional model of the lecture: an input ``x``, an output ``y`` and a latent ``z`` with

    p(y|x) = ∫ p(y|x, z) p(z|x) dz,
    L(x, y) = E_{q(z|x,y)}[log p(y|x,z)] - KL(q(z|x,y) ‖ p(z|x))  ≤  log p(y|x).

* :class:`CVAE` — encoder q(z|x,y), decoder p(y|x,z) and prior p(z|x), either the fixed N(0, I) or
  a learned diagonal Gaussian network (Sohn et al.'s "conditional prior network"). The KL between
  the two Gaussians is analytic; ``log_likelihood(x, y, K)`` is the importance-sampled log p(y|x)
  with q(z|x,y) as proposal; ``sample(x)`` draws y ~ p(y|x).
* :class:`Regressor` — p(y|x) = likelihood(f(x)) with no latent: the deterministic baseline (an
  MSE regressor is its Gaussian form) whose log-likelihood is exact, so the two compare in nats.

Both reuse :mod:`latentvi.bounds`: a conditional model is the unconditional one with ``prior =
p(z|x)`` and ``likelihood = z ↦ p(y|x,z)``. Shapes: ``x [*B, X]``, ``y [*B, Y]`` (flat vectors;
flatten images first), ``z [*S, *B, Z]``; every bound is ``[*B]`` nats, summed over ``Y``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from latentvi.bounds import elbo_terms, importance_log_likelihood
from latentvi.config import check_positive_int, option, require, require_layer_sizes
from latentvi.distributions import bernoulli, diagonal_gaussian, positive_scale, standard_normal
from latentvi.nn import MLP, DiagonalGaussianEncoder

__all__ = [
    "ACTIVATIONS",
    "CVAE",
    "LIKELIHOODS",
    "PRIORS",
    "CVAEConfig",
    "Regressor",
    "VectorLikelihood",
]

LIKELIHOODS = ("gaussian", "gaussian-fixed", "bernoulli")
PRIORS = ("learned", "standard")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


@dataclasses.dataclass(frozen=True)
class CVAEConfig:
    """Architecture and objective of a :class:`CVAE` (and of its :class:`Regressor` baseline)."""

    latent_dim: int = option(2, "size of the latent z")
    hidden: tuple[int, ...] = option((64, 64), "hidden layer sizes of encoder, decoder and prior")
    prior: str = option("learned", "p(z|x): learned (a network of x) or standard N(0, I)")
    likelihood: str = option(
        "gaussian", "p(y|x,z): gaussian (learned σ), gaussian-fixed or bernoulli"
    )
    fixed_std: float = option(0.1, "σ of the gaussian-fixed likelihood")
    num_samples: int = option(1, "samples of z per example in the training ELBO")
    beta: float = option(1.0, "weight of the KL term (1 is the ELBO)")
    activation: str = option("tanh", "hidden activation: tanh, relu or elu")

    def __post_init__(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "use a positive integer")
        require_layer_sizes("hidden", self.hidden, "64,64")
        require(self.prior in PRIORS, "prior", self.prior, f"choose one of {', '.join(PRIORS)}")
        require(
            self.likelihood in LIKELIHOODS,
            "likelihood",
            self.likelihood,
            f"choose one of {', '.join(LIKELIHOODS)}",
        )
        require(self.fixed_std > 0, "fixed_std", self.fixed_std, "use a positive σ")
        require(self.num_samples >= 1, "num_samples", self.num_samples, "use 1 or more samples")
        require(self.beta >= 0, "beta", self.beta, "use a non-negative KL weight")
        require(
            self.activation in ACTIVATIONS,
            "activation",
            self.activation,
            f"choose one of {', '.join(ACTIVATIONS)}",
        )


class VectorLikelihood(nn.Module):
    """Decoder outputs ``[*S, *B, Y]`` -> p(y|·) with event ``[Y]`` (or the last ``event_dims``).

    ``gaussian``: N(output, σ²) with one learned σ per output dimension (maximizing it is MSE
    regression with the noise level fitted too); ``gaussian-fixed``: σ fixed; ``bernoulli``: the
    outputs are logits.
    """

    def __init__(
        self, kind: str, features: int, fixed_std: float = 0.1, event_dims: int = 1
    ) -> None:
        super().__init__()
        require(kind in LIKELIHOODS, "likelihood", kind, f"choose one of {', '.join(LIKELIHOODS)}")
        self.kind, self.fixed_std = kind, fixed_std
        self.event_dims = check_positive_int("event_dims", event_dims)
        if kind == "gaussian":
            self.raw_std = nn.Parameter(torch.full((features,), -1.0))  # softplus(-1) ≈ 0.31

    def forward(self, output: Tensor) -> Distribution:
        if self.kind == "bernoulli":
            return bernoulli(output, self.event_dims)
        if self.kind == "gaussian":
            scale = positive_scale(self.raw_std)
        else:
            scale = torch.full((), self.fixed_std, dtype=output.dtype, device=output.device)
        return diagonal_gaussian(output, scale, self.event_dims, validate_args=False)


def _check_vector(name: str, value: Tensor, size: int) -> None:
    if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[-1] != size:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{name} has shape {shape} but this model expects {name} of shape [*B, {size}]: "
            "flatten images to vectors and pass the sizes the model was built with"
        )


def _split_batch(batch) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"a conditional model's batch is a tuple (x, y, ...); got {type(batch).__name__}"
        )
    return batch[0], batch[1]


class CVAE(nn.Module):
    """A conditional VAE (Sohn, Lee & Yan 2015) for ``y [*B, y_dim]`` given ``x [*B, x_dim]``:
    q(z|x, y), p(y|x, z) and a fixed or learned prior p(z|x), each a Distribution with event
    ``[Z]`` (``[y_dim]`` for p(y|x, z)); see the module docstring for the objective."""

    def __init__(self, x_dim: int, y_dim: int, config: CVAEConfig | None = None) -> None:
        super().__init__()
        config = config or CVAEConfig()
        self.config = config
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.y_dim = check_positive_int("y_dim", y_dim)
        hidden = tuple(int(h) for h in config.hidden)
        activation = ACTIVATIONS[config.activation]
        z_dim = config.latent_dim
        self.encoder = DiagonalGaussianEncoder(x_dim + y_dim, z_dim, hidden, activation)
        self.decoder = MLP(x_dim + z_dim, hidden, y_dim, activation)
        self.likelihood_head = VectorLikelihood(config.likelihood, y_dim, config.fixed_std)
        if config.prior == "learned":
            self.prior_net = DiagonalGaussianEncoder(x_dim, z_dim, hidden, activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    # --- the model as distributions -------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def prior(self, x: Tensor) -> Distribution:
        """p(z|x) for ``x [*B, X]``: batch ``[*B]`` (``[]`` for the standard prior), event ``[Z]``."""
        _check_vector("x", x, self.x_dim)
        if self.config.prior == "learned":
            return self.prior_net(x)
        return standard_normal(self.latent_dim, dtype=x.dtype, device=x.device)

    def encode(self, x: Tensor, y: Tensor) -> Distribution:
        """q(z|x,y) for ``x [*B, X]``, ``y [*B, Y]``: batch ``[*B]``, event ``[Z]``."""
        _check_vector("x", x, self.x_dim)
        _check_vector("y", y, self.y_dim)
        if x.shape[:-1] != y.shape[:-1]:
            raise ValueError(
                f"x has batch shape {tuple(x.shape[:-1])} but y has {tuple(y.shape[:-1])}: pass "
                "one x per y"
            )
        return self.encoder(torch.cat([x, y], -1))

    def decode(self, x: Tensor, z: Tensor) -> Distribution:
        """p(y|x,z) for ``x [*B, X]`` and ``z [*S, *B, Z]``: batch ``[*S, *B]``, event ``[Y]``."""
        x = x.expand(*z.shape[:-1], self.x_dim)
        return self.likelihood_head(self.decoder(torch.cat([x, z], -1)))

    # --- bounds -------------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, y: Tensor, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        """``(E_q[log p(y|x,z)], KL(q(z|x,y) ‖ p(z|x)))``, each ``[*B]`` nats (analytic KL)."""
        q = self.encode(x, y)
        return elbo_terms(y, q, self.prior(x), lambda z: self.decode(x, z), num_samples)

    def elbo(self, x: Tensor, y: Tensor, num_samples: int = 1) -> Tensor:
        """The conditional ELBO ``[*B]`` nats: a lower bound on log p(y|x)."""
        expected, divergence = self.elbo_terms(x, y, num_samples)
        return expected - divergence

    @torch.no_grad()
    def log_likelihood(
        self,
        x: Tensor,
        y: Tensor,
        importance_samples: int = 1000,
        chunk_size: int = 500,
        return_stderr: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Importance-sampled log p(y|x) ``[*B]`` nats, proposal q(z|x,y) (Burda et al. 2016).

        With ``return_stderr``, also each estimate's Monte Carlo standard error ``[*B]``.
        """
        q = self.encode(x, y)
        estimate, stderr = importance_log_likelihood(
            y, q, self.prior(x), lambda z: self.decode(x, z), importance_samples, chunk_size
        )
        return (estimate, stderr) if return_stderr else estimate

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, x: Tensor, num_samples: int | None = None, mean: bool = False) -> Tensor:
        """y ~ p(y|x): z ~ p(z|x), then y ~ p(y|x,z) (``mean``: E[y|x,z] instead of a draw).

        ``x [*B, X]`` -> ``y [*B, Y]``, or ``[S, *B, Y]`` with ``num_samples = S``.
        """
        z = self.sample_latent(x, num_samples)
        likelihood = self.decode(x, z)
        return likelihood.mean if mean else likelihood.sample()

    @torch.no_grad()
    def sample_latent(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        """z ~ p(z|x): ``[*B, Z]``, or ``[S, *B, Z]`` with ``num_samples = S``."""
        prior = self.prior(x)
        shape = () if num_samples is None else (check_positive_int("num_samples", num_samples),)
        if prior.batch_shape != x.shape[:-1]:
            prior = prior.expand(x.shape[:-1])
        return prior.sample(shape)

    # --- training -------------------------------------------------------------------------------
    def loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative conditional ELBO per example (nats) and the named terms, for ``(x, y)``."""
        x, y = _split_batch(batch)
        expected, divergence = self.elbo_terms(x, y, self.config.num_samples)
        losses = {"recon": -expected.mean(), "kl": divergence.mean()}
        total = losses["recon"] + self.config.beta * losses["kl"]
        metrics = {f"loss/{k}": v.detach() for k, v in losses.items()}
        metrics["elbo"] = -(losses["recon"] + losses["kl"]).detach()
        return total, metrics


class Regressor(nn.Module):
    """p(y|x) = likelihood(MLP(x)): the deterministic baseline, trained by maximum likelihood.

    With the Gaussian likelihood this is least-squares regression (behaviour cloning with an MSE
    loss, the noise σ fitted as well); with Bernoulli, per-pixel logistic regression. Its
    ``log_likelihood`` is exact, in the same nats as a CVAE's importance-sampled estimate.
    """

    def __init__(self, x_dim: int, y_dim: int, config: CVAEConfig | None = None) -> None:
        super().__init__()
        config = config or CVAEConfig()
        self.config = config
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.y_dim = check_positive_int("y_dim", y_dim)
        hidden = tuple(int(h) for h in config.hidden)
        self.body = MLP(x_dim, hidden, y_dim, ACTIVATIONS[config.activation])
        self.likelihood_head = VectorLikelihood(config.likelihood, y_dim, config.fixed_std)

    def predict(self, x: Tensor) -> Distribution:
        """p(y|x) for ``x [*B, X]``: batch ``[*B]``, event ``[Y]``."""
        _check_vector("x", x, self.x_dim)
        return self.likelihood_head(self.body(x))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Exact log p(y|x) ``[*B]`` nats."""
        _check_vector("y", y, self.y_dim)
        return self.predict(x).log_prob(y)

    def loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative log-likelihood per example (nats)."""
        x, y = _split_batch(batch)
        _check_vector("y", y, self.y_dim)
        nll = -self.predict(x).log_prob(y).mean()
        return nll, {"loss/nll": nll.detach()}
