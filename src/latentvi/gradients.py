"""Gradient estimators for the ELBO, as pure functions that return *surrogates*.

A surrogate is a tensor ``[*B]`` whose **value** is a Monte Carlo estimate of the ELBO (nats per
example) and whose **gradient** is the estimator's. Each is built with the one pattern

    surrogate = value + (term - term.detach())

so the value can be logged as it is, and ``surrogate.sum().backward()`` (or ``.mean()``) gives the
estimator's gradient for every parameter in the graph: q's parameters φ and the model's θ. Maximize
the surrogate (or minimize its negative).

The estimators, as in the lecture on variational inference (Berkeley CS 285):

* :func:`reparameterized_elbo` — the pathwise gradient, z = μ + σ ε (Kingma & Welling 2014;
  Rezende, Mohamed & Wierstra 2014). Low variance; needs a reparameterizable q.
* :func:`score_function_elbo` — REINFORCE, the "policy gradient" ∇φ log q_φ(z) · r(x, z)
  (Williams 1992). Works for any q, discrete ones included; high variance, which the baselines
  :class:`MovingAverageBaseline`, :class:`LearnedBaseline` (NVIL, Mnih & Gregor 2014) and
  :class:`LeaveOneOut` (Kool, van Hoof & Welling 2019) reduce without adding bias.
* :func:`iwae_dreg` — the IWAE-K bound with the doubly-reparameterized gradient for q's parameters
  (Tucker, Lawson, Gu & Maddison 2019), whose signal-to-noise ratio does not vanish as K grows.
* :func:`gumbel_softmax_elbo` — the Gumbel-softmax / Concrete relaxation for one-hot latents
  (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017). Low variance, but biased for temperature > 0.

:func:`latentvi.diagnostics.variance_probe` measures each estimator's gradient mean and variance
over many draws (and its distance from an exact gradient, when one is known).

Shapes follow :mod:`latentvi.bounds`: ``x: [*B, *X]``; ``q`` with batch ``[*B]`` and event ``[Z]``;
``prior`` with batch broadcastable to ``[*B]``; ``likelihood: z [S, *B, Z] -> p(x|z)`` with batch
``[S, *B]``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    OneHotCategorical,
    RelaxedOneHotCategorical,
    kl_divergence,
)

from latentvi.bounds import Likelihood, check_data, check_num_samples, draw_latents, elbo_kl
from latentvi.distributions import diagonal_gaussian, kl, log_mean_exp

__all__ = [
    "Baseline",
    "LearnedBaseline",
    "LeaveOneOut",
    "MovingAverageBaseline",
    "gumbel_softmax_elbo",
    "iwae_dreg",
    "reparameterized_elbo",
    "score_function_elbo",
]


# --------------------------------------------------------------------------------------------------
# Reparameterization


def reparameterized_elbo(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 1,
    analytic_kl: bool = True,
) -> Tensor:
    """The ELBO with the pathwise (reparameterization) gradient: ``[*B]`` in nats.

    ``z = g_φ(ε)`` is drawn with ``q.rsample``, so gradients flow through the sample into φ
    (Kingma & Welling 2014; Rezende et al. 2014). This is :func:`latentvi.bounds.elbo_kl` itself:
    its value is the estimate ``mean_s log p(x|z_s) − KL(q ‖ p(z))`` (KL analytic when
    ``analytic_kl`` and registered, else Monte Carlo on the same draws), and its autograd gradient
    is the reparameterization estimator.

    Raises:
        ValueError: ``q`` has no ``rsample`` (discrete q): use :func:`score_function_elbo` or
            :func:`gumbel_softmax_elbo` instead; ``num_samples < 1``.
    """
    if not q.has_rsample:
        raise ValueError(
            f"q is a {type(q).__name__}, which cannot be reparameterized (q.has_rsample is False): "
            "use score_function_elbo, or gumbel_softmax_elbo for one-hot discrete q"
        )
    return elbo_kl(x, q, prior, likelihood, num_samples, analytic_kl)


def iwae_dreg(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int,
) -> Tensor:
    """IWAE-K surrogate with the doubly-reparameterized gradient (DReG) for q: ``[*B]``.

    Value: the IWAE bound ``log (1/K) Σ_k w_k`` (nats). Gradient w.r.t. the model's parameters: the
    usual IWAE gradient ``Σ_k w̃_k ∇θ log w_k``. Gradient w.r.t. q's parameters φ: Tucker et al.'s
    (2019) ``Σ_k w̃_k² ∂ log w_k/∂z_k · ∂z_k/∂φ`` with log q evaluated at stopped parameters — unbiased
    for ∇φ IWAE_K with a variance that does not swamp the signal as K grows. ``w̃`` are the
    normalized importance weights. ``q`` must be a diagonal Gaussian (``Independent(Normal)``).

    With gradients off (``torch.no_grad``, e.g. in validation) it returns the bound's value alone,
    from the same draw: the surrogate exists only for gradients.
    """
    check_num_samples(num_samples)
    check_data(x, q)
    base = getattr(q, "base_dist", None)
    if not isinstance(base, torch.distributions.Normal) or q.reinterpreted_batch_ndims != 1:
        raise ValueError(
            f"q must be a diagonal Gaussian for DReG, got {type(q).__name__}; use "
            "bounds.iwae_bound (the plain IWAE gradient) for other posteriors"
        )
    q_stopped = diagonal_gaussian(base.loc.detach(), base.scale.detach())
    z = q.rsample((num_samples,))  # (K, *B, Z), pathwise in φ
    z_leaf = z.detach().requires_grad_(True)
    log_w = likelihood(z_leaf).log_prob(x) + prior.log_prob(z_leaf) - q_stopped.log_prob(z_leaf)
    if not log_w.requires_grad:  # no graph to differentiate (gradients off): the bound's value
        return log_mean_exp(log_w, dim=0)
    weights = torch.softmax(log_w.detach(), dim=0)  # (K, *B)
    (grad_z,) = torch.autograd.grad(log_w.sum(), z_leaf, retain_graph=True)  # ∂ log w_k / ∂z_k
    model_term = (weights * log_w).sum(0)  # θ-gradient Σ w̃ ∇θ log w (z held fixed)
    path_term = ((weights**2).unsqueeze(-1) * grad_z.detach() * z).sum((0, -1))  # φ-gradient
    value = log_mean_exp(log_w.detach(), dim=0)
    surrogate = model_term + path_term
    return value + (surrogate - surrogate.detach())


# --------------------------------------------------------------------------------------------------
# Baselines for the score function


class Baseline(Protocol):
    """A control variate for :func:`score_function_elbo`.

    Called as ``baseline(x, reward)`` with ``x: [*B, *X]`` and the detached ``reward: [S, *B]``;
    returns ``(b, extra)``: ``b`` broadcastable to ``[S, *B]``, which must not depend on the sample
    it is subtracted from (so the estimator stays unbiased), and ``extra: [*B]``, a zero-valued
    surrogate term whose gradient trains the baseline's own parameters (zeros when it has none).
    """

    def __call__(self, x: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]: ...


class MovingAverageBaseline(nn.Module):
    """A scalar baseline: an exponential moving average of past mean rewards (nats), the classic
    control variate of REINFORCE (Williams 1992); ``reward [S, *B] -> (b [], zeros [*B])``.

    ``b`` is the average *before* the current call, so it is independent of the current samples and
    the estimator stays unbiased. After each call (when ``update`` is true) the average moves
    towards the detached mean reward over samples and batch: ``a ← decay · a + (1 − decay) · r̄``,
    bias-corrected as in Adam so the first call does not start from zero. Before any update
    ``b = 0``. Set ``update = False`` to freeze it (e.g. while probing the variance).

    Args:
        decay: in ``[0, 1)``; larger averages over more calls.
        update: whether calls update the average.
    """

    average: Tensor
    num_updates: Tensor

    def __init__(self, decay: float = 0.9, update: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}; 0.9 or 0.99 are usual")
        self.decay = float(decay)
        self.update = update
        self.register_buffer("average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def value(self) -> Tensor:
        """The current baseline, a scalar in nats (0 before the first update)."""
        if self.num_updates == 0:
            return torch.zeros_like(self.average)
        return self.average / (1.0 - self.decay ** int(self.num_updates))

    def forward(self, x: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
        """``reward [S, *B] -> (b [], zeros [*B])``; then update the average."""
        b = self.value.to(reward)
        if self.update:
            with torch.no_grad():
                mean = reward.detach().mean().to(self.average)
                self.average.mul_(self.decay).add_((1.0 - self.decay) * mean)
                self.num_updates.add_(1)
        return b, reward.new_zeros(reward.shape[1:])


class LearnedBaseline(nn.Module):
    """An input-dependent baseline b_ψ(x), trained along with the model (NVIL; Mnih & Gregor 2014).

    ``module`` maps ``x [*B, *X]`` to ``[*B]`` (a trailing size-1 dimension is squeezed). The
    score term uses ``b_ψ(x)`` detached. The baseline is trained through the surrogate itself: the
    returned ``extra`` term is

        scale · (L − L.detach()),   L = −½ mean_s (r_s − b_ψ(x))²,

    which is zero in value (the surrogate's value is unchanged) and whose gradient w.r.t. ψ is
    ``scale · mean_s (r_s − b_ψ(x)) ∇ψ b_ψ(x)``. So gradient *ascent* on the surrogate, with ψ among
    the optimizer's parameters, is gradient *descent* on the squared error ½ (r − b_ψ(x))²,
    which drives b_ψ(x) towards E[r | x]. ``reward`` is detached, so this term leaves φ and θ alone.

    Args:
        module: the network b_ψ, ``[*B, *X] -> [*B]``.
        scale: weight of the squared-error term's gradient (relative to the ELBO's).
    """

    def __init__(self, module: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.module = module
        self.scale = float(scale)

    def predict(self, x: Tensor, batch_shape: torch.Size | None = None) -> Tensor:
        """b_ψ(x): ``[*B, *X] -> [*B]`` in nats (with gradient w.r.t. ψ)."""
        b = self.module(x)
        if batch_shape is not None and b.shape != batch_shape:
            if b.shape == (*batch_shape, 1):
                b = b.squeeze(-1)
            else:
                raise ValueError(
                    f"the baseline module returned shape {tuple(b.shape)}, but the reward's batch "
                    f"shape is {tuple(batch_shape)}: make it map x [*B, *X] to [*B]"
                )
        return b

    def forward(self, x: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
        """``reward [S, *B] -> (b_ψ(x) detached [*B], extra [*B] zero-valued)``."""
        b = self.predict(x, reward.shape[1:])  # (*B)
        squared_error = -0.5 * (reward.detach() - b).pow(2).mean(0)  # (*B)
        extra = self.scale * (squared_error - squared_error.detach())
        return b.detach(), extra


class LeaveOneOut:
    """The leave-one-out baseline (Kool, van Hoof & Welling 2019), free with M > 1 samples:
    ``reward [M, *B] -> (b [M, *B], zeros [*B])``.

    For sample s the baseline is the mean reward of the other M − 1 samples of the same example,
    ``b_s = (Σ_t r_t − r_s) / (M − 1)``: independent of z_s, so unbiased. The resulting estimator
    is ``1/(M−1) Σ_s (r_s − r̄) ∇ log q(z_s)``. Needs ``num_samples = M >= 2``.
    """

    def __call__(self, x: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
        """``reward [M, *B] -> (b [M, *B], zeros [*B])``."""
        m = reward.shape[0]
        if m < 2:
            raise ValueError(
                f"LeaveOneOut needs num_samples >= 2 (it averages the other samples' rewards), "
                f"got num_samples={m}; use num_samples=4, say, or another baseline"
            )
        b = (reward.sum(0, keepdim=True) - reward) / (m - 1)
        return b, reward.new_zeros(reward.shape[1:])

    def __repr__(self) -> str:
        return "LeaveOneOut()"


# --------------------------------------------------------------------------------------------------
# Score function (REINFORCE)


def _try_kl(q: Distribution, p: Distribution) -> Tensor | None:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def score_function_elbo(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 1,
    baseline: Baseline | None = None,
    analytic_kl: bool = True,
) -> Tensor:
    """The ELBO with the score-function (REINFORCE) gradient: ``[*B]`` in nats.

    The lecture's policy-gradient form (Williams 1992): with z_s ~ q drawn *without*
    reparameterization (detached) and a reward r(x, z),

        ∇φ ELBO ≈ (1/S) Σ_s ∇φ log q_φ(z_s) · (r(x, z_s) − b_s)  [+ ∇φ of the analytic KL]

    * If ``analytic_kl`` and KL(q ‖ prior) has a closed form: r = log p(x|z), value
      ``mean_s log p(x|z_s) − KL(q ‖ p)``, and the KL contributes its exact gradient.
    * Otherwise the full form r = log p(x|z) + log p(z) − log q(z), value ``mean_s r_s``.
      (The term −E_q[∇φ log q] it would add is zero in expectation and is left out.)

    The model's parameters θ get the plain gradient of ``mean_s [log p(x|z_s) (+ log p(z_s))]`` at
    the sampled z (pathwise in θ, as in the lecture), plus the analytic KL's gradient w.r.t. the
    prior's parameters. The reward is detached in the score term. With the same random seed the
    draws are the ones :func:`latentvi.bounds.elbo_kl` makes, so the two values agree exactly.

    Works for any q with ``log_prob``: Gaussian, ``OneHotCategorical``, ...

    Args:
        num_samples: S >= 1 draws per example.
        baseline: ``None`` or a :class:`Baseline` (:class:`MovingAverageBaseline`,
            :class:`LearnedBaseline`, :class:`LeaveOneOut`), subtracted from the reward.
        analytic_kl: use the closed-form KL where one is registered.
    """
    z = draw_latents(x, q, num_samples).detach()  # (S, *B, Z): no path from z back to φ
    log_likelihood = likelihood(z).log_prob(x)  # (S, *B)
    divergence = _try_kl(q, prior) if analytic_kl else None
    log_q = q.log_prob(z)  # (S, *B), gradient w.r.t. φ only (z is detached)
    if divergence is not None:
        reward = log_likelihood.detach()
        value = log_likelihood.mean(0) - divergence  # θ pathwise; KL exact in φ and θ
    else:
        log_model = log_likelihood + prior.log_prob(z)  # (S, *B)
        reward = (log_model - log_q).detach()
        value = log_model.mean(0) - log_q.detach().mean(0)
    if baseline is None:
        b, extra = torch.zeros((), dtype=reward.dtype, device=reward.device), None
    else:
        b, extra = baseline(x, reward)
    score = (log_q * (reward - b).detach()).mean(0)  # (*B)
    surrogate = value + (score - score.detach())
    if extra is not None:
        surrogate = surrogate + extra
    return surrogate


# --------------------------------------------------------------------------------------------------
# Gumbel-softmax / Concrete relaxation


def _categorical_logits(logits_or_q: Tensor | Distribution) -> Tensor:
    if isinstance(logits_or_q, Tensor):
        if logits_or_q.dim() < 1 or logits_or_q.shape[-1] < 2:
            raise ValueError(
                f"logits_or_q must be logits of shape [*B, K] with K >= 2, got shape "
                f"{tuple(logits_or_q.shape)}"
            )
        return logits_or_q
    if isinstance(logits_or_q, (OneHotCategorical, RelaxedOneHotCategorical, Categorical)):
        return logits_or_q.logits
    raise ValueError(
        f"logits_or_q must be a logits tensor [*B, K] or a OneHotCategorical, got "
        f"{type(logits_or_q).__name__}; the relaxation is only for one-hot categorical latents"
    )


def gumbel_softmax_elbo(
    x: Tensor,
    logits_or_q: Tensor | Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    temperature: float = 0.5,
    num_samples: int = 1,
    straight_through: bool = False,
) -> Tensor:
    """The ELBO for a one-hot categorical q with the Gumbel-softmax gradient: ``[*B]`` in nats.

    The Concrete / Gumbel-softmax relaxation (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017):
    y_s = softmax((logits + g_s) / τ) with Gumbel noise g_s, drawn by
    ``RelaxedOneHotCategorical(τ, logits).rsample``; the likelihood is evaluated at the relaxed
    point y_s of the simplex (it must accept one: ``GaussianMixture.likelihood`` mixes linearly),
    and the gradient flows through y_s. KL(q ‖ prior) is the exact one between the categoricals.

    * Value: the unbiased ELBO estimate ``mean_s log p(x|h_s) − KL(q ‖ p)`` at the hard samples
      h_s = one_hot(argmax y_s), which are exact draws from q (the Gumbel-max trick).
    * Gradient (default): that of the relaxed objective ``mean_s log p(x|y_s) − KL``, w.r.t. the
      logits and θ. **Biased** for τ > 0 — it is unbiased for the relaxed objective, not for the
      ELBO; the bias vanishes as τ → 0 while the variance grows.
    * ``straight_through=True``: z = h + y − stop_gradient(y): the likelihood is evaluated at the
      hard sample (so θ's gradient is the unbiased one) and ∂/∂z at h is passed back through y.
      Also biased for the logits.

    Args:
        logits_or_q: q's logits ``[*B, K]`` or a ``OneHotCategorical`` q.
        prior: p(z), a ``OneHotCategorical`` (any distribution with a registered KL from q).
        temperature: τ > 0.
        num_samples: S >= 1 draws per example.
        straight_through: the straight-through variant (hard forward pass, relaxed gradient).
    """
    check_num_samples(num_samples)
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float, Tensor)) and float(temperature) > 0
    ):
        raise ValueError(
            f"temperature must be a positive number, got {temperature!r}; 0.5 or 1.0 are usual, "
            "and at 0 the relaxation has no gradient (use score_function_elbo for an unbiased one)"
        )
    logits = _categorical_logits(logits_or_q)  # (*B, K)
    q = OneHotCategorical(logits=logits)
    check_data(x, q)
    relaxed = RelaxedOneHotCategorical(torch.as_tensor(temperature).to(logits), logits=logits)
    y = relaxed.rsample(torch.Size([num_samples]))  # (S, *B, K), on the simplex
    hard = F.one_hot(y.argmax(-1), logits.shape[-1]).to(y)  # (S, *B, K), exact draws from q
    divergence = kl(q, prior)  # (*B)
    if straight_through:
        z = hard + (y - y.detach())  # forward: hard; backward: through y
        return likelihood(z).log_prob(x).mean(0) - divergence
    relaxed_objective = likelihood(y).log_prob(x).mean(0) - divergence
    with torch.no_grad():
        value = likelihood(hard).log_prob(x).mean(0) - divergence
    return value + (relaxed_objective - relaxed_objective.detach())
