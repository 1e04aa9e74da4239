"""Diagnostics: measurements of estimators and models against exact answers.

* :func:`variance_probe` measures gradient estimators' means and variances over many draws (and
  their distance from an exact gradient, when one is known); :func:`format_probe_table` prints
  the result; :func:`exact_elbo_linear_gaussian` is the analytic ELBO whose autograd gradient is
  the exact reference for :mod:`latentvi.gradients`' estimators.
* :func:`open_loop_errors` measures a world model's open-loop predictions against the frames that
  really came (per-step frame error and, on Pendulum-v1, the rod angle read off the frames by
  :func:`pendulum_angle`); :func:`recognizable_steps` counts the steps ahead before the angle
  error first reaches a threshold. ``latentvi.jobs.open_loop`` reports them for a run folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from latentvi.bounds import check_num_samples
from latentvi.config import check_positive_int
from latentvi.distributions import kl
from latentvi.train.rng import isolated_rng

__all__ = [
    "ProbeResult",
    "exact_elbo_linear_gaussian",
    "format_probe_table",
    "open_loop_errors",
    "pendulum_angle",
    "recognizable_steps",
    "variance_probe",
    "wrapped_difference",
]

# --------------------------------------------------------------------------------------------------
# Exact reference


def exact_elbo_linear_gaussian(model, x: Tensor, q: Distribution) -> Tensor:
    """The analytic ELBO of a ``LinearGaussian`` for a Gaussian q: ``[*B]`` in nats.

    ``E_q[log p(x|z)] − KL(q ‖ p(z))``, both in closed form; its autograd gradient is the exact
    gradient that the estimators above approximate (the reference in tests and the CLI's probe).
    """
    return model.expected_log_likelihood(x, q) - kl(q, model.prior)


# --------------------------------------------------------------------------------------------------
# Variance probe


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One estimator's gradient statistics over ``num_draws`` independent draws.

    ``mean`` and ``per_coordinate_variance`` are ``[P]`` over the flattened, concatenated
    parameters. ``variance`` is the trace of the covariance (the sum of per-coordinate variances).
    With an exact gradient: ``mean_abs_error`` = mean |mean − exact| and ``max_abs_z`` =
    max |mean − exact| / (std / √N) (|z| > ~4 flags a bias); ``None`` without one.
    """

    name: str
    mean: Tensor
    variance: float
    per_coordinate_variance: Tensor
    mean_abs_error: float | None
    max_abs_z: float | None
    num_draws: int


def _flat_gradient(objective: Tensor, params: Sequence[Tensor]) -> Tensor:
    if objective.numel() != 1:
        raise ValueError(
            f"each estimator must return a scalar objective, got shape {tuple(objective.shape)}: "
            "sum or average the surrogate over the batch"
        )
    grads = torch.autograd.grad(objective.reshape(()), list(params), allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def variance_probe(
    estimators: Mapping[str, Callable[[], Tensor]],
    params: Sequence[Tensor],
    num_draws: int = 1000,
    exact_gradient: Sequence[Tensor] | None = None,
) -> list[ProbeResult]:
    """Draw ``num_draws`` gradients of each estimator w.r.t. ``params`` and summarize them.

    Args:
        estimators: name -> a zero-argument callable that draws fresh samples and returns a scalar
            objective (e.g. a surrogate summed over the batch). Each call must build a new graph.
        params: the tensors (requiring grad) to differentiate w.r.t.; flattened and concatenated
            into ``[P]``.
        num_draws: N >= 2 independent draws per estimator.
        exact_gradient: the true gradient, one tensor per entry of ``params``, for the bias check.

    Returns:
        One :class:`ProbeResult` per estimator, in the mapping's order. Variances use N − 1.

    The draws are a plain loop of ``torch.autograd.grad`` calls (about 0.5 ms each for the
    LinearGaussian of the tests, so 1000 draws take ~0.5 s). On tensors this small the intra-op
    thread pool costs more than it saves; ``torch.set_num_threads(1)`` can make it much faster.
    """
    check_num_samples(num_draws, "num_draws")
    if num_draws < 2:
        raise ValueError(f"num_draws must be at least 2 to estimate a variance, got {num_draws}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors to differentiate with respect to")
    exact = None
    if exact_gradient is not None:
        exact_gradient = list(exact_gradient)
        if len(exact_gradient) != len(params):
            raise ValueError(
                f"exact_gradient has {len(exact_gradient)} tensors but params has {len(params)}: "
                "pass one exact gradient per parameter"
            )
        exact = torch.cat([g.detach().reshape(-1) for g in exact_gradient])
    results = []
    for name, estimator in estimators.items():
        draws = torch.stack([_flat_gradient(estimator(), params) for _ in range(num_draws)])
        mean = draws.mean(0)
        per_coordinate = draws.var(0)  # unbiased, (P)
        mean_abs_error = max_abs_z = None
        if exact is not None:
            error = (mean - exact.to(mean)).abs()
            stderr = (per_coordinate / num_draws).sqrt()
            # Floor the standard error at the rounding level, so a deterministic coordinate (an
            # analytic KL's, say) that matches up to rounding scores ~0 rather than error / 0.
            rounding = 16 * torch.finfo(mean.dtype).eps * (1.0 + exact.abs().to(mean))
            z = error / torch.maximum(stderr, rounding)
            mean_abs_error, max_abs_z = error.mean().item(), z.max().item()
        results.append(
            ProbeResult(
                name=name,
                mean=mean,
                variance=per_coordinate.sum().item(),
                per_coordinate_variance=per_coordinate,
                mean_abs_error=mean_abs_error,
                max_abs_z=max_abs_z,
                num_draws=num_draws,
            )
        )
    return results


def format_probe_table(results: Sequence[ProbeResult]) -> str:
    """A plain-text table of :func:`variance_probe` results.

    Columns: estimator, total variance (trace of the gradient's covariance; the ELBO is in nats),
    the ratio to the reparameterization estimator's (the row named ``"reparameterization"``, else
    the first whose name starts with it; blank if none), the mean |error| and the max |z| against
    the exact gradient (blank without one).
    """
    reference = next((r for r in results if r.name == "reparameterization"), None)
    if reference is None:
        reference = next((r for r in results if r.name.startswith("reparameterization")), None)
    width = max([len("estimator"), *(len(r.name) for r in results)]) + 2
    header = f"{'estimator':<{width}}{'total variance':>16}{'× reparam':>12}"
    header += f"{'mean |err|':>12}{'max |z|':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        ratio = ""
        if reference is not None and reference.variance > 0:
            ratio = f"{r.variance / reference.variance:.1f}"
        error = "" if r.mean_abs_error is None else f"{r.mean_abs_error:.3g}"
        z = "" if r.max_abs_z is None else f"{r.max_abs_z:.2f}"
        lines.append(f"{r.name:<{width}}{r.variance:>16.4g}{ratio:>12}{error:>12}{z:>10}")
    draws = results[0].num_draws if results else 0
    lines.append(f"({draws} draws per estimator; gradients of the ELBO in nats per example)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Open-loop prediction of world models


RECOGNIZABLE_ANGLE = math.pi / 6
REPORT_SEED = 5_000_000


def pendulum_angle(frames: Tensor) -> Tensor:
    """Gymnasium Pendulum's angle θ (0 upright, counter-clockwise positive) read off rendered
    frames ``[*B, C, H, W]`` (uint8, or floats in [0, 1]; one or more channels): the direction
    from the image centre (the pivot) to the centroid of the darkness ``1 − pixel`` on the white
    background. On 64×64 grayscale renders it is within 0.02 rad of the true θ on average
    (``tests/jobs/test_open_loop.py``). Returns ``[*B]`` radians in (−π, π]."""
    pixels = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    darkness = (1.0 - pixels.mean(-3)).clamp_min(0.0)  # [*B, H, W]
    height, width = darkness.shape[-2:]
    rows = torch.arange(height, dtype=darkness.dtype) - (height - 1) / 2
    columns = torch.arange(width, dtype=darkness.dtype) - (width - 1) / 2
    right = (darkness * columns).sum((-2, -1))
    down = (darkness * rows[:, None]).sum((-2, -1))
    # upright: the rod points up (down < 0) → θ = 0; the image x axis is θ's clockwise side
    return torch.atan2(-right, -down)


def wrapped_difference(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``a − b`` wrapped into [−π, π) (tensors or arrays: ``%`` takes the divisor's sign in both)."""
    return (a - b + math.pi) % (2 * math.pi) - math.pi


@torch.no_grad()
def open_loop_errors(
    model,
    obs: Tensor,
    actions: Tensor,
    context: int,
    horizon: int,
    pendulum: bool,
    draws: int = 1,
    seed: int = REPORT_SEED,
) -> dict[str, np.ndarray]:
    """Per-step errors ``[horizon]`` of the open-loop prediction of aligned episodes ``obs
    [T, B, C, H, W]`` (uint8) and ``actions [T, B, A]`` (actions[t] led to obs[t]): ``mse`` and
    ``mean_context_frame_mse`` averaged over the B episodes; with ``pendulum`` also
    ``angle_error`` and ``last_context_angle_error`` (median over episodes, radians). Also
    ``predicted``: the predicted frames ``[horizon, B·draws, C, H, W]`` in [0, 1].

    The prior is sampled, so each episode is predicted ``draws`` times (episode b's draws at
    b, b + B, …) and the averages and medians run over all B·draws predictions; the random
    generators are seeded with ``seed`` inside :func:`latentvi.train.rng.isolated_rng`, so the
    figures are reproducible and the caller's random state is left as it was."""
    if obs.shape[0] < context + horizon:
        raise ValueError(
            f"episodes of {obs.shape[0]} observations are too short for context {context} + "
            f"horizon {horizon}: use a shorter horizon"
        )
    check_positive_int("draws", draws)
    obs = obs.repeat(1, draws, *(1,) * (obs.dim() - 2))
    actions = actions.repeat(1, draws, 1)
    device = next(model.parameters()).device
    with isolated_rng(seed):
        predicted = model.open_loop(
            obs[:context].to(device),
            actions[:context].to(device),
            actions[context : context + horizon].to(device),
        ).cpu()  # [H, B·draws, C, H, W]
    truth = obs[context : context + horizon].float() / 255.0
    mean_frame = obs[:context].float().mean(0) / 255.0  # [B, C, H, W]
    result = {
        "mse": (predicted - truth).pow(2).mean((2, 3, 4)).mean(1).numpy(),
        "mean_context_frame_mse": (mean_frame - truth).pow(2).mean((2, 3, 4)).mean(1).numpy(),
        "predicted": predicted,
    }
    if pendulum:
        true_angle = pendulum_angle(truth)  # [H, B]
        last = pendulum_angle(obs[context - 1].float() / 255.0)  # [B]
        error = wrapped_difference(pendulum_angle(predicted), true_angle).abs()
        still = wrapped_difference(last[None], true_angle).abs()
        result["angle_error"] = error.median(1).values.numpy()
        result["last_context_angle_error"] = still.median(1).values.numpy()
    return result


def recognizable_steps(angle_error: np.ndarray, threshold: float = RECOGNIZABLE_ANGLE) -> int:
    """Steps ahead before the (median) angle error first reaches ``threshold``."""
    above = np.flatnonzero(np.asarray(angle_error) >= threshold)
    return int(above[0]) if above.size else len(angle_error)
