"""Per-datapoint (local) variational posteriors: one q_i(z) = N(μ_i, Σ_i) per training example.

This is the "no amortization" column of the lecture: every x_i gets its own variational parameters,
and stochastic variational inference (Hoffman, Blei, Wang & Paisley 2013) updates only the q_i of
the examples in the current minibatch. The parameters live in one ``nn.Embedding(sparse=True)``
table, so a minibatch's backward pass produces a sparse gradient over its rows alone; optimize the
table with a sparse Adam — :class:`SparseRowAdam` here, or ``torch.optim.SparseAdam`` (the same
update; see :func:`latentvi.inference.make_optimizers`) — which leaves every other row, and its Adam
moments, untouched.

Row layout of the table, for latent dimension Z::

    [ μ (Z) | raw diagonal scale (Z) | strictly-lower entries of L (Z(Z-1)/2, full covariance only) ]

The diagonal of the scale (or of the Cholesky factor L, Σ = L Lᵀ) is ``softplus(raw) + min_scale``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from latentvi.distributions import inverse_softplus, positive_scale

__all__ = ["LocalGaussians", "SparseRowAdam"]


class LocalGaussians(nn.Module):
    """A table of Gaussians q_i(z), one per training example, looked up by index.

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
    ``N × (2Z + Z(Z-1)/2)`` numbers (plus twice that for SparseAdam's moments): 60 000 × 40 floats
    for a diagonal Z = 20.
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
        for name, value in (("num_points", num_points), ("latent_dim", latent_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
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

    def _check_index(self, index: Tensor) -> Tensor:
        if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
            raise ValueError(
                f"index must be an integer tensor of example indices, got "
                f"{getattr(index, 'dtype', type(index).__name__)}"
            )
        if index.numel():
            low, high = (bound.item() for bound in torch.aminmax(index))
            if low < 0 or high >= self.num_points:
                raise ValueError(
                    f"index must lie in [0, num_points) = [0, {self.num_points}), got values in "
                    f"[{low}, {high}]"
                )
        return index

    def forward(self, index: Tensor) -> Distribution:
        """q_i for the examples ``index [*B]``: batch ``[*B]``, event ``[Z]``."""
        # F.embedding on the table's weight: the module call's hook machinery is skipped.
        rows = F.embedding(self._check_index(index), self.table.weight, sparse=True)  # (*B, W)
        return self._distribution(rows)

    def _distribution(self, rows: Tensor) -> Distribution:
        z = self.latent_dim
        loc = rows[..., :z]
        scale = positive_scale(rows[..., z : 2 * z], self.min_scale)
        # Valid by construction (softplus scales, lower-triangular L): skip argument validation.
        if not self.full_covariance:
            return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        entries = torch.cat([scale, rows[..., 2 * z :]], -1)  # (*B, Z(Z+1)/2)
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


class SparseRowAdam(torch.optim.Optimizer):
    """Lazy Adam for row-sparse gradients (``nn.Embedding(sparse=True)``): ``torch.optim.SparseAdam``'s
    update, written with dense row gathers instead of sparse-tensor arithmetic.

    For the rows r present in the gradient g (after summing duplicates), with t the number of
    steps taken by this parameter:

        m_r ← m_r + (1 − β₁)(g_r − m_r),   v_r ← v_r + (1 − β₂)(g_r² − v_r)
        θ_r ← θ_r − lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m_r / (√v_r + ε)

    Every other row, and its moments, is left exactly as it was. This is the update of
    ``torch.optim.SparseAdam`` (checked against it in the tests); it costs about half as much per
    step for minibatch-sized gradients because it runs a dozen small dense kernels (``index_select``,
    ``lerp_``, ``index_copy_``, ``index_add_``) instead of building sparse tensors.

    Args:
        params: parameters whose gradients are sparse with one sparse dimension (table rows).
        lr: learning rate.
        betas: (β₁, β₂).
        eps: ε added to the denominator.
    """

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not grad.is_sparse or grad.sparse_dim() != 1:
                    raise ValueError(
                        "SparseRowAdam needs row-sparse gradients (nn.Embedding(sparse=True)); "
                        "optimize dense parameters with torch.optim.Adam"
                    )
                grad = grad.coalesce()  # duplicate rows summed: the update is non-linear
                rows, values = grad.indices()[0], grad.values()  # (R), (R, *W)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                if rows.numel() == 0:
                    continue
                exp_avg, exp_avg_sq, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
                v = exp_avg_sq.index_select(0, rows).lerp_(values * values, 1 - beta2)
                exp_avg.index_copy_(0, rows, m)
                exp_avg_sq.index_copy_(0, rows, v)
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                update = m.div_(v.sqrt_().add_(group["eps"]))
                param.index_add_(0, rows, update, alpha=-step_size)
        return loss
