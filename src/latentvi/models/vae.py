"""Variational autoencoders (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014).

One class, :class:`VAE`, covers the lecture's model and its common variants through its config:

* a Gaussian encoder q(z|x) = N(μ_φ(x), σ_φ(x)) and a decoder p(x|z) matched to the data — Bernoulli
  (binary pixels), continuous Bernoulli (intensities in [0, 1], Loaiza-Ganem & Cunningham 2019), or
  Gaussian with a learned or a fixed σ — on MLP or convolutional bodies;
* one or two stochastic layers (the two-layer model of Burda, Grosse & Salakhutdinov 2016,
  x → z₁ → z₂ with p(z₂) p(z₁|z₂) p(x|z₁));
* objectives: the ELBO with analytic KL, β-VAE (Higgins et al. 2017), and the IWAE-K bound, with the
  doubly-reparameterized (DReG) gradient as an option (Tucker et al. 2019).

The public API is the distributions: ``encode(x)`` → q(z|x), ``decode(z)`` → p(x|z), ``prior`` →
p(z); and ``elbo(x)``, ``log_likelihood(x, importance_samples=K)``, ``sample(n)``,
``reconstruct(x)``, ``interpolate(a, b)``. ``loss(batch)`` is what the training loop calls.
Shapes: images ``x [*B, C, H, W]``; latents ``z [*S, *B, Z]``; every bound is ``[*B]`` nats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from latentvi.bounds import elbo_terms, importance_log_likelihood, iwae_bound
from latentvi.config import check_positive_int, option, require, require_layer_sizes
from latentvi.distributions import (
    bernoulli,
    continuous_bernoulli,
    diagonal_gaussian,
    positive_scale,
    standard_normal,
)
from latentvi.gradients import iwae_dreg
from latentvi.models import fused
from latentvi.models.chain import GaussianChain
from latentvi.nn import MLP, ConvDecoder, ConvEncoder, DiagonalGaussianEncoder, GaussianHead

__all__ = ["VAE", "CustomVAE", "VAEConfig", "vae_objective"]

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "gaussian-fixed")
OBJECTIVES = ("elbo", "iwae")
BODIES = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture and objective of a :class:`VAE`."""

    latent_dim: int = option(50, "size of the (top) latent z")
    hidden: tuple[int, ...] = option((200, 200), "hidden layer sizes of the MLP bodies")
    body: str = option("mlp", "network body: mlp or conv", choices=BODIES)
    channels: tuple[int, ...] = option(
        (32, 64), "channels of the conv bodies' stride-2 layers (body=conv)"
    )
    likelihood: str = option("bernoulli", "decoder distribution p(x|z)", choices=LIKELIHOODS)
    fixed_std: float = option(0.1, "σ of the gaussian-fixed likelihood")
    stochastic_layers: int = option(1, "1, or 2 for Burda et al.'s two-layer model")
    latent_dim_1: int = option(100, "size of z₁, the lower latent of the two-layer model")
    hidden_1: tuple[int, ...] = option((100, 100), "hidden sizes between z₁ and z₂ (two-layer)")
    objective: str = option("elbo", "training objective: elbo or iwae", choices=OBJECTIVES)
    num_samples: int = option(1, "samples of z per example (K for iwae)")
    beta: float = option(1.0, "weight of the KL term (β-VAE; 1 is the ELBO)")
    dreg: bool = option(False, "doubly-reparameterized gradient for the IWAE objective")
    activation: str = option("tanh", "hidden activation: tanh, relu or elu")

    def __post_init__(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "use a positive integer")
        require(self.latent_dim_1 >= 1, "latent_dim_1", self.latent_dim_1, "use a positive integer")
        for name in ("hidden", "hidden_1", "channels"):
            require_layer_sizes(name, getattr(self, name), "200,200")
        require(self.body in BODIES, "body", self.body, f"choose one of {', '.join(BODIES)}")
        require(
            self.likelihood in LIKELIHOODS,
            "likelihood",
            self.likelihood,
            f"choose one of {', '.join(LIKELIHOODS)}",
        )
        require(
            self.objective in OBJECTIVES,
            "objective",
            self.objective,
            f"choose one of {', '.join(OBJECTIVES)}",
        )
        require(self.fixed_std > 0, "fixed_std", self.fixed_std, "use a positive σ")
        require(
            self.stochastic_layers in (1, 2),
            "stochastic_layers",
            self.stochastic_layers,
            "use 1 or 2",
        )
        require(self.num_samples >= 1, "num_samples", self.num_samples, "use K >= 1")
        require(self.beta >= 0, "beta", self.beta, "use a non-negative KL weight")
        require(
            not self.dreg or self.objective == "iwae",
            "dreg",
            self.dreg,
            "DReG is a gradient for the IWAE objective; set objective=iwae",
        )
        require(
            not self.dreg or self.stochastic_layers == 1,
            "dreg",
            self.dreg,
            "DReG is implemented for one stochastic layer (a diagonal Gaussian q); drop --dreg",
        )
        require(
            self.body == "mlp" or self.stochastic_layers == 1,
            "body",
            self.body,
            "the two-layer model uses MLP bodies; set body=mlp",
        )
        require(
            self.activation in _ACTIVATIONS,
            "activation",
            self.activation,
            f"choose one of {', '.join(_ACTIVATIONS)}",
        )


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class _ImageLikelihood(nn.Module):
    """Maps decoder outputs ``[*S, *B, C·H·W]`` (or images) to p(x|z) with event ``[C, H, W]``."""

    def __init__(self, kind: str, shape: tuple[int, int, int], fixed_std: float) -> None:
        super().__init__()
        self.kind, self.shape = kind, tuple(shape)
        self.fixed_std = fixed_std
        if kind == "gaussian":
            self.raw_std = nn.Parameter(torch.full(self.shape, -1.0))  # softplus(-1) ≈ 0.31

    def forward(self, output: Tensor) -> Distribution:
        output = output.reshape(
            *output.shape[: output.dim() - _trailing(output, self.shape)], *self.shape
        )
        if self.kind == "bernoulli":
            return bernoulli(output, 3)
        if self.kind == "continuous-bernoulli":
            return continuous_bernoulli(output, 3)
        if self.kind == "gaussian":
            return diagonal_gaussian(output, positive_scale(self.raw_std).expand_as(output), 3)
        return diagonal_gaussian(output, torch.full_like(output, self.fixed_std), 3)


