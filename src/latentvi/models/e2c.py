"""Embed to Control (Watter, Springenberg, Boedecker & Riedmiller, NeurIPS 2015).

A VAE over observations whose latent space has *locally linear* dynamics, so that a linear-quadratic
controller (:mod:`latentvi.control.lqr`) can plan in it:

* encoder  q(z_t | x_t) = N(μ_t, diag σ_t²)  (event ``[Z]``), decoder p(x | z) (Bernoulli pixels);
* transition network h(z_t) -> (v_t, r_t, B_t, o_t) and the local linear map
  ``z_{t+1} = A_t z_t + B_t u_t + o_t`` with ``A_t = I + v_t r_tᵀ`` (rank-one perturbation of I:
  2Z numbers instead of Z², as in the paper);
* the predicted next latent Q̂(ẑ_{t+1} | μ_t, Σ_t, u_t) = N(A_t μ_t + B_t u_t + o_t,
  A_t Σ_t A_tᵀ + σ_w² I): q(z_t|x_t) pushed through the linear map (σ_w, ``transition_noise``,
  keeps the covariance positive definite when A_t is near singular);
* the loss per transition (x_t, u_t, x_{t+1}), in nats per example::

      recon       = −E_q log p(x_t | z_t)
      predict     = −E_Q̂ log p(x_{t+1} | ẑ_{t+1})
      kl          = KL(q(z_t | x_t) ‖ N(0, I))
      consistency = KL(Q̂(ẑ_{t+1}) ‖ q(z_{t+1} | x_{t+1}))     (full-covariance ‖ diagonal)

  total = recon + predict + β·kl + λ·consistency (the paper's bound plus λ times its KL term).

* an option beyond the paper, **multi-step prediction**: given K actions and the K observations
  that follow (``u [*B, K, U]``, ``x_next [*B, K, C, H, W]``), the latent is rolled K steps through
  the chain of local linear maps — the sample z_{t+k} and Q̂_k, q(z_t|x_t) pushed through all k
  maps (mean and full covariance, σ_w² I added at each step) — and ``predict`` and
  ``consistency`` are the means over k = 1 … K of the terms above at x_{t+k}. K = 1 is the
  paper's loss. Errors that compound over several steps (an unstable state's growth rate, say)
  then enter the loss, as latent overshooting does for PlaNet's RSSM (Hafner et al. 2019, §4).
  Measured on pixel Pendulum (BENCHMARKS.md): with K = 4 the models came out *more* stable at
  upright than with K = 1, and none could balance.

* another option, ``mean_transition``: h is evaluated at q's mean instead of the sample z, and
  q's spread (the covariance and z − μ) goes through A without gradient. In the paper's loss an
  expanding A is penalized twice for reasons unrelated to the data: the pushed covariance A Σ Aᵀ
  grows while the next encoding's does not, and a noisy input z shrinks the fitted slope
  (errors in variables). Both bias a learned unstable state (the pendulum upright) toward
  stability; with the option only the mean prediction fits A, B and o. Measured on pixel
  Pendulum: it raised the learned instability but not reliably to the right one.

Shapes: ``x [*B, C, H, W]``, ``u [*B, U]``, ``z [*B, Z]``, ``A [*B, Z, Z]``, ``B [*B, Z, U]``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from latentvi.config import check_positive_int, option, require, require_layer_sizes
from latentvi.distributions import DiagonalGaussian, bernoulli, kl, standard_normal
from latentvi.nn import MLP, ConvDecoder, ConvEncoder, GaussianHead

__all__ = ["E2C", "E2CConfig", "LinearTransition"]

BODIES = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class E2CConfig:
    """Architecture and loss weights of an :class:`E2C` model."""

    latent_dim: int = option(3, "size of the latent z (the paper uses 3 for the pendulum)")
    body: str = option("mlp", "encoder/decoder body: mlp or conv", choices=BODIES)
    hidden: tuple[int, ...] = option((800, 800), "hidden sizes of the MLP encoder and decoder")
    channels: tuple[int, ...] = option((32, 64), "channels of the conv bodies (body=conv)")
    transition_hidden: tuple[int, ...] = option((100, 100), "hidden sizes of the transition net")
    transition_noise: float = option(
        0.01, "σ_w: std of the isotropic noise added to the predicted latent's covariance"
    )
    beta: float = option(1.0, "weight of KL(q(z_t|x_t) ‖ N(0, I))")
    consistency: float = option(
        0.25, "λ: weight of KL(Q̂(ẑ_{t+1}) ‖ q(z_{t+1}|x_{t+1})) (Watter et al.'s λ)"
    )
    mean_transition: bool = option(
        False,
        "evaluate h at q's mean (not at the sample z) and pass q's spread (its covariance and "
        "z − μ) through A without gradient: A, B, o are then fitted by the mean prediction alone",
    )

    def __post_init__(self) -> None:
        check_positive_int("latent_dim", self.latent_dim)
        require(self.body in BODIES, "body", self.body, f"choose one of {', '.join(BODIES)}")
        for name in ("hidden", "channels", "transition_hidden"):
            require_layer_sizes(name, getattr(self, name), "100,100")
        require(self.transition_noise > 0, "transition_noise", self.transition_noise, "use > 0")
        require(self.beta >= 0, "beta", self.beta, "use a non-negative weight")
        require(self.consistency >= 0, "consistency", self.consistency, "use a non-negative λ")


class LinearTransition(nn.Module):
    """h(z) -> the local linear map (A, B, o) of E2C, ``A = I + v rᵀ``.

    ``forward(z [*B, Z]) -> (A [*B, Z, Z], B [*B, Z, U], o [*B, Z])``.
    """

    def __init__(self, latent_dim: int, action_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        z, u = latent_dim, action_dim
        self.net = MLP(z, hidden, 3 * z + z * u, nn.ReLU)

    def factors(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``z [*B, Z] -> (v [*B, Z], r [*B, Z], B [*B, Z, U], o [*B, Z])``."""
        zd, ud = self.latent_dim, self.action_dim
        out = self.net(z)
        v, r, b, o = out.split((zd, zd, zd * ud, zd), dim=-1)
        return v, r, b.reshape(*z.shape[:-1], zd, ud), o

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v, r, b, o = self.factors(z)
        eye = torch.eye(self.latent_dim, dtype=z.dtype, device=z.device)
        a = eye + v.unsqueeze(-1) * r.unsqueeze(-2)  # I + v rᵀ: (*B, Z, Z)
        return a, b, o


