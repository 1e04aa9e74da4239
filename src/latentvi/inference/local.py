"""Per-datapoint (local) variational posteriors: one q_i(z) = N(μ_i, Σ_i) per training example.

This is the "no amortization" column of the lecture: every x_i gets its own variational parameters,
and stochastic variational inference (Hoffman, Blei, Wang & Paisley 2013) updates only the q_i of
the examples in the current minibatch. The parameters live in one ``nn.Embedding(sparse=True)``
table, so a minibatch's backward pass produces a sparse gradient over its rows alone; optimize the
table with a lazy Adam — :class:`~latentvi.inference.LazyAdam`, or ``torch.optim.SparseAdam`` (the
same update; see :func:`latentvi.inference.make_optimizers`) — which leaves every other row, and
its Adam moments, untouched.

Row layout of the table, for latent dimension Z::

    [ μ (Z) | raw diagonal scale (Z) | strictly-lower entries of L (Z(Z-1)/2, full covariance only) ]

The diagonal of the scale (or of the Cholesky factor L, Σ = L Lᵀ) is ``softplus(raw) + min_scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from latentvi.config import check_positive_int
from latentvi.distributions import DiagonalGaussian, inverse_softplus, positive_scale

__all__ = ["LocalGaussians"]


class LocalGaussians(nn.Module):
    """A table of Gaussians q_i(z), one per training example, looked up by index: the lecture's
    per-datapoint variational inference (as in Hoffman, Blei, Wang & Paisley 2013's local
    variational parameters).

    Args:
        num_points: number of training examples N (rows of the table).
        latent_dim: latent dimension Z.
        full_covariance: False: q_i = N(μ_i, diag σ_i²) (an ``Independent(Normal)``); True:
            q_i = N(μ_i, L_i L_iᵀ) (a ``MultivariateNormal`` with ``scale_tril=L_i``).
        init_loc: initial means ``[N, Z]``; zeros (the prior's mean) when None.
        init_scale: initial standard deviation of every coordinate (off-diagonals start at 0).
        min_scale: floor added to the softplus scales.
        dtype, device: of the table (default dtype and CPU when None).

    ``forward(index [*B]) -> q`` with batch shape ``[*B]`` and event shape ``[Z]``. Memory is
    ``N × (2Z + Z(Z-1)/2)`` numbers (plus twice that for the Adam moments, three times with
    :class:`~latentvi.inference.LazyAdam`'s work table): 60 000 × 40 floats for a diagonal Z = 20.
    """

    def __init__(
        self,
        num_points: int,
        latent_dim: int,
        full_covariance: bool = False,
        init_loc: Tensor | None = None,
        init_scale: float = 1.0,
        min_scale: float = 1e-5,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_points", num_points)
        check_positive_int("latent_dim", latent_dim)
        if not init_scale > min_scale:
            raise ValueError(
                f"init_scale must be greater than min_scale = {min_scale}, got {init_scale!r}"
            )
        dtype = dtype or torch.get_default_dtype()
        z = latent_dim
        num_offdiagonal = z * (z - 1) // 2 if full_covariance else 0
        weight = torch.zeros(num_points, 2 * z + num_offdiagonal, dtype=dtype, device=device)
        if init_loc is not None:
            init_loc = torch.as_tensor(init_loc, dtype=dtype, device=device)
            if init_loc.shape != (num_points, z):
                raise ValueError(
                    f"init_loc must have shape [num_points, latent_dim] = [{num_points}, {z}], "
                    f"got {tuple(init_loc.shape)}"
                )
            weight[:, :z] = init_loc
        weight[:, z : 2 * z] = inverse_softplus(float(init_scale), min_scale).item()
        self.table = nn.Embedding.from_pretrained(weight, freeze=False, sparse=True)
        self.num_points, self.latent_dim = num_points, latent_dim
        self.full_covariance, self.min_scale = full_covariance, min_scale
        if full_covariance:
            # Flat positions in a Z×Z matrix of [diagonal..., strictly lower...], in row layout order.
            rows, cols = torch.tril_indices(z, z, offset=-1, device=device)
            diagonal = torch.arange(z, device=device) * (z + 1)
            self.register_buffer("_tril_positions", torch.cat([diagonal, rows * z + cols]), False)

    def extra_repr(self) -> str:
        return (
            f"num_points={self.num_points}, latent_dim={self.latent_dim}, "
            f"full_covariance={self.full_covariance}"
        )

    def _check_range(self, index: Tensor) -> None:
        if index.numel():
            low, high = torch.stack(torch.aminmax(index)).tolist()  # one host synchronization
            if low < 0 or high >= self.num_points:
                raise ValueError(
                    f"index must lie in [0, num_points) = [0, {self.num_points}), got values in "
                    f"[{low}, {high}]"
                )

    def forward(self, index: Tensor) -> Distribution:
        """q_i for the examples ``index [*B]``: batch ``[*B]``, event ``[Z]``."""
        if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.dtype.is_complex:
            raise ValueError(
                f"index must be an integer tensor of example indices, got "
                f"{getattr(index, 'dtype', type(index).__name__)}"
            )
        weight = self.table.weight
        if not weight.is_cpu:
            # An out-of-range index is a device-side assert on accelerators: check it first.
            self._check_range(index)
        try:
            # F.embedding on the table's weight: the module call's hook machinery is skipped.
            rows = F.embedding(index, weight, sparse=True)  # (*B, W)
        except IndexError:
            # On the CPU the lookup itself checks the range (no extra pass, no synchronization);
            # turn its message into one that says which indices are valid.
            self._check_range(index)
            raise
        return self._distribution(rows)

    def _distribution(self, rows: Tensor) -> Distribution:
        z = self.latent_dim
        # One split (its gradient is one concatenation), not a slice per part. The parts are
        # strided views of the rows: a contiguous loc lets the kernels that use it vectorize
        # (positive_scale makes its own input contiguous).
        loc, raw_scale, *offdiagonal = rows.split([z, z, rows.shape[-1] - 2 * z], -1)
        loc = loc.contiguous()
        scale = positive_scale(raw_scale, self.min_scale)
        # Valid by construction (softplus scales, lower-triangular L): skip argument validation.
        if not self.full_covariance:
            return DiagonalGaussian(loc, scale, validate_args=False)
        entries = torch.cat([scale, *offdiagonal], -1)  # (*B, Z(Z+1)/2)
        flat = entries.new_zeros(*entries.shape[:-1], z * z)
        scale_tril = flat.index_copy(-1, self._tril_positions, entries).unflatten(-1, (z, z))
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def all(self) -> Distribution:
        """Every q_i at once: batch ``[N]``, event ``[Z]`` (differentiable, dense)."""
        return self._distribution(self.table.weight)

    @property
    def loc(self) -> Tensor:
        """The means μ ``[N, Z]`` (a view of the table)."""
        return self.table.weight[:, : self.latent_dim]
