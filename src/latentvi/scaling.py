"""Scale-robust targets: symlog, two-hot buckets and a percentile return normalizer.

The three tools with which DreamerV3 (Hafner, Pasukonis, Ba & Lillicrap 2023, *Mastering Diverse
Domains through World Models*, §3 "Robust predictions" and "Actor learning") learns with one set
of hyperparameters across tasks whose rewards differ by orders of magnitude:

* :func:`symlog` / :func:`symexp` — ``sign(x)·log(1 + |x|)`` and its inverse: the identity near 0,
  logarithmic for large magnitudes, defined for negative values.
* :class:`TwoHotSymlog` — a categorical over ``K`` buckets evenly spaced on the symlog scale (V3:
  255 buckets from −20 to 20). A scalar y is encoded as the *two-hot* vector that puts weight on
  the two buckets around ``symlog(y)`` in proportion to closeness (:func:`twohot`), so the
  expected bucket is exactly ``symlog(y)``; a prediction is ``symexp(Σ_k p_k b_k)`` and the loss
  is the cross-entropy ``−Σ_k twohot(symlog y)_k log p_k``. Gradients then do not grow with the
  size of the target, and the head can hold a bimodal value without averaging it. The decoding
  (expectation in symlog space, then symexp) is that of the paper's published code.
* :class:`PercentileNormalizer` — the return scale ``S = EMA(Per(R, 95) − Per(R, 5))`` over batches
  (decay 0.99, averages starting at 0 as in the paper's code, no bias correction), by which the
  actor divides its advantages with a floor: ``A / max(1, S)``. Large returns are scaled down to
  about [0, 1]; small (sparse, noisy) returns are *not* scaled up, so their noise is not amplified.
  With that, one fixed entropy scale (V3: 3·10⁻⁴) suits every task.

These are generic (no RL in them) and sit beside :mod:`latentvi.nn`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = [
    "PercentileNormalizer",
    "TwoHotSymlog",
    "symexp",
    "symlog",
    "twohot",
    "twohot_bins",
]

BINS = 255  # DreamerV3's bucket count
LIMIT = 20.0  # buckets span [−LIMIT, LIMIT] on the symlog scale (|y| up to e^20 ≈ 4.9e8)


def symlog(x: Tensor) -> Tensor:
    """``sign(x)·log(1 + |x|)`` elementwise (DreamerV3 eq. 9)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """``sign(x)·(exp(|x|) − 1)``: the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(bins: int = BINS, limit: float = LIMIT, *, dtype=None, device=None) -> Tensor:
    """``[bins]`` bucket centres evenly spaced on ``[−limit, limit]`` (V3: 255 on [−20, 20]),
    symmetric about 0."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins = {bins!r} is invalid: use an integer >= 2 (DreamerV3: 255)")
    if not limit > 0:
        raise ValueError(f"limit = {limit!r} is invalid: use a positive bound (DreamerV3: 20)")
    grid = torch.linspace(-limit, limit, bins, dtype=dtype, device=device)
    return (grid - grid.flip(0)) / 2  # exactly symmetric: the middle bucket (odd K) is exactly 0


def twohot(values: Tensor, bins: Tensor) -> Tensor:
    """``[*B] -> [*B, K]``: the two-hot encoding of ``values`` on the sorted grid ``bins [K]``.

    A value between buckets k and k+1 puts ``(b_{k+1} − y) / (b_{k+1} − b_k)`` on k and the rest
    on k+1 (so ``Σ_k w_k b_k = y``); a value on a bucket is one-hot there; values beyond the grid
    are clipped to its ends."""
    bins = bins.to(values.dtype)
    clipped = values.clamp(bins[0], bins[-1])
    upper = torch.searchsorted(bins, clipped.detach().contiguous(), right=True)
    upper = upper.clamp(1, bins.shape[0] - 1)
    lower = upper - 1
    low, high = bins[lower], bins[upper]
    weight_high = (clipped - low) / (high - low)
    encoding = torch.zeros(*values.shape, bins.shape[0], dtype=values.dtype, device=values.device)
    encoding.scatter_(-1, lower.unsqueeze(-1), (1.0 - weight_high).unsqueeze(-1))
    encoding.scatter_add_(-1, upper.unsqueeze(-1), weight_high.unsqueeze(-1))
    return encoding


class TwoHotSymlog(Distribution):
    """A scalar prediction as a categorical over symlog-spaced buckets (DreamerV3 §3).

    ``logits [*B, K]`` -> batch ``[*B]``, event ``[]``. ``mean`` (and ``mode``) is
    ``symexp(Σ_k softmax(logits)_k b_k)``; ``log_prob(y) = Σ_k twohot(symlog y)_k log p_k`` (a
    negative cross-entropy, not a density: minimize its negative).
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = False

    def __init__(self, logits: Tensor, bins: Tensor | None = None) -> None:
        if bins is None:
            bins = twohot_bins(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        if logits.dim() < 1 or logits.shape[-1] != bins.shape[0]:
            raise ValueError(
                f"logits have shape {tuple(logits.shape)} but there are {bins.shape[0]} buckets: "
                "pass [*B, K] with K the number of buckets"
            )
        self.logits, self.bins = logits, bins.to(logits.dtype)
        super().__init__(batch_shape=logits.shape[:-1], validate_args=False)

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, -1)

    @property
    def mean(self) -> Tensor:
        return symexp((self.probs * self.bins).sum(-1))

    @property
    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, value: Tensor) -> Tensor:
        target = twohot(symlog(value.to(self.logits.dtype)), self.bins)
        return (target * torch.log_softmax(self.logits, -1)).sum(-1)


class PercentileNormalizer(nn.Module):
    """DreamerV3's return scale: EMAs of the 5th and 95th percentiles of each batch of returns.

    :meth:`update` moves ``low`` and ``high`` (buffers, saved with the module; both start at 0)
    by ``low ← decay·low + (1 − decay)·Per(x, 5)`` (and the same for ``high`` at 95) and returns
    :attr:`scale` ``= max(floor, high − low)``; the caller divides its advantages by it. The
    percentiles are those of ``torch.quantile`` (linear interpolation, as ``np.percentile``).
    """

    def __init__(
        self, decay: float = 0.99, low: float = 0.05, high: float = 0.95, floor: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay = {decay!r} is invalid: use a value in [0, 1), e.g. 0.99")
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"low, high = {low!r}, {high!r} are invalid: use quantiles 0 <= low < high <= 1"
            )
        if not floor > 0:
            raise ValueError(f"floor = {floor!r} is invalid: use a positive floor, e.g. 1")
        self.decay, self.quantiles, self.floor = decay, (low, high), floor
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, values: Tensor) -> Tensor:
        """Fold the percentiles of ``values`` (any shape, detached) in; return the new scale."""
        flat = values.detach().reshape(-1).to(self.low.dtype)
        if flat.numel() == 0:
            raise ValueError("values is empty: pass at least one return")
        q = torch.quantile(flat, torch.tensor(self.quantiles, dtype=flat.dtype, device=flat.device))
        self.low.mul_(self.decay).add_((1.0 - self.decay) * q[0])
        self.high.mul_(self.decay).add_((1.0 - self.decay) * q[1])
        return self.scale

    @property
    def scale(self) -> Tensor:
        """``max(floor, high − low)`` (a 0-dim tensor)."""
        return (self.high - self.low).clamp_min(self.floor)
