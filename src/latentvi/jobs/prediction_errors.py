"""Errors of a world model's open-loop prediction, per step ahead: frame error and, on
Gymnasium Pendulum, the rod angle read off the frames. Used by the training job's end-of-run
figure (:mod:`latentvi.jobs.world_model`) and by the report on a trained run
(:mod:`latentvi.jobs.open_loop`), which both import it (and not each other)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from latentvi.config import check_positive_int
from latentvi.train.rng import isolated_rng

__all__ = ["REPORT_SEED", "open_loop_errors", "pendulum_angle", "wrapped_difference"]

REPORT_SEED = 5_000_000


def pendulum_angle(frames: Tensor) -> Tensor:
    """Gymnasium Pendulum's angle θ (0 upright, counter-clockwise positive) read off rendered
    frames ``[*B, C, H, W]`` (uint8, or floats in [0, 1]; one or more channels): the direction
    from the image centre (the pivot) to the centroid of the darkness ``1 − pixel`` on the white
    background. On 64×64 grayscale renders it is within 0.02 rad of the true θ on average
    (``tests/experiments/test_open_loop.py``). Returns ``[*B]`` radians in (−π, π]."""
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
