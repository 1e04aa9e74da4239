"""Expectation-maximization for the exact models: EM, hard EM, and their minibatch forms.

The lecture reaches variational inference from the *expected* log-likelihood,

    θ ← argmax_θ (1/N) Σ_i E_{z ~ p(z|x_i; θ_old)} [log p_θ(x_i, z)].

With the exact posterior of the current θ this is EM (Dempster, Laird & Rubin 1977): each
iteration never lowers log p(x). *Hard EM* is the lecture's first intuition, "guess the most likely
z and pretend it is right": the expectation is replaced by the posterior mode (the arg-max component
of a mixture; for probabilistic PCA the posterior mean, which is also its mode, with the posterior
covariance dropped). Hard EM maximizes max_z log p(x, z), not log p(x), and its answer is biased.

Every model has two plain functions. The E-step (:func:`mixture_statistics`,
:func:`ppca_statistics`) returns the expected sufficient statistics of a batch as *sums over its
examples*, so statistics of minibatches add up to those of the whole data set; the M-step
(:func:`mixture_m_step`, :func:`ppca_m_step`) sets θ in place to their maximizer.
:func:`em_step` is one iteration over a tensor or an iterable of minibatches and :func:`fit_em`
runs several, in one of three modes:

* ``"batch"`` — the E-step statistics are accumulated over the minibatches (or taken from the
  whole data at once) and one exact M-step follows each pass: the same iterates as full-batch EM,
  up to the order of floating-point summation. Memory is one minibatch.
* ``"incremental"`` — incremental EM (Neal & Hinton 1998): the statistics of every minibatch are
  kept; after each minibatch its old contribution to the total is replaced by the new one and an
  M-step follows. Each update never lowers the free energy F(q, θ), and it often converges in fewer
  passes than batch EM. The first pass is a batch pass, which fills the table.
* ``"stepwise"`` — stepwise (online) EM (Sato 2000; Cappé & Moulines 2009; Liang & Klein 2009):
  s ← (1 − ρ_t) s + ρ_t (N / B) s_batch with ρ_t = (t + 1)^(−κ), κ ∈ (1/2, 1], then an M-step.
  It converges to a stationary point of log p(x) as the steps shrink (Robbins–Monro), with no
  monotonicity guarantee at any single step.

The models' own exact posteriors are used (``LinearGaussian.posterior``,
``GaussianMixture.component_log_joint``): nothing here re-derives them. Probabilistic PCA's EM is
that of Tipping & Bishop (1999, appendix B), with the bias b updated jointly with W (a regression of
x on the augmented latent [z, 1]), so that b need not start at the sample mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from latentvi.config import check_positive_int
from latentvi.distributions import inverse_softplus
from latentvi.models.exact import GaussianMixture, LinearGaussian

__all__ = [
    "MODES",
    "em_step",
    "fit_em",
    "mixture_m_step",
    "mixture_statistics",
    "ppca_m_step",
    "ppca_statistics",
]

Statistics = dict[str, Tensor]
"""Expected sufficient statistics: sums over the examples of a batch (they add across batches)."""

MODES = ("batch", "incremental", "stepwise")


def _check_data(model, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a [N, D] tensor with N >= 1, got {shape}")
    dtype = next(model.parameters()).dtype
    if x.dtype != dtype:
        raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {dtype}: cast one")
    return x


def _check_reg_variance(reg_variance: float) -> None:
    if not (isinstance(reg_variance, int | float) and math.isfinite(reg_variance)):
        raise ValueError(f"reg_variance must be a finite number >= 0, got {reg_variance!r}")
    if reg_variance < 0:
        raise ValueError(
            f"reg_variance must be >= 0 (0 = exact maximum likelihood), got {reg_variance}"
        )


# ---------------------------------------------------------------------------------------------
# Gaussian mixture (diagonal covariances)


@torch.no_grad()
def mixture_statistics(model: GaussianMixture, x: Tensor, hard: bool = False) -> Statistics:
    """E-step of a :class:`~latentvi.models.GaussianMixture`: ``x [N, D]`` -> statistics.

    With responsibilities r_ik = p(z = k | x_i) (``hard``: the one-hot arg-max component):
    ``count [K] = Σ_i r_ik``, ``sum_x [K, D] = Σ_i r_ik x_i``, ``sum_xx [K, D] = Σ_i r_ik x_i²``,
    ``num_points [] = N``.
    """
    x = _check_data(model, x)
    log_joint = model.component_log_joint(x)  # (N, K)
    if hard:
        responsibilities = F.one_hot(log_joint.argmax(-1), model.num_components).to(x.dtype)
    else:
        responsibilities = torch.softmax(log_joint, -1)  # (N, K)
    return {
        "count": responsibilities.sum(0),
        "sum_x": responsibilities.T @ x,
        "sum_xx": responsibilities.T @ x.square(),
        "num_points": torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device),
    }


@torch.no_grad()
def mixture_m_step(model: GaussianMixture, statistics: Statistics, reg_variance: float = 0.0):
    """M-step of a mixture, in place: π_k = N_k / N, μ_k = S_k / N_k, σ_k² = Q_k / N_k − μ_k².

    ``reg_variance`` is added to every variance (scikit-learn's ``reg_covar``; 0 = exact maximum
    likelihood). A component with no responsibility at all (possible in hard EM) keeps its mean and
    scale and gets weight 0 (its logit is the log of the smallest normal float, so stays finite).
    """
    _check_reg_variance(reg_variance)
    count, num_points = statistics["count"], statistics["num_points"]
    occupied = count > 0  # (K)
    safe_count = torch.where(occupied, count, torch.ones_like(count)).unsqueeze(-1)  # (K, 1)
    means = statistics["sum_x"] / safe_count
    variances = statistics["sum_xx"] / safe_count - means.square()
    tiny = torch.finfo(count.dtype).tiny
    variances = variances.clamp_min(tiny) + reg_variance
    keep = ~occupied.unsqueeze(-1)
    means = torch.where(keep, model.means, means)
    raw_scales = torch.where(keep, model.raw_scales, inverse_softplus(variances.sqrt(), 0.0))
    model.logits.copy_(torch.log((count / num_points).clamp_min(tiny)))
    model.means.copy_(means)
    model.raw_scales.copy_(raw_scales)


# ---------------------------------------------------------------------------------------------
# Probabilistic PCA (LinearGaussian)


@torch.no_grad()
def ppca_statistics(model: LinearGaussian, x: Tensor, hard: bool = False) -> Statistics:
    """E-step of probabilistic PCA: ``x [N, D]`` -> statistics.

    With m_i = E[z | x_i] and Σ = Cov[z | x_i] (the same for every example) from
    ``model.posterior``: ``sum_xz [D, k] = Σ_i x_i m_iᵀ``, ``sum_x [D]``, ``sum_z [k] = Σ_i m_i``,
    ``sum_zz [k, k] = Σ_i (m_i m_iᵀ + Σ)``, ``sum_xx [] = Σ_i ‖x_i‖²``, ``num_points [] = N``.
    ``hard``: z_i is the posterior mode m_i, and Σ is dropped from ``sum_zz``.
    """
    x = _check_data(model, x)
    posterior = model.posterior(x)
    mean = posterior.mean  # (N, k)
    sum_zz = mean.T @ mean
    if not hard:
        scale_tril = posterior.scale_tril.reshape(-1, model.latent_dim, model.latent_dim)[0]
        sum_zz = sum_zz + x.shape[0] * (scale_tril @ scale_tril.T)
    return {
        "sum_xz": x.T @ mean,
        "sum_x": x.sum(0),
        "sum_z": mean.sum(0),
        "sum_zz": sum_zz,
        "sum_xx": x.square().sum(),
        "num_points": torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device),
    }


@torch.no_grad()
def ppca_m_step(model: LinearGaussian, statistics: Statistics, reg_variance: float = 0.0):
    """M-step of probabilistic PCA, in place (Tipping & Bishop 1999, appendix B, with b joint).

    With the augmented latent z̃ = [z, 1], A = Σ_i E[z̃ z̃ᵀ] and C = Σ_i x_i E[z̃]ᵀ: [W, b] = C A⁻¹
    (a least-squares regression of x on z̃, whatever σ²), then
    σ² = (Σ_i ‖x_i‖² − tr([W, b]ᵀ C)) / (N D) + ``reg_variance``.
    """
    _check_reg_variance(reg_variance)
    num_points = statistics["num_points"]
    k = model.latent_dim
    a = statistics["sum_zz"].new_empty(k + 1, k + 1)
    a[:k, :k] = statistics["sum_zz"]
    a[:k, k] = a[k, :k] = statistics["sum_z"]
    a[k, k] = num_points
    c = torch.cat([statistics["sum_xz"], statistics["sum_x"].unsqueeze(-1)], -1)  # (D, k+1)
    weight_bias = torch.linalg.solve(a, c.T).T  # (D, k+1); A is symmetric
    residual = statistics["sum_xx"] - (weight_bias * c).sum()
    variance = residual / (num_points * model.data_dim)
    variance = variance.clamp_min(torch.finfo(variance.dtype).tiny) + reg_variance
    model.weight.copy_(weight_bias[:, :k])
    model.bias.copy_(weight_bias[:, k])
    model.raw_noise_std.copy_(inverse_softplus(variance.sqrt(), 0.0))


# ---------------------------------------------------------------------------------------------
# Iterations


def _steps_for(model) -> tuple[Callable, Callable]:
    if isinstance(model, GaussianMixture):
        return mixture_statistics, mixture_m_step
    if isinstance(model, LinearGaussian):
        return ppca_statistics, ppca_m_step
    raise ValueError(
        f"model must be a GaussianMixture or a LinearGaussian (the models with an exact "
        f"posterior), got {type(model).__name__}"
    )


def _combine(total: Statistics | None, statistics: Statistics, scale: float = 1.0) -> Statistics:
    """``total + scale · statistics`` (``scale · statistics`` when total is None)."""
    if total is None:
        return {name: scale * value for name, value in statistics.items()}
    return {name: total[name] + scale * value for name, value in statistics.items()}


def em_step(
    model: GaussianMixture | LinearGaussian,
    data: Tensor | Iterable[Tensor],
    hard: bool = False,
    reg_variance: float = 0.0,
) -> Statistics:
    """One EM (``hard``: hard-EM) iteration, in place: E-step over ``data``, then one M-step.

    ``data`` is the whole data set ``[N, D]`` or an iterable of minibatches ``[B_j, D]`` whose
    statistics are summed before the M-step (the "batch" mode of :func:`fit_em`). Returns the
    accumulated statistics.
    """
    statistics_of, m_step = _steps_for(model)
    batches = [data] if isinstance(data, Tensor) else data
    total = None
    for batch in batches:
        total = _combine(total, statistics_of(model, batch, hard))
    if total is None:
        raise ValueError("data must hold at least one minibatch")
    m_step(model, total, reg_variance)
    return total


@torch.no_grad()
def fit_em(
    model: GaussianMixture | LinearGaussian,
    x: Tensor,
    *,
    iterations: int,
    hard: bool = False,
    batch_size: int | None = None,
    mode: Literal["batch", "incremental", "stepwise"] = "batch",
    step_size_power: float = 0.6,
    reg_variance: float = 0.0,
    seed: int = 0,
    evaluate: Callable[[], float] | None = None,
    callback: Callable[[dict[str, float]], bool | None] | None = None,
) -> list[dict[str, float]]:
    """Fit ``model`` to ``x [N, D]`` by ``iterations`` passes of EM (``hard``: hard EM), in place.

    Args:
        batch_size: minibatch size; None: the whole data set as one batch. The data are cut into
            fixed contiguous minibatches (the last may be smaller), visited in a new random order
            each pass (seeded by ``seed``; the global RNG is not touched).
        mode: ``"batch"`` (one exact M-step per pass), ``"incremental"`` (Neal & Hinton 1998) or
            ``"stepwise"`` (online EM with step sizes (t + 1)^(−``step_size_power``)); see the
            module docstring. With a single batch all three are plain EM, except that stepwise
            EM's average over passes is then still a decaying average.
        step_size_power: κ ∈ (0.5, 1] of the stepwise mode.
        reg_variance: added to every variance in the M-step (0 = exact maximum likelihood).
        evaluate: returns the value recorded as ``log_marginal`` after each pass (e.g. log p(x)
            from a float64 copy of θ); default: the model's mean exact log p(x) of ``x``.
        callback: called with each record; returning True stops early.

    Returns:
        One record per pass, and one for the start: ``iteration`` (passes), ``steps`` (M-steps so
        far), ``log_marginal`` (exact mean log p(x) under θ after the pass, nats per example) and
        ``seconds`` (cumulative time of the E- and M-steps, the evaluation excluded).
    """
    x = _check_data(model, x)
    check_positive_int("iterations", iterations)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.5 < step_size_power <= 1:
        raise ValueError(f"step_size_power must be in (0.5, 1], got {step_size_power!r}")
    _check_reg_variance(reg_variance)
    statistics_of, m_step = _steps_for(model)
    num_points = x.shape[0]
    batch_size = num_points if batch_size is None else check_positive_int("batch_size", batch_size)
    batches = list(x.split(batch_size))
    generator = torch.Generator().manual_seed(seed)

    if evaluate is None:

        def evaluate() -> float:
            return model.log_marginal(x).mean().item()

    def record(iteration: int, steps: int, seconds: float) -> dict[str, float]:
        log_marginal = evaluate()
        return {
            "iteration": iteration,
            "steps": steps,
            "log_marginal": log_marginal,
            "seconds": seconds,
        }

    history = [record(0, 0, 0.0)]
    if callback is not None and callback(history[0]):
        return history
    table: list[Statistics | None] = [None] * len(batches)
    total: Statistics | None = None
    steps, seconds = 0, 0.0
    for iteration in range(1, iterations + 1):
        started = time.perf_counter()
        order = torch.randperm(len(batches), generator=generator).tolist()
        if mode == "batch" or (mode == "incremental" and iteration == 1):
            total = None
            for j in order:
                table[j] = statistics_of(model, batches[j], hard)
                total = _combine(total, table[j])
            m_step(model, total, reg_variance)
            steps += 1
        else:
            for j in order:
                new = statistics_of(model, batches[j], hard)
                if mode == "incremental":
                    total = _combine(_combine(total, table[j], -1.0), new)
                    table[j] = new
                else:  # stepwise: ρ_t = (t + 1)^(−κ), t = 0, 1, ... (ρ_0 = 1)
                    rho = (steps + 1) ** (-step_size_power)
                    scale = rho * num_points / batches[j].shape[0]
                    decayed = None if total is None else _combine(None, total, 1 - rho)
                    total = _combine(decayed, new, scale)
                m_step(model, total, reg_variance)
                steps += 1
        seconds += time.perf_counter() - started
        history.append(record(iteration, steps, seconds))
        if callback is not None and callback(history[-1]):
            break
    return history