def _flat_image_body(shape: tuple[int, int, int], hidden: tuple[int, ...], out: int) -> nn.Module:
    features = shape[0] * shape[1] * shape[2]
    return nn.Sequential(nn.Flatten(-3), MLP(features, hidden, out, nn.ReLU))


class _MLPImageDecoder(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], hidden: tuple[int, ...]):
        super().__init__()
        self.shape = shape
        self.body = MLP(latent_dim, hidden, shape[0] * shape[1] * shape[2], nn.ReLU)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z).reshape(*z.shape[:-1], *self.shape)


class E2C(nn.Module):
    """Embed to Control (Watter, Springenberg, Boedecker & Riedmiller 2015) over images
    ``data_shape = (C, H, W)`` in [0, 1] and actions ``[U]``.

    ``encode(x)`` -> q(z|x); ``decode(z)`` -> p(x|z); ``transition(z)`` -> (A, B, o);
    ``predict(q, u)`` -> Q̂; ``step(z, u)`` -> the mean next latent; ``loss(batch)`` for
    :func:`latentvi.train.fit` with ``batch = (x_t, u_t, x_{t+1})``.
    """

    def __init__(
        self, data_shape: tuple[int, int, int], action_dim: int, config: E2CConfig | None = None
    ) -> None:
        super().__init__()
        config = config or E2CConfig()
        if len(data_shape) != 3 or any(int(s) < 1 for s in data_shape):
            raise ValueError(f"data_shape must be (C, H, W) with positive sizes, got {data_shape}")
        self.config = config
        self.data_shape = tuple(int(s) for s in data_shape)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.latent_dim = z = config.latent_dim
        hidden = tuple(int(h) for h in config.hidden)
        if config.body == "conv":
            channels = tuple(int(c) for c in config.channels)
            body = ConvEncoder(self.data_shape, channels)
            self.encoder = nn.Sequential(body, nn.Linear(body.out_features, 2 * z), GaussianHead())
            self.decoder = ConvDecoder(z, self.data_shape, channels)
        else:
            self.encoder = nn.Sequential(
                _flat_image_body(self.data_shape, hidden, 2 * z), GaussianHead()
            )
            self.decoder = _MLPImageDecoder(z, self.data_shape, tuple(reversed(hidden)))
        self.transition = LinearTransition(z, action_dim, tuple(config.transition_hidden))

    # --- the model as distributions -------------------------------------------------------
    def prior(self) -> DiagonalGaussian:
        """p(z) = N(0, I_Z)."""
        return standard_normal(self.latent_dim, device=self._device())

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """``x [*B, C, H, W]`` -> q(z|x), batch ``[*B]``, event ``[Z]``."""
        if tuple(x.shape[-3:]) != self.data_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [*B, {self.data_shape}]")
        return self.encoder(x)

    def decode(self, z: Tensor) -> Distribution:
        """``z [*B, Z]`` -> p(x|z): Bernoulli pixels, batch ``[*B]``, event ``[C, H, W]``."""
        return bernoulli(self.decoder(z), 3)

    def predict(
        self, q: DiagonalGaussian, u: Tensor, z: Tensor | None = None
    ) -> MultivariateNormal:
        """Q̂(ẑ_{t+1}) = N(A μ + B u + o, A Σ Aᵀ + σ_w² I), batch ``[*B]``, event ``[Z]``.

        ``(A, B, o)`` come from the transition network at ``z`` (default: q's mean μ).
        """
        mean, covariance = q.mean, torch.diag_embed(q.variance)  # (*B, Z), (*B, Z, Z)
        a, b, o = self.transition(mean if z is None else z)
        return _push_forward(a, b, o, mean, covariance, u, self.config.transition_noise)

    def step(self, z: Tensor, u: Tensor) -> Tensor:
        """The mean next latent ``A(z) z + B(z) u + o(z)``: ``[*B, Z], [*B, U] -> [*B, Z]``."""
        a, b, o = self.transition(z)
        return _apply(a, z) + _apply(b, u) + o

    def linearization(self, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """E2C's own local linearization at ``z``: ``(A [*B, Z, Z], B [*B, Z, U])`` — what the
        paper's iLQR uses in place of the Jacobians of :meth:`step` (``u`` is unused: A, B and o
        depend on z only)."""
        a, b, _ = self.transition(z)
        return a, b

    # --- training -------------------------------------------------------------------------
    def losses(self, x: Tensor, u: Tensor, x_next: Tensor) -> dict[str, Tensor]:
        """The four named terms, each ``[*B]`` nats (see the module docstring): one step with
        ``u [*B, U]``, ``x_next [*B, C, H, W]``; K steps with ``u [*B, K, U]``, ``x_next [*B, K, C,
        H, W]`` (``predict`` and ``consistency`` averaged over the K steps)."""
        if x_next.dim() == x.dim():  # one step
            u, x_next = u.unsqueeze(-2), x_next.unsqueeze(-4)
        if x_next.dim() != x.dim() + 1 or u.shape[:-1] != x_next.shape[:-3]:
            raise ValueError(
                f"x {tuple(x.shape)}, u {tuple(u.shape)}, x_next {tuple(x_next.shape)}: pass "
                "x [*B, C, H, W] with u [*B, U] and x_next [*B, C, H, W] (one step) or u [*B, K, U] "
                "and x_next [*B, K, C, H, W] (K steps)"
            )
        noise_std = self.config.transition_noise
        q = self.encode(x)
        z_t = z = q.rsample()  # (*B, Z)
        mean, covariance = q.mean, torch.diag_embed(q.variance)
        predict, consistency = [], []
        for k in range(u.shape[-2]):
            action, target = u[..., k, :], x_next[..., k, :, :, :]
            if self.config.mean_transition:
                a, b, o = self.transition(mean)
                spread = a.detach()
            else:
                a, b, o = self.transition(z)
                spread = a
            previous = mean
            predicted = _push_forward(a, b, o, mean, covariance, action, noise_std, spread)
            mean, covariance = predicted.loc, predicted.covariance_matrix
            # A sample of Q̂ correlated with z: the linear map applied to z itself, plus σ_w noise.
            z = mean + _apply(spread, z - previous) + torch.randn_like(z) * noise_std
            predict.append(-self.decode(z).log_prob(target))
            consistency.append(kl(predicted, self.encode(target)))
        return {
            "recon": -self.decode(z_t).log_prob(x),
            "predict": torch.stack(predict).mean(0),
            "kl": kl(q, self.prior()),
            "consistency": torch.stack(consistency).mean(0),
        }

    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``batch = (x_t [N, C, H, W], u_t [N, U], x_{t+1} [N, C, H, W])`` (or the K-step form of
        :meth:`losses`) -> (mean total, metrics)."""
        x, u, x_next = batch
        losses = {name: value.mean() for name, value in self.losses(x, u, x_next).items()}
        weights = {"kl": self.config.beta, "consistency": self.config.consistency}
        total = sum(weights.get(name, 1.0) * value for name, value in losses.items())
        metrics = {f"loss/{name}": value.detach() for name, value in losses.items()}
        return total, metrics

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _apply(matrix: Tensor, vector: Tensor) -> Tensor:
    """``M v`` over batch dims: ``[*B, N, K], [*B, K] -> [*B, N]``."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _push_forward(
    a: Tensor,
    b: Tensor,
    o: Tensor,
    mean: Tensor,
    covariance: Tensor,
    u: Tensor,
    noise: float,
    spread: Tensor | None = None,
) -> MultivariateNormal:
    """N(μ, Σ) through ``z -> A z + B u + o``, plus N(0, noise² I): ``Σ [*B, Z, Z]``. ``spread``
    (default A) is the matrix the covariance goes through (A detached: no gradient from Σ to A)."""
    loc = _apply(a, mean) + _apply(b, u) + o
    spread = a if spread is None else spread
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    covariance = spread @ covariance @ spread.transpose(-1, -2) + noise**2 * eye
    return MultivariateNormal(loc, covariance_matrix=covariance, validate_args=False)
