"""Planning by the cross-entropy method (CEM) over action sequences.

Rubinstein, *The cross-entropy method for combinatorial and continuous optimization* (1999), as
PlaNet uses it (Hafner et al., *Learning Latent Dynamics for Planning from Pixels*, 2019, §3): keep
a diagonal Gaussian belief over action sequences ``[H, A]``; each iteration draws ``candidates``
sequences, clips them to the action bounds, scores them with the objective (e.g. the sum of
rewards the learned model predicts), and refits the belief's mean and standard deviation to the
``top_k`` best. The plan is the final mean.

The objective is any function ``[N, H, A] -> [N]`` (higher is better); planning is a pure function
of it and of the generator, so it can be tested on problems whose optimum is known in closed form.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentvi.config import check_positive_int

__all__ = ["cem"]


@torch.no_grad()
def cem(
    objective: Callable[[Tensor], Tensor],
    horizon: int,
    action_dim: int,
    low: Tensor | float,
    high: Tensor | float,
    candidates: int = 1000,
    iterations: int = 10,
    top_k: int = 100,
    generator: torch.Generator | None = None,
    *,
    mean: Tensor | None = None,
    std: Tensor | float | None = None,
    min_std: float = 0.0,
) -> Tensor:
    """The CEM plan: an action sequence ``[H, A]`` that (approximately) maximizes ``objective``.

    Args:
        objective: ``actions [N, H, A] -> returns [N]`` (higher is better).
        horizon, action_dim: H and A.
        low, high: action bounds, floats or tensors ``[A]``; candidates are clipped to them.
        candidates: sequences N drawn per iteration.
        iterations: refits of the belief.
        top_k: the elite sequences each refit uses (``top_k <= candidates``).
        generator: the torch generator for the draws (None: the global one).
        mean: the initial belief mean ``[H, A]`` (default: the middle of the bounds), e.g. the
            previous plan shifted by one step.
        std: the initial standard deviation (default: half the bounds' width, in each dimension).
        min_std: a floor on the refitted standard deviation (0: none).

    Returns:
        The final belief mean ``[H, A]``, inside the bounds.
    """
    check_positive_int("horizon", horizon)
    check_positive_int("action_dim", action_dim)
    check_positive_int("candidates", candidates)
    check_positive_int("iterations", iterations)
    check_positive_int("top_k", top_k)
    if top_k > candidates:
        raise ValueError(f"top_k = {top_k} is invalid: use at most candidates = {candidates}")
    device = mean.device if mean is not None else None
    low = torch.as_tensor(low, dtype=torch.float32, device=device).expand(action_dim)
    high = torch.as_tensor(high, dtype=torch.float32, device=device).expand(action_dim)
    if not bool((high > low).all()):
        raise ValueError(f"bounds low = {low.tolist()}, high = {high.tolist()}: need high > low")
    if mean is None:
        mean = ((low + high) / 2).expand(horizon, action_dim).clone()
    if std is None:
        std = ((high - low) / 2).expand(horizon, action_dim).clone()
    else:
        std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean).clone()
    for _ in range(iterations):
        noise = torch.randn(
            (candidates, horizon, action_dim),
            generator=generator,
            dtype=mean.dtype,
            device=mean.device,
        )
        actions = torch.maximum(torch.minimum(mean + std * noise, high), low)  # [N, H, A]
        returns = objective(actions)
        if returns.shape != (candidates,):
            raise ValueError(
                f"the objective returned shape {tuple(returns.shape)} for {candidates} candidates;"
                f" it must map [N, H, A] to [N]"
            )
        elite = actions[returns.topk(top_k).indices]  # [K, H, A]
        mean = elite.mean(0)
        std = elite.std(0, unbiased=False).clamp_min(min_std)
    return mean
