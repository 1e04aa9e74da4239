"""`fit`: the one training loop of latentvi (VAEs, CVAEs, RL representation and world models).

Contracts:

- **model**: a ``torch.nn.Module`` with ``loss(batch) -> (loss, metrics)``: a scalar to minimize
  (e.g. negative ELBO per example, nats) and a dict of scalar metrics with namespaced names
  (``{"loss/recon": …, "loss/kl": …, "elbo": …}``).
- **data**: ``make_batches(epoch, generator) -> Iterable[batch]`` yields one epoch, determined by
  the CPU ``generator`` that ``fit`` seeds with ``seed * 1_000_003 + epoch``. Optional keywords:
  ``start`` (skip to that batch: the fast path on resume; otherwise skipped batches are drawn
  and dropped) and ``rank``/``world_size`` (required when distributed, see
  :mod:`latentvi.train.distributed`). ``num_batches``: batches per epoch (per rank).
- **validation**: ``make_valid_batches() -> Iterable[batch]``, see :func:`evaluate`.

Read top-down: :func:`fit` sets up (checks and resume: :mod:`latentvi.train.setup`), then runs
:func:`_train_epoch` until done; each batch is one :func:`latentvi.train.step.train_step`, then
:func:`_after_step` logs, validates, runs callbacks and checkpoints.

One step (1-based count of optimizer updates): move the batch to the device, ``loss.backward()``,
check the loss and every gradient are finite (else :class:`TrainingDivergedError` before the
update), clip, ``optimizer.step()`` (:func:`latentvi.optim_step.optimizer_step`, the one step
every model and agent takes). Then, in this order: log training means (every
``log_every``), validate (every ``eval_every``, or at the end of each epoch when 0), run callbacks
(on logging steps), checkpoint (every ``checkpoint_every``). The last step also logs (the
partial window), validates and checkpoints; callbacks run only every ``log_every`` steps, so
that a run stopped early and resumed calls them at the same steps as one that never stopped.

With ``flush_denormal`` (the default) subnormal floats count as zero during training (the calling
thread's CPU flag, set back to PyTorch's default, off, when ``fit`` returns). With
``matmul_precision="bfloat16"``, float32 matmuls may round their inputs to bfloat16 while ``fit``
trains and validates (``torch.set_float32_matmul_precision("medium")``, restored when it returns);
on a CPU whose float32 kernels ignore that setting, ``fit`` says so in a warning
(:func:`latentvi.train.precision.bfloat16_matmuls_in_effect`).

Randomness: python/numpy/torch are seeded from ``config.seed`` (rank r > 0: a seed mixed from
(seed, r)); resume restores them from the checkpoint, so a run stopped at step s and resumed is
bitwise identical, on CPU, to one that never stopped. Validation and callbacks run under their
own seeded random state (restored afterwards), so they neither see nor disturb the training
stream and give the same draws whether or not the run was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from latentvi.progress import progress_bar
from latentvi.train.batches import TOTAL, batch_size, epoch_batches
from latentvi.train.batches import num_batches_of as _num_batches_of
from latentvi.train.checkpoint import (
    checkpoint_name,
    mark_best,
    save_checkpoint,
)
from latentvi.train.config import TrainConfig
from latentvi.train.distributed import (
    DistInfo,
    any_across_ranks,
    current,
    gather_rng_states,
    reduce_sums,
    wrap_model,
)
from latentvi.train.evaluate import evaluate
from latentvi.train.lock import run_lock
from latentvi.train.metrics import MetricsLogger, MetricWindow
from latentvi.train.optim import default_optimizer
from latentvi.train.rng import isolated_rng, mixed_seed
from latentvi.train.schedule import learning_rate
from latentvi.train.setup import (
    RunState,
    check_contract,
    check_run_folder,
    fresh_state,
    numerics,
    resolved_config,
    resolved_device,
    resume_state,
)
from latentvi.train.signals import stop_on_signals, stop_request
from latentvi.train.step import ExplosionGuard, check_weights, train_step
from latentvi.train.storage import replace_text

__all__ = ["Callback", "TrainResult", "fit"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, torch.nn.Module, dict[str, float]], Mapping[str, Any] | None]
"""``callback(step, model, metrics)`` after each logging step; may return metrics to log."""

EVAL_LOSS = f"eval/{TOTAL}"
_EVAL_STREAM, _CALLBACK_STREAM = 1, 2  # random streams (3: ranks > 0, see train.setup)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`fit` did.

    Attributes:
        steps: optimizer steps taken in total (including those before a resume).
        epochs: passes over the data, fractional when stopped mid-epoch (``steps / num_batches``).
        metrics: the last logged training means and the last validation means.
        last_checkpoint: the final checkpoint folder (None without ``out``).
        best_checkpoint: the checkpoint with the lowest ``eval/loss/total`` among those saved
            right after a validation pass (None without validation or ``out``).
        run_dir: the run folder (None without ``out``).
    """

    steps: int
    epochs: float
    metrics: dict[str, float]
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    run_dir: Path | None


