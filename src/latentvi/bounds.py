"""Variational bounds on log p(x), as pure functions of distributions.

Every function takes the same four things:

* ``x: [*B, *X]`` — the data, ``*B`` batch dimensions and ``*X`` the likelihood's event shape;
* ``q`` — the approximate posterior q(z|x), batch shape ``[*B]``, event shape ``[Z]``;
* ``prior`` — p(z), batch shape broadcastable to ``[*B]`` (p(z|x) for a conditional model);
* ``likelihood`` — a callable ``z: [S, *B, Z] -> p(x|z)``, batch shape ``[S, *B]``, event ``*X``.

and returns one value per example, shape ``[*B]``, in nats, summed over data and latent dimensions.
Reductions over the batch are the caller's. Samples are reparameterized whenever ``q`` allows it, so
the pathwise gradient flows through every bound here (see :mod:`latentvi.gradients` for the others).

The two ELBO forms are the ones derived in the lecture (Kingma & Welling 2014, eq. 2 and 3):

    ELBO = E_q[log p(x|z) + log p(z)] + H(q)           (entropy form)
         = E_q[log p(x|z)] - KL(q(z|x) ‖ p(z))          (KL form)

The IWAE bound is Burda, Grosse & Salakhutdinov (2016): ``E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentvi.config import check_positive_int
from latentvi.distributions import entropy, kl, log_mean_exp, sample

Likelihood = Callable[[Tensor], Distribution]

__all__ = [
    "Likelihood",
    "balanced_kl",
    "check_data",
    "check_num_samples",
    "draw_latents",
    "elbo_entropy",
    "elbo_enumerated",
    "elbo_kl",
    "elbo_terms",
    "free_nats_kl",
    "importance_log_likelihood",
    "iwae_bound",
    "log_weights",
    "posterior_gap",
    "sequence_elbo",
]


def check_num_samples(num_samples: int, name: str = "num_samples") -> int:
    """Validate a sample count: a positive integer, else ``ValueError`` naming ``name``."""
    return check_positive_int(name, num_samples)


def check_data(x: Tensor, q: Distribution) -> None:
    """Raise ``ValueError`` unless ``x [*B, *X]`` has the leading batch dimensions of ``q``."""
    batch = q.batch_shape
    if x.dim() < len(batch) or not _broadcastable(x.shape[: len(batch)], batch):
        raise ValueError(
            f"x has shape {tuple(x.shape)} but q(z|x) has batch shape {tuple(batch)}: x must be "
            "[*B, *X] with the same leading batch dimensions as q"
        )


def _broadcastable(a: torch.Size, b: torch.Size) -> bool:
    return all(i == j or i == 1 or j == 1 for i, j in zip(a, b, strict=True))


def draw_latents(x: Tensor, q: Distribution, num_samples: int) -> Tensor:
    """Check ``num_samples`` and that ``x`` matches ``q``'s batch, then draw ``z: [S, *B, Z]``
    from q (reparameterized when q allows it): the first step of every Monte Carlo bound."""
    check_num_samples(num_samples)
    check_data(x, q)
    return sample(q, num_samples)


def elbo_entropy(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 1,
    analytic_entropy: bool = True,
) -> Tensor:
    """ELBO as ``E_q[log p(x|z) + log p(z)] + H(q)``: ``[*B]``.

    The expectation is a Monte Carlo average over ``num_samples`` draws of ``z ~ q``; the entropy is
    analytic when ``analytic_entropy`` and ``q`` has a closed form, else ``-mean log q(z)`` on the
    same draws.
    """
    z = draw_latents(x, q, num_samples)  # (S, *B, Z)
    log_joint = likelihood(z).log_prob(x) + prior.log_prob(z)  # (S, *B)
    h = entropy(q, z) if analytic_entropy else -q.log_prob(z).mean(0)
    return log_joint.mean(0) + h


def elbo_terms(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 1,
    analytic_kl: bool = True,
) -> tuple[Tensor, Tensor]:
    """The two terms of the KL-form ELBO: ``(E_q[log p(x|z)], KL(q ‖ p(z)))``, each ``[*B]``.

    The expectation averages ``num_samples`` draws of ``z ~ q`` (reparameterized when possible).
    The KL is analytic through ``torch.distributions.kl_divergence`` when ``analytic_kl`` and a
    closed form is registered for the pair, else a Monte Carlo estimate on the same draws of ``z``.
    Models that weight the terms (β-VAE) use this; :func:`elbo_kl` is their difference.
    """
    z = draw_latents(x, q, num_samples)  # (S, *B, Z)
    expected_log_likelihood = likelihood(z).log_prob(x).mean(0)  # (*B)
    monte_carlo = not analytic_kl
    divergence = (q.log_prob(z) - prior.log_prob(z)).mean(0) if monte_carlo else kl(q, prior, z)
    return expected_log_likelihood, divergence


def elbo_kl(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 1,
    analytic_kl: bool = True,
) -> Tensor:
    """ELBO as ``E_q[log p(x|z)] - KL(q ‖ p(z))``: ``[*B]`` (see :func:`elbo_terms`)."""
    expected_log_likelihood, divergence = elbo_terms(
        x, q, prior, likelihood, num_samples, analytic_kl
    )
    return expected_log_likelihood - divergence


def elbo_enumerated(
    x: Tensor, q: Distribution, prior: Distribution, likelihood: Likelihood
) -> Tensor:
    """The exact ELBO for a ``q`` with finite support, by enumeration: ``[*B]``.

    ``Σ_z q(z) [log p(x|z) + log p(z) - log q(z)]`` over ``q.enumerate_support()`` (e.g. one-hot
    categorical latents). No sampling, so no Monte Carlo error.
    """
    check_data(x, q)
    z = q.enumerate_support(expand=True)  # (K, *B, K)
    log_q = q.log_prob(z)  # (K, *B)
    log_joint = likelihood(z).log_prob(x) + prior.log_prob(z)
    # Components with q(z) = 0 contribute nothing; mask them before subtracting so that neither
    # the value nor the gradient sees 0 · ∞.
    support = log_q > -math.inf
    safe_log_q = torch.where(support, log_q, torch.zeros_like(log_q))
    terms = torch.where(support, safe_log_q.exp() * (log_joint - safe_log_q), 0.0)
    return terms.sum(0)


def log_weights(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int,
) -> Tensor:
    """Importance log-weights ``log p(x, z_k) - log q(z_k|x)`` for ``z_k ~ q``: ``[K, *B]``."""
    z = draw_latents(x, q, num_samples)  # (K, *B, Z)
    return likelihood(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)


def iwae_bound(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int,
) -> Tensor:
    """The importance-weighted bound ``log (1/K) Σ_k w_k``: ``[*B]``.

    ``IWAE_1`` is the (entropy-free, single-sample) ELBO estimate, and ``E[IWAE_K]`` increases
    monotonically in K towards log p(x) (Burda et al. 2016, Theorem 1).
    """
    return log_mean_exp(log_weights(x, q, prior, likelihood, num_samples), dim=0)


@torch.no_grad()
def importance_log_likelihood(
    x: Tensor,
    q: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    num_samples: int = 5000,
    chunk_size: int = 500,
) -> tuple[Tensor, Tensor]:
    """Importance-sampled estimate of log p(x) with its standard error: ``([*B], [*B])``.

    Draws ``num_samples`` weights in chunks of ``chunk_size`` so memory stays at one chunk
    (K = 5000 on MNIST fits easily), accumulating ``log Σ w`` and ``log Σ w²`` in log space.
    The standard error is the delta-method one, ``sd(w) / (mean(w) sqrt(K))``: the standard error
    of ``log mean(w)`` for large K. The estimate itself is the IWAE bound with this K.
    """
    check_num_samples(num_samples)
    check_num_samples(chunk_size, "chunk_size")
    log_sum = log_sum_sq = None
    remaining = num_samples
    while remaining > 0:
        k = min(chunk_size, remaining)
        lw = log_weights(x, q, prior, likelihood, k)  # (k, *B)
        chunk_sum, chunk_sum_sq = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
        if log_sum is None:
            log_sum, log_sum_sq = chunk_sum, chunk_sum_sq
        else:
            log_sum = torch.logaddexp(log_sum, chunk_sum)
            log_sum_sq = torch.logaddexp(log_sum_sq, chunk_sum_sq)
        remaining -= k
    n = num_samples
    estimate = log_sum - math.log(n)
    # Relative variance of w: mean(w²)/mean(w)² - 1, with the unbiased n/(n-1) correction.
    ratio = torch.exp(log_sum_sq - math.log(n) - 2 * estimate)
    rel_var = (ratio - 1).clamp_min(0) * (n / max(n - 1, 1))
    stderr = torch.sqrt(rel_var / n)
    return estimate, stderr


def posterior_gap(q: Distribution, posterior: Distribution) -> Tensor:
    """KL(q(z|x) ‖ p(z|x)) ``[*B]``: exactly ``log p(x) - ELBO(q)`` when p(z|x) is known."""
    return kl(q, posterior)


# --------------------------------------------------------------------------------------------------
# Sequence bounds (state-space models)


def sequence_elbo(log_likelihood: Tensor, divergence: Tensor) -> Tensor:
    """The sequence ELBO ``Σ_t (log-likelihood_t − KL_t)``: ``[T, *B], [T, *B] -> [*B]`` nats.

    For a state-space model with prior p(x_1) Π p(x_t|x_{t−1}, a_{t−1}) and a filtering-form
    posterior q(x_t|x_{t−1}, a_{t−1}, o_t), sampled ancestrally (x_{t−1} ~ q), the ELBO is

        E_q[Σ_t log p(o_t|x_t) + log p(r_t|x_t) − KL(q(x_t|x_{t−1}, ·) ‖ p(x_t|x_{t−1}, a_{t−1}))]

    (Hafner et al. 2019, PlaNet eq. 3). ``log_likelihood[t]`` is step t's log p(o_t, r_t|x_t) at the
    sampled x_t and ``divergence[t]`` its KL term given the sampled x_{t−1} — analytic, or the
    single-sample ``log q(x_t|·) − log p(x_t|·)``; both are unbiased and give the same expectation.
    With T = 1 this is the ELBO of a VAE with prior p(x_1) (:func:`elbo_kl`).
    """
    if log_likelihood.shape != divergence.shape or log_likelihood.dim() < 1:
        raise ValueError(
            f"log_likelihood {tuple(log_likelihood.shape)} and divergence "
            f"{tuple(divergence.shape)} must both be [T, *B] with the same shape"
        )
    return (log_likelihood - divergence).sum(0)


def free_nats_kl(divergence: Tensor, free_nats: float) -> Tensor:
    """``max(KL, free_nats)`` elementwise: a KL below ``free_nats`` costs a constant and gets no
    gradient (Kingma et al. 2016's free bits, per step as in PlaNet). ``free_nats = 0`` is the KL."""
    return divergence.clamp_min(free_nats) if free_nats > 0 else divergence


def balanced_kl(
    kl_to_prior: Tensor, kl_to_posterior: Tensor, balance: float, free_nats: float = 0.0
) -> Tensor:
    """KL balancing (Hafner et al. 2021, DreamerV2): ``α·KL(sg(q) ‖ p) + (1−α)·KL(q ‖ sg(p))``.

    The caller computes the two KL values, ``kl_to_prior`` with the posterior's parameters detached
    (trains the prior towards the posterior) and ``kl_to_posterior`` with the prior's detached
    (regularizes the posterior); both equal KL(q ‖ p) in value, so the result does too (above
    ``free_nats``, applied to each part as DreamerV2 does) — only the gradients are reweighted.
    Shapes: ``[*B], [*B] -> [*B]``; ``balance = α ∈ [0, 1]``.
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance = {balance!r} is invalid: use α in [0, 1] (DreamerV2 uses 0.8)")
    prior_part = free_nats_kl(kl_to_prior, free_nats)
    posterior_part = free_nats_kl(kl_to_posterior, free_nats)
    return balance * prior_part + (1.0 - balance) * posterior_part