def _trailing(output: Tensor, shape: tuple[int, ...]) -> int:
    """How many trailing dims of ``output`` hold one example's decoder output (1 flat or 3 image)."""
    return 3 if tuple(output.shape[-3:]) == shape else 1


class _LatentVariableModel(nn.Module):
    """What every VAE computes from its three distributions alone: ``encode(x) -> q(z|x)``,
    ``decode(z) -> p(x|z)`` and ``prior`` (p(z)), which a subclass provides."""

    # --- bounds -------------------------------------------------------------------------------
    def elbo(self, x: Tensor, num_samples: int = 1) -> Tensor:
        """ELBO per example ``[*B]`` in nats (analytic KL where registered)."""
        expected, divergence = elbo_terms(x, self.encode(x), self.prior, self.decode, num_samples)
        return expected - divergence

    def iwae(self, x: Tensor, num_samples: int) -> Tensor:
        """IWAE-K bound per example ``[*B]`` in nats."""
        return iwae_bound(x, self.encode(x), self.prior, self.decode, num_samples)

    @torch.no_grad()
    def log_likelihood(
        self,
        x: Tensor,
        importance_samples: int = 5000,
        chunk_size: int = 500,
        return_stderr: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Importance-sampled log p(x) with q(z|x) as proposal (Burda et al. 2016): ``[*B]`` nats.

        With ``return_stderr``, also each estimate's Monte Carlo standard error ``[*B]``.
        """
        q = self.encode(x)
        estimate, stderr = importance_log_likelihood(
            x, q, self.prior, self.decode, importance_samples, chunk_size
        )
        return (estimate, stderr) if return_stderr else estimate

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        """``n`` images from p(x) = ∫ p(x|z) p(z) dz: ``[n, C, H, W]`` (``mean``: E[x|z] instead)."""
        check_positive_int("n", n)
        likelihood = self.decode(self.prior.sample((n,)))
        return likelihood.mean if mean else likelihood.sample()


def vae_objective(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    decode: Callable[[Tensor], Distribution],
    objective: str = "elbo",
    num_samples: int = 1,
    beta: float = 1.0,
    dreg: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A VAE's training objective: ``(loss to minimize, metrics)``, per-example means in nats.

    ``objective="elbo"``: ``recon + beta · kl`` (β-VAE, Higgins et al. 2017, for β ≠ 1), with
    ``num_samples`` draws of z; ``"iwae"``: the negative IWAE-K bound (Burda et al. 2016), with the
    DReG gradient (Tucker et al. 2019) when ``dreg``. Shapes as :func:`latentvi.bounds.elbo_terms`:
    ``x [B, *X]``, q with batch ``[B]``.
    """
    if objective == "iwae":
        bound_of = iwae_dreg if dreg else iwae_bound
        value = bound_of(x, q, prior, decode, num_samples).mean()
        return -value, {"iwae": value.detach(), "loss/neg_iwae": -value.detach()}
    expected, divergence = elbo_terms(x, q, prior, decode, num_samples)
    losses = {"recon": -expected.mean(), "kl": divergence.mean()}
    total = losses["recon"] + beta * losses["kl"]
    metrics = {f"loss/{k}": v.detach() for k, v in losses.items()}
    metrics["elbo"] = -(losses["recon"] + losses["kl"]).detach()
    return total, metrics


class VAE(_LatentVariableModel):
    """A variational autoencoder over images of shape ``data_shape = (C, H, W)`` (Kingma & Welling
    2014; Rezende, Mohamed & Wierstra 2014), with the IWAE objective and two stochastic layers of
    Burda, Grosse & Salakhutdinov (2016) and DReG gradients (Tucker et al. 2019).

    ``encode(x [*B, C, H, W]) -> q(z|x)`` with batch ``[*B]`` and event ``[Z]``;
    ``decode(z [*S, *B, Z]) -> p(x|z)`` with event ``[C, H, W]``; ``prior`` is p(z) = N(0, I_Z);
    ``loss(x [B, C, H, W]) -> (scalar, metrics)``, the negative objective in nats per example;
    ``elbo(x) -> [B]``, ``log_likelihood(x, importance_samples=K) -> [B]``,
    ``sample(n) -> [n, C, H, W]``. Build from a :class:`VAEConfig`; see the module docstring for
    the options.
    """

    def __init__(self, data_shape: tuple[int, int, int], config: VAEConfig | None = None) -> None:
        super().__init__()
        config = config or VAEConfig()
        if len(data_shape) != 3 or any(int(s) < 1 for s in data_shape):
            raise ValueError(f"data_shape must be (C, H, W) with positive sizes, got {data_shape}")
        self.config = config
        self.data_shape = tuple(int(s) for s in data_shape)
        features = self.data_shape[0] * self.data_shape[1] * self.data_shape[2]
        activation = _ACTIVATIONS[config.activation]
        hidden = tuple(int(h) for h in config.hidden)
        self.likelihood_head = _ImageLikelihood(
            config.likelihood, self.data_shape, config.fixed_std
        )
        bottom = config.latent_dim_1 if config.stochastic_layers == 2 else config.latent_dim
        if config.body == "conv":
            channels = tuple(int(c) for c in config.channels)
            body = ConvEncoder(self.data_shape, channels)
            head = nn.Linear(body.out_features, 2 * bottom)
            self.encoder = nn.Sequential(body, head, GaussianHead())
            self.decoder = ConvDecoder(bottom, self.data_shape, channels)
        else:
            # Every hidden layer, the last included, is followed by the activation.
            encoder = DiagonalGaussianEncoder(features, bottom, hidden, activation)
            self.encoder = nn.Sequential(nn.Flatten(-3), encoder)
            self.decoder = MLP(bottom, tuple(reversed(hidden)), features, activation)
        if config.stochastic_layers == 2:
            hidden_1 = tuple(int(h) for h in config.hidden_1)
            top = config.latent_dim
            self.encoder_2 = DiagonalGaussianEncoder(bottom, top, hidden_1, activation)
            self.decoder_2 = DiagonalGaussianEncoder(
                top, bottom, tuple(reversed(hidden_1)), activation
            )
        self.register_buffer("_zero", torch.zeros(()), persistent=False)
        self.fused = True
        """Let :meth:`loss` take the fused fast path (:mod:`latentvi.models.fused`) where the
        config allows; False forces the generic, Distribution-based reference path."""

    # --- the model as distributions -------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Size of the full latent vector (z₁ and z₂ concatenated for the two-layer model)."""
        c = self.config
        return c.latent_dim + (c.latent_dim_1 if c.stochastic_layers == 2 else 0)

    @property
    def prior(self) -> Distribution:
        """p(z): N(0, I) or, with two layers, p(z₂) p(z₁|z₂) over ``z = [z₁, z₂]``."""
        top = standard_normal(
            self.config.latent_dim, dtype=self._zero.dtype, device=self._zero.device
        )
        if self.config.stochastic_layers == 1:
            return top
        return GaussianChain(top, self.decoder_2, reverse=True)

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) for images ``x [*B, C, H, W]``: batch ``[*B]``, event ``[Z]``."""
        self._check_images(x)
        q1 = self.encoder(x)
        if self.config.stochastic_layers == 1:
            return q1
        return GaussianChain(q1, self.encoder_2)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for ``z [*S, *B, Z]``: batch ``[*S, *B]``, event ``[C, H, W]``."""
        bottom = z[..., : self.config.latent_dim_1] if self.config.stochastic_layers == 2 else z
        return self.likelihood_head(self.decoder(bottom))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = mean of q(z|x)]: ``[*B, C, H, W]``."""
        return self.decode(_location(self.encode(x))).mean

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        """Decode the straight line between the posterior means of images ``a`` and ``b``.

        ``a, b [C, H, W]`` → ``[steps, C, H, W]`` (the decoder's mean at each point).
        """
        za, zb = _location(self.encode(torch.stack([a, b])))
        weights = torch.linspace(0, 1, steps, device=za.device).unsqueeze(-1)
        return self.decode((1 - weights) * za + weights * zb).mean

    # --- training -------------------------------------------------------------------------------
    def loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective: ``(loss to minimize, metrics)``, both per-example means in nats.

        ``batch`` is images ``[B, C, H, W]`` or a tuple whose first element is.
        """
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        c = self.config
        if fused.applies(self) and x.dim() == 4 and tuple(x.shape[1:]) == self.data_shape:
            return self._fused_loss(x)
        q = self.encode(x)
        return vae_objective(
            x, q, self.prior, self.decode, c.objective, c.num_samples, c.beta, c.dreg
        )

    def _fused_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`loss` through the fused pass: the same values, gradients and random draws."""
        c = self.config
        if c.objective == "iwae":
            loss, _ = fused.fused_iwae(self, x, c.num_samples)
            value = -loss.detach()
            return loss, {"iwae": value, "loss/neg_iwae": -value}
        recon, divergence = fused.fused_elbo(self, x, c.num_samples)
        total = recon + c.beta * divergence
        metrics = {"loss/recon": recon.detach(), "loss/kl": divergence.detach()}
        metrics["elbo"] = -(recon + divergence).detach()
        return total, metrics

    def loss_and_gradients(self, batch):
        """:meth:`loss` and its gradients computed without autograd, where the fused pass applies
        (:func:`latentvi.models.fused.fused_gradients`): ``(loss, metrics, [(parameter,
        gradient)])``, the same numbers as ``loss.backward()`` would give, bit for bit; None where
        it does not apply (the caller then differentiates :meth:`loss`). :func:`latentvi.train.fit`
        takes it when it trains without clipping or data parallelism."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        c = self.config
        if not (
            fused.applies(self)
            and isinstance(x, Tensor)
            and x.dim() == 4
            and tuple(x.shape[1:]) == self.data_shape
        ):
            return None
        return fused.fused_gradients(self, x, c.objective, c.num_samples, c.beta)

    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[-3:]) != self.data_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x has shape {shape} but this VAE models images of shape {self.data_shape}: "
                f"pass x of shape [B, {', '.join(map(str, self.data_shape))}]"
            )


