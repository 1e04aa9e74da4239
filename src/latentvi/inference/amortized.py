"""Amortized variational posteriors: q_φ(z|x) computed by a network from x itself.

Amortized inference (Kingma & Welling 2014; the lecture's "amortized variational inference") trades
the per-datapoint tables of :mod:`latentvi.inference.local` for one encoder whose weights φ are
shared by every example: memory no longer grows with N, a new x gets its q in one forward pass, and
the price is the *amortization gap* — the encoder's q(z|x) can be worse than the best q in its family
for that x (see :mod:`latentvi.inference.refine`).

An encoder is any module with ``encoder(x [*B, D]) -> q`` (batch ``[*B]``, event ``[Z]``); the
standard one is :class:`latentvi.nn.DiagonalGaussianEncoder` (an MLP and a Gaussian head),
re-exported here as :data:`GaussianEncoder`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.distributions import Distribution

from latentvi.nn import DiagonalGaussianEncoder

__all__ = ["Encoder", "GaussianEncoder"]


@runtime_checkable
class Encoder(Protocol):
    """q_φ(z|x): ``x [*B, D] -> Distribution`` with batch ``[*B]`` and event ``[Z]``."""

    def __call__(self, x: Tensor) -> Distribution: ...


GaussianEncoder = DiagonalGaussianEncoder
"""The default encoder: ``GaussianEncoder(data_dim, latent_dim, hidden=(64,), activation=nn.Tanh)``."""
