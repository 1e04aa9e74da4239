"""A variational inference problem and a lean loop that fits it, for small (often exact) models.

:class:`VariationalProblem` bundles a model (``prior``, ``likelihood``; optionally ``log_marginal``),
an approximate posterior — a :class:`~latentvi.inference.LocalGaussians` table (per-datapoint VI,
Hoffman et al. 2013) or an encoder ``x -> q(z|x)`` (amortized VI, Kingma & Welling 2014) — and a
gradient estimator from :mod:`latentvi.gradients`. Its ``loss(batch) -> (loss, metrics)`` is the
project's training contract, so the one training loop can run it; :func:`fit_vi` is a smaller loop
for in-memory data sets: ``randperm`` minibatches, one :class:`~latentvi.inference.LazyAdam` (lazy
row updates on the local tables, Adam on the rest), an exact log p(x) curve when the model has one.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from latentvi.bounds import check_num_samples, elbo_kl
from latentvi.config import check_positive_int
from latentvi.gradients import reparameterized_elbo, score_function_elbo
from latentvi.inference.local import LocalGaussians
from latentvi.inference.optim import LazyAdam
from latentvi.optim_step import optimizer_step
from latentvi.progress import progress_bar

__all__ = ["Estimator", "VariationalProblem", "fit_vi", "make_optimizers"]


Estimator = Callable[..., Tensor]
"""``estimator(x, q, prior, likelihood, num_samples) -> surrogate [*B]`` whose value is the ELBO."""

ESTIMATORS: dict[str, Estimator] = {
    "reparameterization": reparameterized_elbo,
    "score_function": score_function_elbo,
}


class VariationalProblem(nn.Module):
    """Maximize the ELBO of ``model`` over θ and over an approximate posterior q.

    Args:
        model: has ``prior`` (p(z), event ``[Z]``), ``likelihood(z) -> p(x|z)`` and ``data_dim``;
            θ are its parameters. ``log_marginal(x)`` (exact log p(x)) is used for evaluation.
        posterior: a :class:`LocalGaussians` table (called with the batch's indices) or an encoder
            module called with the batch's data, ``x [B, D] -> q(z|x)`` (batch ``[B]``, event
            ``[Z]``), e.g. :class:`latentvi.nn.DiagonalGaussianEncoder`.
        estimator: ``"reparameterization"`` (:func:`latentvi.gradients.reparameterized_elbo`),
            ``"score_function"`` (:func:`latentvi.gradients.score_function_elbo`) or a callable
            with the same signature ``(x, q, prior, likelihood, num_samples) -> surrogate [B]``.
        num_samples: z samples per example and step.
        baseline: a control variate for the score function (e.g. ``MovingAverageBaseline``); a
            module's parameters are trained with the rest.

    ``loss((index [B], x [B, D])) -> (−mean ELBO surrogate, {"elbo", "loss/neg_elbo"})``; the
    metrics are detached scalar tensors in nats per example.
    """

    def __init__(
        self,
        model: nn.Module,
        posterior: nn.Module,
        estimator: Literal["reparameterization", "score_function"]
        | Estimator = "reparameterization",
        num_samples: int = 1,
        baseline: Any = None,
    ) -> None:
        super().__init__()
        self.model, self.posterior = model, posterior
        self.num_samples = check_num_samples(num_samples)
        self.baseline = baseline  # a module (learned baseline) is registered, so it is trained
        self.local = isinstance(posterior, LocalGaussians)
        self.estimator_name, self.estimator = _resolve_estimator(estimator, baseline)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator_name}, num_samples={self.num_samples}"

    def approximate_posterior(self, index: Tensor, x: Tensor) -> Distribution:
        """q for a batch: ``posterior(index)`` for local tables, ``posterior(x)`` for encoders."""
        return self.posterior(index) if self.local else self.posterior(x)

    def loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``batch = (index [B], x [B, D])`` -> (the scalar loss −mean ELBO, metrics)."""
        index, x = batch
        if index.shape[:1] != x.shape[:1]:
            raise ValueError(
                f"batch = (index, x) must hold one index per row of x, got index "
                f"{tuple(index.shape)} and x {tuple(x.shape)}"
            )
        q = self.posterior(index) if self.local else self.posterior(x)
        model = self.model
        surrogate = self.estimator(x, q, model.prior, model.likelihood, self.num_samples)  # (B)
        elbo = surrogate.mean()
        loss = -elbo
        return loss, {"elbo": elbo.detach(), "loss/neg_elbo": loss.detach()}

    @torch.no_grad()
    def elbo(self, x: Tensor, num_samples: int = 1, chunk_size: int = 4096) -> Tensor:
        """Monte Carlo ELBO (KL analytic where registered) of every example: ``[N, D] -> [N]``.

        Example ``i`` of ``x`` is training example ``i`` for a local table. Evaluated in chunks of
        ``chunk_size`` examples so memory stays bounded.
        """
        model = self.model
        values = []
        for start in range(0, x.shape[0], chunk_size):
            x_chunk = x[start : start + chunk_size]
            index = torch.arange(start, start + x_chunk.shape[0], device=x.device)
            q = self.approximate_posterior(index, x_chunk)
            values.append(elbo_kl(x_chunk, q, model.prior, model.likelihood, num_samples))
        return torch.cat(values)