@stop_on_signals()  # SIGTERM / SIGINT: a checkpoint after the current step, then RunStopped
def fit(
    model: torch.nn.Module,
    make_batches: Callable[..., Iterable[Any]],
    num_batches: int | Any,
    config: TrainConfig,
    *,
    make_valid_batches: Callable[..., Iterable[Any]] | None = None,
    optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `model` by minimizing ``model.loss(batch)`` (see the module docstring).

    Args:
        model: has ``loss(batch) -> (scalar loss, {name: scalar})``; moved to the config's device.
        make_batches: ``(epoch, generator, [start=], [rank=, world_size=]) -> batches``.
        num_batches: batches per epoch (an int or an object with ``num_batches``).
        config: optimizer, schedule, seed, device, run folder.
        make_valid_batches: ``() -> batches`` (optionally ``rank=``, ``world_size=``), or None.
        optimizer_factory: ``model -> Optimizer``, called after the model is on its device;
            default ``AdamW(lr, betas, eps, weight_decay)`` from the config.
        resume: continue from the latest checkpoint in ``config.out`` (ValueError if none).
        callbacks: ``callback(step, model, metrics)`` after each logging step; a returned dict
            of metrics (namespaced names: ``eval/…``, ``train/…``) is logged at that step.
        extra_config: more JSON-ready config (model, data) saved with the run's config.json.

    Raises:
        TrainingDivergedError: the loss or a gradient became non-finite (nothing was updated).
        ValueError: bad arguments, ``resume`` without a checkpoint, or a fresh run in a folder
            that already holds checkpoints.
    """
    check_contract(model, config)
    per_epoch = _num_batches_of(num_batches)
    info = current()
    device = resolved_device(config, info)
    run_dir = Path(config.out) if config.out is not None else None
    latest = check_run_folder(run_dir, resume)

    lock = run_lock(run_dir) if run_dir is not None and info.is_main else nullcontext()
    with lock:  # one writer per run folder (latentvi.train.lock)
        model.to(device)
        make_optimizer = optimizer_factory or (lambda m: default_optimizer(m, config))
        optimizer = make_optimizer(model)
        total_steps = config.max_steps or config.epochs * per_epoch
        details = {
            "device": str(device),
            "world_size": info.world_size,
            "num_batches": per_epoch,
            "total_steps": total_steps,
            "torch": torch.__version__,
        }
        run_config = resolved_config(config, extra_config, details)
        if resume:
            state = resume_state(latest, run_dir, model, optimizer, config, info, device, per_epoch)
        else:
            state = fresh_state(config, info)

        metrics_logger = None
        if run_dir is not None and info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            replace_text(run_dir / "config.json", json.dumps(run_config, indent=2) + "\n")
            metrics_logger = MetricsLogger(
                run_dir,
                tensorboard=config.tensorboard,
                resume_step=state.step if resume else None,
                hparams=run_config,
            )
        run = _Run(
            model=model,
            optimizer=optimizer,
            config=config,
            info=info,
            device=device,
            per_epoch=per_epoch,
            run_dir=run_dir,
            run_config=run_config,
            make_batches=make_batches,
            make_valid_batches=make_valid_batches,
            callbacks=tuple(callbacks),
            compute_loss=wrap_model(model, device) if info.distributed else model.loss,
            metrics_logger=metrics_logger,
            bar=progress_bar(
                total=total_steps,
                initial=state.step,
                show=config.progress and info.is_main,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            ),
            named_parameters=list(model.named_parameters()),  # walked once, not every step
            guard=ExplosionGuard(),
        )
        with numerics(config, device):
            try:
                while not _finished(config, state):
                    _train_epoch(run, state)
            finally:
                run.bar.close()
                if metrics_logger is not None:
                    metrics_logger.close()
        if info.distributed:
            torch.distributed.barrier()
        return TrainResult(
            steps=state.step,
            epochs=state.step / per_epoch,
            metrics={**state.resumed_metrics, **state.train_metrics, **state.eval_metrics},
            last_checkpoint=state.last_checkpoint,
            best_checkpoint=state.best_checkpoint,
            run_dir=run_dir,
        )


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed during a run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    info: DistInfo
    device: torch.device
    per_epoch: int
    run_dir: Path | None
    run_config: dict[str, Any]
    make_batches: Callable[..., Iterable[Any]]
    make_valid_batches: Callable[..., Iterable[Any]] | None
    callbacks: tuple[Callback, ...]
    compute_loss: Callable[[Any], Any]
    metrics_logger: MetricsLogger | None
    bar: Any
    named_parameters: list[tuple[str, torch.nn.Parameter]]
    guard: ExplosionGuard

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        if self.metrics_logger is not None:
            self.metrics_logger.log(step, row)


# --- one epoch, one step ------------------------------------------------------------------------


def _finished(config: TrainConfig, state: RunState) -> bool:
    if config.max_steps is not None:
        return state.step >= config.max_steps
    return state.epoch >= config.epochs


def _train_epoch(run: _Run, state: RunState) -> None:
    """The rest of the current epoch, or up to the last step of the run."""
    config = run.config
    batches = epoch_batches(run.make_batches, state.epoch, config.seed, state.in_epoch, run.info)
    if config.lr_schedule != "constant":
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config.lr_schedule, config.lr, state.epoch)
    for batch in batches:
        started = time.perf_counter()
        values = train_step(
            run.model,
            run.compute_loss,
            run.optimizer,
            batch,
            device=run.device,
            named_parameters=run.named_parameters,
            grad_clip=config.grad_clip,
            info=run.info,
            step=state.step + 1,
            last_checkpoint=state.last_checkpoint,
        )
        state.step += 1
        lr = float(run.optimizer.param_groups[0]["lr"])
        run.guard.check(values, state.step, lr, state.last_checkpoint, run.info)
        state.in_epoch += 1
        state.window.add(values, batch_size(batch) or 1, time.perf_counter() - started)
        run.bar.update(1)

        epoch_done = state.in_epoch >= run.per_epoch
        last = config.max_steps is not None and state.step >= config.max_steps
        last = last or (
            config.max_steps is None and epoch_done and state.epoch + 1 >= config.epochs
        )
        _after_step(run, state, epoch_done, last)
        if epoch_done:
            state.epoch, state.in_epoch = state.epoch + 1, 0
        if epoch_done or last:
            return
    raise ValueError(
        f"make_batches(epoch={state.epoch}) stopped after batch {state.in_epoch}, but "
        f"num_batches = {run.per_epoch}; pass the number of batches one epoch yields"
    )


# --- after a step: log, validate, callbacks, checkpoint -----------------------------------------


def _after_step(run: _Run, state: RunState, epoch_done: bool, last: bool) -> None:
    """In this order: log training means, validate, run callbacks, checkpoint (each when due)."""
    config, step = run.config, state.step
    regular_log = step % config.log_every == 0
    if regular_log or last:
        state.train_metrics = _train_means(run, state)
        run.log(step, state.train_metrics)
    if regular_log:  # a partial window at the last step is kept for the checkpoint
        state.window = MetricWindow()
    validated = run.make_valid_batches is not None and (
        last
        or bool(config.eval_every and step % config.eval_every == 0)
        or (not config.eval_every and epoch_done)
    )
    if validated:
        with isolated_rng(mixed_seed(config.seed, _EVAL_STREAM)):
            state.eval_metrics = evaluate(run.model, run.make_valid_batches, run.device, run.info)
        run.log(step, state.eval_metrics)
    if regular_log and run.callbacks:
        merged = {**state.train_metrics, **(state.eval_metrics if validated else {})}
        for callback in run.callbacks:
            with isolated_rng(mixed_seed(config.seed, _CALLBACK_STREAM, step)):
                extra = callback(step, run.model, merged)
            if extra:
                run.log(step, extra)
    periodic = config.checkpoint_every and step % config.checkpoint_every == 0
    stopping = any_across_ranks(bool(stop_request()), run.info)  # SIGTERM / SIGINT on any rank
    if last or stopping or periodic:
        _save(run, state, epoch_done, validated)
    if stopping and not last:
        raise stop_request().stopped(f"at step {step}", state.last_checkpoint)


def _train_means(run: _Run, state: RunState) -> dict[str, float]:
    """The training row: means over the window (across ranks), epoch, lr and throughput."""
    window = state.window
    sums = {**window.sums, "__examples": window.examples}
    counts = {**window.counts, "__examples": 1.0}
    sums, counts = reduce_sums(sums, counts, run.info)
    examples = sums.pop("__examples")
    counts.pop("__examples")
    means = {name: sums[name] / counts[name] for name in sums}
    row = {TOTAL: means.pop(TOTAL)}
    row.update({f"train/{name}": value for name, value in means.items()})
    row["train/epoch"] = state.epoch + state.in_epoch / run.per_epoch
    row["train/lr"] = float(run.optimizer.param_groups[0]["lr"])
    seconds = max(window.seconds, 1e-12)
    row["perf/steps_per_sec"] = window.steps / seconds
    row["perf/examples_per_sec"] = examples / seconds
    postfix = {"step": state.step, "loss": f"{row[TOTAL]:.4g}"}
    elbo = next((v for k, v in row.items() if k.endswith("elbo")), None)
    if elbo is not None:
        postfix["elbo"] = f"{elbo:.4g}"
    run.bar.set_postfix(postfix, refresh=False)
    return row


def _save(run: _Run, state: RunState, epoch_done: bool, validated: bool) -> None:
    """Checkpoint the state after this step; mark it best when its validation loss is lowest."""
    if run.run_dir is not None:  # the kept checkpoint is finite and from before a divergence
        lr = float(run.optimizer.param_groups[0]["lr"])
        check_weights(run.named_parameters, state.step, lr, state.last_checkpoint)
    loss_now = state.eval_metrics.get(EVAL_LOSS, math.inf) if validated else math.inf
    is_best = loss_now < state.best_loss
    state.best_loss = min(state.best_loss, loss_now)
    state.last_checkpoint = _checkpoint(
        run.run_dir, state.step, run.model, run.optimizer, run.run_config, run.config, run.info,
        state.epoch + 1 if epoch_done else state.epoch,
        0 if epoch_done else state.in_epoch,
        state.window, {**state.train_metrics, **state.eval_metrics}, state.best_loss,
    )  # fmt: skip
    if is_best and state.last_checkpoint is not None:
        state.best_checkpoint = state.last_checkpoint
        if run.info.is_main:
            mark_best(state.last_checkpoint)


def _checkpoint(
    run_dir: Path | None,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run_config: dict[str, Any],
    config: TrainConfig,
    info: DistInfo,
    epoch: int,
    in_epoch: int,
    window: MetricWindow,
    metrics: dict[str, float],
    best_loss: float,
) -> Path | None:
    """Save the state after `step` (rank 0 writes; every rank contributes its random state)."""
    if run_dir is None:
        return None
    rng_states = gather_rng_states(info)
    if not info.is_main:
        return run_dir / "checkpoints" / checkpoint_name(step)
    extra_state = {
        "epoch": epoch,
        "batch_in_epoch": in_epoch,
        "window": window.state(),
        "metrics": metrics,
        "best_eval_loss": best_loss if math.isfinite(best_loss) else None,
        "world_size": info.world_size,
    }
    return save_checkpoint(
        run_dir,
        step,
        model,
        optimizer,
        extra_state,
        run_config,
        keep=config.keep_checkpoints,
        rng_states=rng_states,
    )
