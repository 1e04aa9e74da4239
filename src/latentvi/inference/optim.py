"""One optimizer for a VI problem: Adam on dense parameters, lazy Adam on the rows of sparse tables.

Per-datapoint VI keeps q_i's parameters in ``nn.Embedding(sparse=True)`` tables
(:class:`~latentvi.inference.LocalGaussians`); a minibatch's gradient touches only its own rows,
and stochastic VI (Hoffman et al. 2013) updates only those. :class:`LazyAdam` does both kinds of
update in one ``step``: Adam (Kingma & Ba 2015) on every dense parameter — θ, an encoder's φ, a
baseline — and ``torch.optim.SparseAdam``'s lazy row update on every row-sparse one. One optimizer
rather than two matters at the small sizes of this library, where a ``step`` is dominated by fixed
per-call costs rather than arithmetic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer
from torch.optim.adam import adam

__all__ = ["LazyAdam"]

# The registries behind torch.optim.optimizer.register_optimizer_step_{pre,post}_hook.
_GLOBAL_PRE_HOOKS = getattr(torch_optimizer, "_global_optimizer_pre_hooks", {})
_GLOBAL_POST_HOOKS = getattr(torch_optimizer, "_global_optimizer_post_hooks", {})


def _with_step_hooks(step: Callable) -> Callable:
    """``torch.optim``'s wrapper of ``Optimizer.step`` — the step hooks — minus its profiler label.

    ``torch.optim.Optimizer`` wraps every optimizer class's ``step`` so that it runs the global
    and per-optimizer step pre/post hooks inside ``torch.autograd.profiler.record_function``. At
    minibatch sizes that label costs more than a whole lazy update (about 55 µs per step in
    ``benchmarks/bench_vi_pyro.py``, against 5 µs for a warm loop: it is slow when cold). This
    wrapper runs the same hooks in the same order and marks ``step`` as wrapped (``hooked``), so
    ``torch.optim`` does not add its own; the step simply has no label in profiler traces.
    """

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        self = args[0]
        for pre_hook in (*_GLOBAL_PRE_HOOKS.values(), *self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"{step} pre-hooks must return None or (new_args, new_kwargs), got "
                        f"{result!r}"
                    )
                args, kwargs = result
        out = step(*args, **kwargs)
        for post_hook in (*self._optimizer_step_post_hooks.values(), *_GLOBAL_POST_HOOKS.values()):
            post_hook(self, args, kwargs)
        return out

    wrapper.hooked = True  # torch.optim.Optimizer._patch_step_function: already wrapped
    return wrapper


class LazyAdam(torch.optim.Optimizer):
    """Adam for dense gradients, lazy Adam for row-sparse ones (``nn.Embedding(sparse=True)``).

    * A parameter with a dense gradient gets ``torch.optim.Adam``'s update (the same functional
      kernel, fused where PyTorch has one: see ``fused``), and the same state: ``step`` (a
      tensor), ``exp_avg``, ``exp_avg_sq``.
    * A parameter with a row-sparse gradient g gets ``torch.optim.SparseAdam``'s update. For the
      rows r present in g (duplicates summed), with t the number of steps this parameter took::

          m_r ← m_r + (1 − β₁)(g_r − m_r),   v_r ← v_r + (1 − β₂)(g_r² − v_r)
          θ_r ← θ_r − lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m_r / (√v_r + ε)

      Every other row, and its moments, is left bitwise as it was. The rows are gathered,
      updated with a few dense kernels and scattered back — no sparse-tensor arithmetic, no sort.
      Duplicate rows (an index repeated in the minibatch) are summed by adding the gradient into
      a zero table the size of the parameter and reading it back, so every copy of a row computes
      the same update. State: ``step`` (an int), ``exp_avg``, ``exp_avg_sq``; the zero table is
      a work buffer, kept out of the state dict.

    Both updates are checked against ``torch.optim.Adam`` and ``torch.optim.SparseAdam`` in the
    tests. Parameters without a gradient are skipped (their step count does not advance).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate (> 0).
        betas: (β₁, β₂), each in [0, 1).
        eps: ε added to the denominator (≥ 0).
        fused: use PyTorch's fused Adam kernel for the dense parameters; None (default) uses it
            when every parameter is a real floating-point tensor on the CPU or a CUDA device.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "fused": fused}
        self._row_sums: dict[Tensor, Tensor] = {}  # work buffers of the row update, all zeros
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_row_sums", {})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for param in group["params"]:
            if not param.is_floating_point():
                raise ValueError(
                    f"params must be real floating-point tensors, got one of dtype {param.dtype}"
                )
        if group["fused"] is None:
            group["fused"] = all(p.device.type in ("cpu", "cuda") for p in group["params"])

    @_with_step_hooks
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                state = self.state[param]
                if grad.is_sparse:
                    self._row_update(param, grad, state, group)
                    continue
                if not state:
                    device = param.device if group["fused"] else None
                    state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format
                    )
                params.append(param)
                grads.append(grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if params:
                _adam(group, params, grads, exp_avgs, exp_avg_sqs, steps)
        return loss

    def _row_update(self, param: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        """SparseAdam's update of the rows of ``param`` present in the row-sparse ``grad``."""
        if grad.sparse_dim() != 1:
            raise ValueError(
                f"LazyAdam updates sparse gradients row by row (nn.Embedding(sparse=True)), got "
                f"one with {grad.sparse_dim()} sparse dimensions"
            )
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] = t = state["step"] + 1
        if grad.is_coalesced():  # one entry per row already
            rows, gradient = grad.indices()[0], grad.values()  # (R), (R, *W)
        else:  # e.g. an embedding's gradient: one entry per lookup, repeated rows included
            rows = grad._indices()[0]
            row_sums = self._row_sums.get(param)
            if row_sums is None or row_sums.shape != param.shape:
                row_sums = self._row_sums[param] = torch.zeros_like(param)
            row_sums.index_add_(0, rows, grad._values())
            gradient = row_sums.index_select(0, rows)  # every copy of a row holds the row's sum
            row_sums.index_fill_(0, rows, 0)
        if rows.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m = exp_avg.index_select(0, rows).lerp_(gradient, 1 - beta1)
        v = exp_avg_sq.index_select(0, rows).lerp_(gradient.square(), 1 - beta2)
        exp_avg.index_copy_(0, rows, m)  # copies of a row write the same values
        exp_avg_sq.index_copy_(0, rows, v)
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        denominator = v.sqrt_().add_(group["eps"])
        updated = param.index_select(0, rows).addcdiv_(m, denominator, value=-step_size)
        param.index_copy_(0, rows, updated)


_FUSED_ADAM = getattr(torch, "_fused_adam_", None)


def _adam(group: dict, params, grads, exp_avgs, exp_avg_sqs, steps) -> None:
    """torch.optim.Adam's update of the dense parameters of one group.

    Where the group is fused and its tensors share one device and dtype, PyTorch's fused kernel is
    called directly — the kernel ``torch.optim.Adam(fused=True)`` runs, without the per-call
    regrouping around it, which costs more than the kernel at these sizes. Otherwise the public
    functional ``torch.optim.adam.adam``.
    """
    beta1, beta2 = group["betas"]
    kinds = {(param.device, param.dtype) for param in params}
    if group["fused"] and _FUSED_ADAM is not None and len(kinds) == 1:
        torch._foreach_add_(steps, 1)
        _FUSED_ADAM(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        return
    adam(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        fused=group["fused"] or None,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=0.0,
        eps=group["eps"],
        maximize=False,
    )
