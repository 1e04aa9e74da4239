"""Refining an encoder's q per example, and the amortization gap it reveals.

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders", split the gap
between log p(x) and the ELBO of an amortized q_φ(z|x) in two:

    log p(x) − ELBO(q_φ)  =  [log p(x) − ELBO(q*)]    +  [ELBO(q*) − ELBO(q_φ)]
                             approximation gap           amortization gap

where q* is the best member of q's family for this x. q* is found by :func:`refine`: start from the
encoder's output and run gradient ascent on that example's own variational parameters with θ (and
φ) frozen — per-datapoint VI (Hoffman et al. 2013) warm-started by amortized VI (Kingma & Welling
2014). All values are nats per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from latentvi.bounds import Likelihood, check_num_samples, elbo_kl, importance_log_likelihood
from latentvi.distributions import (
    diagonal_gaussian,
    inverse_softplus,
    kl,
    positive_scale,
)
from latentvi.optim_step import optimizer_step

__all__ = ["amortization_gap", "refine"]

Objective = Callable[[Distribution], Tensor]
"""``objective(q) -> ELBO [*B]``: a differentiable (estimate of the) ELBO of each example."""


def _check_diagonal_gaussian(q: Distribution) -> Independent:
    if not (
        isinstance(q, Independent)
        and isinstance(q.base_dist, Normal)
        and q.reinterpreted_batch_ndims == 1
    ):
        raise ValueError(
            f"q_init must be a diagonal Gaussian (Independent(Normal, 1), e.g. the output of a "
            f"DiagonalGaussianEncoder), got {type(q).__name__}"
        )
    return q


def refine(
    x: Tensor,
    q_init: Distribution,
    prior: Distribution,
    likelihood: Likelihood,
    *,
    steps: int = 300,
    lr: float = 0.05,
    num_samples: int = 1,
    objective: Objective | None = None,
    min_scale: float = 1e-5,
) -> Independent:
    """Optimize a diagonal Gaussian per example, starting at ``q_init``, with the model fixed.

    Args:
        x: the data ``[*B, D]``.
        q_init: a diagonal Gaussian, batch ``[*B]``, event ``[Z]`` (the encoder's q(z|x)).
        prior, likelihood: the model, as in :mod:`latentvi.bounds`; never updated.
        steps: Adam steps (0 returns ``q_init``'s parameters detached).
        lr: Adam's initial learning rate, annealed to 0 by a cosine schedule so the final q sits
            at the optimum rather than oscillating around it.
        num_samples: z draws per example and step of the reparameterized ELBO.
        objective: ``q -> ELBO [*B]`` to maximize instead of the reparameterized Monte Carlo ELBO
            (e.g. an exact ELBO: then the ascent is deterministic).
        min_scale: floor of the softplus scale.

    Returns:
        The refined q (detached): ``Independent(Normal)`` with batch ``[*B]``, event ``[Z]``.
        Examples do not interact: the objective is summed over the batch, so each example's
        gradient is its own ELBO's.
    """
    q_init = _check_diagonal_gaussian(q_init)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
    check_num_samples(num_samples)
    if objective is None:

        def objective(q: Distribution) -> Tensor:
            return elbo_kl(x, q, prior, likelihood, num_samples)

    base = q_init.base_dist
    loc = base.loc.detach().clone().requires_grad_(True)
    raw_scale = inverse_softplus(base.scale.detach().clamp_min(2 * min_scale), min_scale)
    raw_scale = raw_scale.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, raw_scale], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            q = diagonal_gaussian(loc, positive_scale(raw_scale, min_scale), validate_args=False)
            loss = -objective(q).sum()
            # Only q's own parameters are differentiated: θ and φ get no gradient.
            optimizer_step(optimizer, loss, name="negative refined ELBO", only_optimized=True)
    scale = positive_scale(raw_scale.detach(), min_scale)
    return diagonal_gaussian(loc.detach(), scale, validate_args=False)


@torch.no_grad()
def _monte_carlo_elbo(
    x: Tensor, q: Distribution, prior: Distribution, likelihood: Likelihood, num_samples: int
) -> Tensor:
    """``elbo_kl`` with ``num_samples`` draws, taken in chunks of at most 100: ``[*B]``."""
    total, remaining = torch.zeros(q.batch_shape, dtype=x.dtype, device=x.device), num_samples
    while remaining > 0:
        k = min(100, remaining)
        total += k * elbo_kl(x, q, prior, likelihood, k)
        remaining -= k
    return total / num_samples


def amortization_gap(
    model: nn.Module,
    encoder: Callable[[Tensor], Distribution],
    x: Tensor,
    refine_steps: int = 300,
    *,
    lr: float = 0.05,
    num_samples: int = 1,
    elbo_samples: int = 1000,
    log_marginal_samples: int = 5000,
) -> dict[str, float]:
    """The inference gaps of Cremer et al. (2018) for ``encoder`` on ``x [B, D]``, in nats.

    q_φ = ``encoder(x)`` is refined per example by :func:`refine` for ``refine_steps`` steps.
    When ``model`` has an exact ``expected_log_likelihood(x, q)`` (``LinearGaussian``), every
    ELBO is exact (``E_q log p(x|z) − KL``), and refinement ascends it exactly; otherwise ELBOs
    are Monte Carlo with ``elbo_samples`` draws and refinement uses the reparameterized ELBO with
    ``num_samples`` draws. log p(x) is ``model.log_marginal(x)`` when available, else the
    importance estimate of :func:`latentvi.bounds.importance_log_likelihood` with
    ``log_marginal_samples`` draws from the refined q.

    Returns:
        Per-example means: ``elbo_amortized``, ``elbo_refined``, ``log_marginal``,
        ``approximation_gap`` (log p(x) − ELBO(refined)) and ``amortization_gap``
        (ELBO(refined) − ELBO(amortized)); plus ``log_marginal_stderr`` when log p(x) is
        estimated.
    """
    check_num_samples(elbo_samples, "elbo_samples")
    prior, likelihood = model.prior, model.likelihood
    with torch.no_grad():
        q_amortized = encoder(x)
    exact = hasattr(model, "expected_log_likelihood")
    if exact:

        def elbo(q: Distribution) -> Tensor:
            return model.expected_log_likelihood(x, q) - kl(q, prior)

        objective = elbo
    else:

        def elbo(q: Distribution) -> Tensor:
            return _monte_carlo_elbo(x, q, prior, likelihood, elbo_samples)

        objective = None
    q_refined = refine(
        x,
        q_amortized,
        prior,
        likelihood,
        steps=refine_steps,
        lr=lr,
        num_samples=num_samples,
        objective=objective,
    )
    with torch.no_grad():
        elbo_amortized = elbo(q_amortized).mean().item()
        elbo_refined = elbo(q_refined).mean().item()
        result = {"elbo_amortized": elbo_amortized, "elbo_refined": elbo_refined}
        if hasattr(model, "log_marginal"):
            log_marginal = model.log_marginal(x).mean().item()
        else:
            estimate, stderr = importance_log_likelihood(
                x, q_refined, prior, likelihood, log_marginal_samples
            )
            log_marginal = estimate.mean().item()
            result["log_marginal_stderr"] = (stderr.pow(2).sum().sqrt() / stderr.numel()).item()
    result["log_marginal"] = log_marginal
    result["approximation_gap"] = log_marginal - elbo_refined
    result["amortization_gap"] = elbo_refined - elbo_amortized
    return result