def _location(q: Distribution) -> Tensor:
    """A point in latent space summarizing q: its mean, or the chain's mean path."""
    return q.mean_path() if isinstance(q, GaussianChain) else q.mean


class CustomVAE(_LatentVariableModel):
    """A VAE from your own networks: ``encoder(x) -> q(z|x)`` and ``decoder(z) -> p(x|z)``, any
    modules that return ``torch.distributions.Distribution`` objects (Kingma & Welling 2014).

    ``q(z|x)`` must have batch ``[*B]`` and event ``[Z]``, ``p(x|z)`` (for ``z [*S, *B, Z]``) batch
    ``[*S, *B]`` and the data's event (e.g. :func:`latentvi.distributions.bernoulli` of logits
    ``[*S, *B, D]``). ``prior`` is p(z), by default N(0, I_Z) with ``Z = latent_dim``. The
    objective is :func:`vae_objective` (ELBO, β-VAE, IWAE-K, DReG). It trains with
    :func:`latentvi.train.fit` like any model with ``loss(batch)``, and ``latentvi.load(run,
    model=CustomVAE(...))`` fills a run's weights back into a model you built the same way (no
    code is read from the run folder).

    Args:
        encoder: ``x -> q(z|x)``.
        decoder: ``z -> p(x|z)``.
        latent_dim: Z, for the default prior (ignored with ``prior``).
        prior: p(z) (a Distribution with event ``[Z]``), or None for N(0, I_Z).
        objective, num_samples, beta, dreg: as :func:`vae_objective`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int | None = None,
        prior: Distribution | None = None,
        objective: str = "elbo",
        num_samples: int = 1,
        beta: float = 1.0,
        dreg: bool = False,
    ) -> None:
        super().__init__()
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            require(
                isinstance(module, nn.Module),
                name,
                type(module).__name__,
                "pass a torch.nn.Module that returns a torch Distribution",
            )
        require(objective in OBJECTIVES, "objective", objective, f"use one of {OBJECTIVES}")
        check_positive_int("num_samples", num_samples)
        if prior is None:
            check_positive_int("latent_dim", latent_dim)
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = latent_dim if prior is None else int(prior.event_shape[-1])
        self._prior = prior
        self.objective, self.num_samples, self.beta, self.dreg = objective, num_samples, beta, dreg
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    @property
    def prior(self) -> Distribution:
        """p(z): the prior given, or N(0, I_Z) on the model's device and dtype."""
        if self._prior is not None:
            return self._prior
        return standard_normal(self.latent_dim, dtype=self._zero.dtype, device=self._zero.device)

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x): the encoder's Distribution (checked to be one)."""
        return _distribution("encoder", self.encoder(x))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z): the decoder's Distribution (checked to be one)."""
        return _distribution("decoder", self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = mean of q(z|x)]."""
        return self.decode(self.encode(x).mean).mean

    def loss(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`vae_objective` on ``batch`` (data, or a tuple whose first element is)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return vae_objective(
            x, self.encode(x), self.prior, self.decode, self.objective, self.num_samples,
            self.beta, self.dreg,
        )  # fmt: skip


def _distribution(name: str, value) -> Distribution:
    if not isinstance(value, Distribution):
        raise TypeError(
            f"the {name} returned a {type(value).__name__}: a CustomVAE's {name} must return a "
            "torch.distributions.Distribution (e.g. latentvi.diagonal_gaussian(loc, scale))"
        )
    return value
