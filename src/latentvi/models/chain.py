"""A two-block latent ``z = [z₁, z₂]`` with density q(z₁) q(z₂|z₁) (or p(z₂) p(z₁|z₂)).

Hierarchical models (the two-stochastic-layer VAE of Burda et al. 2016) need a distribution over the
concatenated latent so that the bounds in :mod:`latentvi.bounds` apply unchanged: ``rsample``
draws the first block and then the second given the first; ``log_prob`` adds the two terms.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["GaussianChain"]


class GaussianChain(Distribution):
    """The chain ``first(a) · conditional(a)(b)`` over ``z = [a, b]`` (or ``[b, a]`` if ``reverse``).

    Args:
        first: the distribution of the first block ``a``, batch ``[*B]``, event ``[A]``.
        conditional: ``a [*S, *B, A]`` → the distribution of ``b``, batch ``[*S, *B]``, event ``[Bz]``.
        reverse: store the blocks as ``[b, a]``: a prior p(z₂) p(z₁|z₂) over the same layout
            ``[z₁, z₂]`` as the posterior q(z₁|x) q(z₂|z₁).
    """

    arg_constraints: typing.ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        first: Distribution,
        conditional: Callable[[Tensor], Distribution],
        reverse: bool = False,
    ) -> None:
        self.first, self.conditional, self.reverse = first, conditional, reverse
        probe = conditional(first.mean)
        self._sizes = (first.event_shape[0], probe.event_shape[0])
        event = torch.Size([sum(self._sizes)])
        super().__init__(first.batch_shape, event, validate_args=False)

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a_size, b_size = self._sizes
        if self.reverse:
            b, a = z.split([b_size, a_size], dim=-1)
        else:
            a, b = z.split([a_size, b_size], dim=-1)
        return a, b

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.reverse else [a, b], dim=-1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        a = self.first.rsample(sample_shape)
        return self._join(a, self.conditional(a).rsample())

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self._split(value)
        return self.first.log_prob(a) + self.conditional(a).log_prob(b)

    def mean_path(self) -> Tensor:
        """A point summary: the first block's mean, then the second's conditional mean given it.

        (Not the chain's mean unless the conditional mean is linear in the first block.)
        """
        a = self.first.mean
        return self._join(a, self.conditional(a).mean)
