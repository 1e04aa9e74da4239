"""λ-returns: the value targets of Dreamer's critic and the objective of its actor.

The λ-return (Sutton & Barto, *Reinforcement Learning: An Introduction*, 2nd ed. 2018, §12.1) mixes
n-step returns with weights (1 − λ) λ^{n−1}; along a finite imagined trajectory it is the backward
recursion used by Dreamer (Hafner, Lillicrap, Ba & Norouzi, *Dream to Control*, 2020, eq. 6)::

    G^λ_t = r_t + γ_t ((1 − λ) v_{t+1} + λ G^λ_{t+1}),     G^λ_H = v_H,

for t = H−1, …, 0, where ``r_t`` is the reward of the step from state t to t+1, ``v_t`` the value of
state t and ``γ_t`` the discount of that step (γ times the probability that the episode continues;
0 after a terminal state). λ = 1 gives the discounted Monte Carlo return of the H rewards with the
tail bootstrapped from v_H; λ = 0 gives one-step TD targets r_t + γ_t v_{t+1}.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["discounted_weights", "lambda_return"]


def lambda_return(rewards: Tensor, values: Tensor, discounts: Tensor | float, lam: float) -> Tensor:
    """λ-returns of a trajectory (see the module docstring).

    Args:
        rewards: ``[H, *B]``, reward of step t (state t → t+1).
        values: ``[H+1, *B]``, v(state t) for t = 0..H.
        discounts: ``[H, *B]`` (or a float), γ_t of step t.
        lam: λ in [0, 1].

    Returns:
        ``[H, *B]``: G^λ_t for t = 0..H−1. Differentiable in all tensor inputs.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam = {lam!r} is invalid: use a value in [0, 1]")
    if values.shape[0] != rewards.shape[0] + 1 or values.shape[1:] != rewards.shape[1:]:
        raise ValueError(
            f"values have shape {tuple(values.shape)} and rewards {tuple(rewards.shape)}: values "
            "need one more step than rewards, [H+1, *B] beside [H, *B]"
        )
    discounts = torch.as_tensor(discounts, dtype=rewards.dtype, device=rewards.device)
    discounts = discounts.expand_as(rewards)
    # The part of each target that does not depend on later returns, in one vectorized step.
    inputs = rewards + discounts * (1.0 - lam) * values[1:]
    returns = []
    following = values[-1]
    for t in reversed(range(rewards.shape[0])):
        following = inputs[t] + discounts[t] * lam * following
        returns.append(following)
    return torch.stack(returns[::-1])


def discounted_weights(discounts: Tensor) -> Tensor:
    """``[H, *B] -> [H, *B]``: the product of the discounts before each step, ``Π_{s<t} γ_s``
    (1 at t = 0) — the weight Dreamer gives each imagined step in the actor and critic losses,
    so that steps after a likely terminal state count less."""
    ones = torch.ones_like(discounts[:1])
    return torch.cumprod(torch.cat([ones, discounts[:-1]]), 0)