def _resolve_estimator(estimator, baseline) -> tuple[str, Estimator]:
    if callable(estimator):
        name = getattr(estimator, "__name__", type(estimator).__name__)
    elif estimator in ESTIMATORS:
        name, estimator = estimator, ESTIMATORS[estimator]
    else:
        raise ValueError(
            f"estimator must be one of {sorted(ESTIMATORS)} or a callable "
            f"(x, q, prior, likelihood, num_samples) -> surrogate, got {estimator!r}"
        )
    if baseline is not None:
        if estimator is not score_function_elbo:
            raise ValueError(
                f"baseline is only used by the score-function estimator, got estimator={name!r}: "
                "drop the baseline or use estimator='score_function'"
            )
        estimator = functools.partial(score_function_elbo, baseline=baseline)
    return name, estimator


def make_optimizers(
    modules: nn.Module | Iterable[nn.Module],
    lr: float,
    sparse_optimizer: type[torch.optim.Optimizer] | None = None,
) -> list[torch.optim.Optimizer]:
    """The optimizers for ``modules``: by default one :class:`LazyAdam` for every parameter.

    :class:`LazyAdam` applies Adam to the dense parameters and the lazy (SparseAdam) row update to
    the sparse embedding tables (local q_i) in a single ``step``. Only parameters with
    ``requires_grad`` are included; an optimizer with nothing to do is left out. Step all of them
    after each backward pass.

    Args:
        modules: the module(s) whose parameters are optimized.
        lr: the learning rate.
        sparse_optimizer: a separate optimizer class for the sparse tables, e.g.
            ``torch.optim.SparseAdam``; the other parameters then get ``torch.optim.Adam`` (fused
            where PyTorch has the kernel). None (default): one :class:`LazyAdam` for everything.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    modules = list(modules)
    if not lr > 0:
        raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
    sparse, dense, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.Embedding) and sub.sparse:
                for parameter in sub.parameters(recurse=False):
                    if parameter.requires_grad and id(parameter) not in seen:
                        seen.add(id(parameter))
                        sparse.append(parameter)
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                dense.append(parameter)
    if sparse_optimizer is None:
        return [LazyAdam(sparse + dense, lr=lr)] if sparse or dense else []
    optimizers: list[torch.optim.Optimizer] = []
    if sparse:
        optimizers.append(sparse_optimizer(sparse, lr=lr))
    if dense:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in dense)
        optimizers.append(torch.optim.Adam(dense, lr=lr, fused=fused or None))
    return optimizers


def _check_data(problem: VariationalProblem, x: Tensor) -> None:
    data_dim = getattr(problem.model, "data_dim", None)
    if not isinstance(x, Tensor) or x.dim() != 2 or (data_dim and x.shape[1] != data_dim):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a [N, D] tensor with D = {data_dim}, got {shape}")
    if problem.local and x.shape[0] != problem.posterior.num_points:
        raise ValueError(
            f"x has {x.shape[0]} rows but the local posterior holds num_points = "
            f"{problem.posterior.num_points}: row i of x must be training example i"
        )


@torch.no_grad()
def _evaluate(problem: VariationalProblem, x: Tensor, eval_samples: int) -> dict[str, float]:
    record = {"elbo": problem.elbo(x, eval_samples).mean().item()}
    if hasattr(problem.model, "log_marginal"):
        record["log_marginal"] = problem.model.log_marginal(x).mean().item()
    return record


def fit_vi(
    problem: VariationalProblem,
    x: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    fit_model: bool = True,
    eval_every: int | None = None,
    eval_samples: int = 10,
    anneal_lr: bool = False,
    callback: Callable[[dict[str, float]], bool | None] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Fit ``problem`` on the in-memory data ``x [N, D]`` by minibatch stochastic VI.

    Each epoch draws one ``torch.randperm(N)`` and walks it in slices of ``batch_size`` (the last
    partial slice is dropped); per step: ``problem.loss``, backward, and the optimizers of
    :func:`make_optimizers` — lazy row updates on the local tables, Adam on θ, encoder and
    baseline — at learning rate ``lr``. With ``fit_model=False`` θ is frozen
    (its ``requires_grad`` is switched off for the fit and restored after). With ``anneal_lr`` the
    learning rate follows a cosine from ``lr`` down to 0 at the last step — decreasing step sizes,
    as stochastic VI's convergence needs (Robbins–Monro; Hoffman et al. 2013) — so the fit ends at
    an optimum instead of jittering around it.

    Every ``eval_every`` steps (and at step 0 and the end; only those two when None) a record is
    appended: ``step``, ``elbo`` (mean Monte Carlo ELBO over ``x`` with ``eval_samples`` draws),
    ``log_marginal`` (exact mean log p(x) under the current θ, when the model has it),
    ``train_elbo`` (mean of the training surrogates since the last record; absent at step 0) and
    ``seconds``. All in nats per example. ``callback(record)`` returning True stops early.
    Each step is :func:`latentvi.optim_step.optimizer_step`: a non-finite loss or gradient
    raises :class:`~latentvi.optim_step.NonFiniteError` before any parameter moves.

    Randomness (minibatch order, z draws) is seeded by ``seed`` inside a forked RNG, so the
    caller's global RNG state is left as it was.

    Returns:
        The list of records.
    """
    _check_data(problem, x)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if eval_every is not None:
        check_positive_int("eval_every", eval_every)
    num_points = x.shape[0]
    if batch_size > num_points:
        raise ValueError(f"batch_size must be at most N = {num_points}, got {batch_size}")
    frozen = [p for p in problem.model.parameters() if p.requires_grad] if not fit_model else []
    for parameter in frozen:
        parameter.requires_grad_(False)
    accelerator = x.device.type != "cpu"
    devices = [x.device] if accelerator else []
    try:
        with torch.random.fork_rng(devices, device_type=x.device.type if accelerator else "cuda"):
            torch.manual_seed(seed)
            return _fit_loop(
                problem,
                x,
                steps,
                batch_size,
                lr,
                eval_every,
                eval_samples,
                anneal_lr,
                callback,
                progress,
            )
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def _fit_loop(
    problem: VariationalProblem,
    x: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int | None,
    eval_samples: int,
    anneal_lr: bool,
    callback: Callable[[dict[str, float]], bool | None] | None,
    progress: bool,
) -> list[dict[str, float]]:
    optimizers = make_optimizers(problem, lr)
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]
    num_points = x.shape[0]
    batches_per_epoch = num_points // batch_size
    started = time.perf_counter()
    history = [{"step": 0, **_evaluate(problem, x, eval_samples), "seconds": 0.0}]
    bar = progress_bar(total=steps, show=progress, desc="vi", leave=False)
    train_sum, train_count = torch.zeros((), dtype=x.dtype, device=x.device), 0
    batches = None
    for step in range(1, steps + 1):
        position = (step - 1) % batches_per_epoch
        if position == 0:  # one permutation per epoch, cut into full minibatches
            permutation = torch.randperm(num_points, device=x.device)
            batches = permutation[: batches_per_epoch * batch_size].view(batches_per_epoch, -1)
        index = batches[position]  # (B)
        if anneal_lr:
            for group in groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        loss, metrics = problem.loss((index, x.index_select(0, index)))
        optimizer_step(optimizers, loss, name="negative ELBO")  # raises NonFiniteError
        train_sum += metrics["elbo"]
        train_count += 1
        bar.update(1)
        if step == steps or (eval_every is not None and step % eval_every == 0):
            record = {
                "step": step,
                **_evaluate(problem, x, eval_samples),
                "train_elbo": (train_sum / train_count).item(),
                "seconds": time.perf_counter() - started,
            }
            train_sum.zero_()
            train_count = 0
            history.append(record)
            bar.set_postfix(elbo=f"{record['elbo']:.3f}", refresh=False)
            if callback is not None and callback(record):
                break
    bar.close()
    return history
