"""A tiny controlled pixel sequence task for state-space models: a square dot moved by the action.

The dot's top-left corner (row, column) moves by ``speed · a`` with ``a ∈ {−1, 0, 1}²`` each step,
clipped to the frame, so the next frame is a deterministic function of the current position and the
action: a learned latent dynamics model can predict it exactly, open loop, for any horizon. Used by
the RSSM's convergence test and its open-loop benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentvi.config import check_positive_int

__all__ = ["moving_dot"]


def moving_dot(
    steps: int,
    batch: int,
    generator: torch.Generator | None = None,
    size: int = 4,
    frame: int = 16,
    speed: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``batch`` random sequences of ``steps`` frames, in the RSSM alignment
    (:mod:`latentvi.models.ssm`): ``(obs uint8 [T, B, 1, frame, frame], actions [T, B, 2],
    rewards [T, B])`` with ``actions[t]`` the move that led to frame t (zeros at t = 0) and
    ``rewards[t] = −‖position_t − centre‖ / frame``. Start positions and moves are uniform."""
    for name, value in (("steps", steps), ("batch", batch), ("size", size), ("frame", frame)):
        check_positive_int(name, value)
    if size >= frame:
        raise ValueError(f"size = {size} is invalid: the dot must be smaller than frame = {frame}")
    last = frame - size
    position = torch.randint(0, last + 1, (batch, 2), generator=generator)
    moves = torch.randint(-1, 2, (steps, batch, 2), generator=generator)
    moves[0] = 0
    pixels = torch.arange(frame)
    centre = last / 2
    frames, rewards = [], []
    for t in range(steps):
        position = (position + speed * moves[t]).clamp(0, last)
        inside = (pixels >= position[:, :, None]) & (
            pixels < position[:, :, None] + size
        )  # (B, 2, F)
        image = inside[:, 0, :, None] & inside[:, 1, None, :]  # (B, F, F)
        frames.append(image.to(torch.uint8).mul_(255).unsqueeze(1))
        rewards.append(-(position.float() - centre).norm(dim=-1) / frame)
    return torch.stack(frames), moves.float(), torch.stack(rewards)
