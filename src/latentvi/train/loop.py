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

One step (1-based count of optimizer updates): move the batch to the device, ``loss.backward()``,
check the loss and every gradient are finite (else :class:`TrainingDivergedError` before the
update), clip, ``optimizer.step()``. Then, in this order: log training means (every
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
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from latentvi.config import to_dict
from latentvi.train.batches import TOTAL, batch_size, epoch_batches, loss_values, move_to
from latentvi.train.batches import num_batches_of as _num_batches_of
from latentvi.train.checkpoint import (
    checkpoint_name,
    find_best,
    find_latest,
    load_checkpoint,
    mark_best,
    remove_checkpoints_after,
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
from latentvi.train.errors import CheckpointError, TrainingDivergedError
from latentvi.train.evaluate import evaluate
from latentvi.train.metrics import MetricsLogger, MetricWindow
from latentvi.train.optim import (
    adopt_hyperparameters,
    default_optimizer,
    gradient_norm,
    hyperparameters,
)
from latentvi.train.precision import bfloat16_matmuls_in_effect
from latentvi.train.rng import isolated_rng, mixed_seed, seed_everything
from latentvi.train.schedule import learning_rate
from latentvi.train.signals import stop_on_signals, stop_request
from latentvi.train.storage import replace_text

__all__ = ["Callback", "TrainResult", "fit"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, torch.nn.Module, dict[str, float]], Mapping[str, Any] | None]
"""``callback(step, model, metrics)`` after each logging step; may return metrics to log."""

EVAL_LOSS = f"eval/{TOTAL}"
_EVAL_STREAM, _CALLBACK_STREAM, _RANK_STREAM = 1, 2, 3


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


def _device(config: TrainConfig, info: DistInfo) -> torch.device:
    device = config.resolved_device()
    if device.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return device


def _resolved_config(
    config: TrainConfig, extra: Mapping[str, Any] | None, details: dict[str, Any]
) -> dict[str, Any]:
    extra = dict(extra or {})
    for key in ("train", "resolved"):
        if key in extra:
            raise ValueError(f"extra_config key {key!r} is reserved; nest your values elsewhere")
    resolved = {"train": to_dict(config), "resolved": details, **extra}
    return json.loads(json.dumps(resolved, default=str))


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
            of metrics is logged at that step.
        extra_config: more JSON-ready config (model, data) saved with the run's config.json.

    Raises:
        TrainingDivergedError: the loss or a gradient became non-finite (nothing was updated).
        ValueError: bad arguments, ``resume`` without a checkpoint, or a fresh run in a folder
            that already holds checkpoints.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"{type(model).__name__} has no loss(batch) method; the loop needs "
            "model.loss(batch) -> (scalar loss, metrics dict)"
        )
    per_epoch = _num_batches_of(num_batches)
    info = current()
    device = _device(config, info)
    total_steps = config.max_steps or config.epochs * per_epoch
    run_dir = Path(config.out) if config.out is not None else None
    latest = find_latest(run_dir) if run_dir is not None else None
    if resume and latest is None:
        where = "TrainConfig.out is None" if run_dir is None else f"{run_dir} holds no checkpoint"
        raise ValueError(
            f"resume=True but {where}; set out= to the folder of the run to continue, or pass "
            "resume=False to start a new run"
        )
    if not resume and latest is not None:
        raise ValueError(
            f"out = {str(run_dir)!r} already holds checkpoints (latest {latest.name}); pass "
            "resume=True to continue that run, or choose a new out folder"
        )

    model.to(device)
    make_optimizer = optimizer_factory or (lambda m: default_optimizer(m, config))
    optimizer = make_optimizer(model)
    details = {
        "device": str(device),
        "world_size": info.world_size,
        "num_batches": per_epoch,
        "total_steps": total_steps,
        "torch": torch.__version__,
    }
    run_config = _resolved_config(config, extra_config, details)

    step, epoch, in_epoch = 0, 0, 0
    window = MetricWindow()
    best_loss = math.inf
    best_checkpoint = last_checkpoint = None
    resumed_metrics: dict[str, float] = {}
    if resume:
        wanted = hyperparameters(optimizer)
        state = load_checkpoint(latest, model, optimizer, map_location=device, rank=info.rank)
        adopt_hyperparameters(optimizer, wanted)
        try:
            step, epoch, in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        except KeyError as error:
            raise CheckpointError(
                f"checkpoint {latest} has no {error} entry: it was not written by fit(); resume "
                "from a checkpoint of a fit() run, or load it with load_checkpoint instead"
            ) from error
        if in_epoch >= per_epoch:
            raise ValueError(
                f"num_batches = {per_epoch} is invalid for this run: its checkpoint {latest} is "
                f"after batch {in_epoch} of epoch {epoch}; use the data of the original run"
            )
        window = MetricWindow(state.get("window"))
        best_loss = state.get("best_eval_loss") or math.inf
        resumed_metrics = dict(state.get("metrics", {}))
        last_checkpoint, best_checkpoint = latest, find_best(run_dir)
        if not state["rng_restored"]:
            seed_everything(mixed_seed(config.seed, _RANK_STREAM, info.rank, step))
        if info.is_main:
            for removed in remove_checkpoints_after(run_dir, step):
                logger.warning("removed %s, newer than the checkpoint resumed from", removed)
        logger.info("resuming from %s (step %d, epoch %d)", latest, step, epoch)
    else:
        seed = config.seed if info.rank == 0 else mixed_seed(config.seed, _RANK_STREAM, info.rank)
        seed_everything(seed)

    metrics_logger = None
    if run_dir is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        replace_text(run_dir / "config.json", json.dumps(run_config, indent=2) + "\n")
        metrics_logger = MetricsLogger(
            run_dir, tensorboard=config.tensorboard, resume_step=step if resume else None
        )
    compute_loss = wrap_model(model, device) if info.distributed else model.loss
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (config.progress and info.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )

    def finished() -> bool:
        if config.max_steps is not None:
            return step >= config.max_steps
        return epoch >= config.epochs

    def log_train() -> dict[str, float]:
        sums = {**window.sums, "__examples": window.examples}
        counts = {**window.counts, "__examples": 1.0}
        sums, counts = reduce_sums(sums, counts, info)
        examples = sums.pop("__examples")
        counts.pop("__examples")
        means = {name: sums[name] / counts[name] for name in sums}
        row = {TOTAL: means.pop(TOTAL)}
        row.update({f"train/{name}": value for name, value in means.items()})
        row["train/epoch"] = epoch + in_epoch / per_epoch
        row["train/lr"] = float(optimizer.param_groups[0]["lr"])
        seconds = max(window.seconds, 1e-12)
        row["perf/steps_per_sec"] = window.steps / seconds
        row["perf/examples_per_sec"] = examples / seconds
        postfix = {"step": step, "loss": f"{row[TOTAL]:.4g}"}
        elbo = next((v for k, v in row.items() if k.endswith("elbo")), None)
        if elbo is not None:
            postfix["elbo"] = f"{elbo:.4g}"
        bar.set_postfix(postfix, refresh=False)
        return row

    def log(row: Mapping[str, Any]) -> None:
        if metrics_logger is not None:
            metrics_logger.log(step, row)

    train_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    named_parameters = list(model.named_parameters())  # walked once, not every step
    # Subnormal operands make CPU matmuls many times slower; they arise as training goes on
    # (e.g. exp of very negative log-weights) and carry nothing at float32 resolution.
    flush = config.flush_denormal and torch.set_flush_denormal(True)
    precision = torch.get_float32_matmul_precision()
    if config.matmul_precision == "bfloat16":
        if device.type == "cpu" and not bfloat16_matmuls_in_effect():
            logger.warning(
                "matmul_precision = 'bfloat16' has no effect on this CPU: its float32 matmuls "
                "ignore torch.set_float32_matmul_precision('medium'), so training stays in "
                "float32 (latentvi.train.precision); use matmul_precision = 'float32' to "
                "silence this"
            )
        torch.set_float32_matmul_precision("medium")
    try:
        while not finished():
            batches = epoch_batches(make_batches, epoch, config.seed, in_epoch, info)
            if config.lr_schedule != "constant":
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config.lr_schedule, config.lr, epoch)
            for batch in batches:
                started = time.perf_counter()
                batch = move_to(batch, device)
                if not model.training:  # e.g. a callback left it in eval mode
                    model.train()
                optimizer.zero_grad(set_to_none=True)
                loss, metrics = compute_loss(batch)
                values = loss_values(loss, metrics)  # also checks the shapes
                loss.backward()
                grad_norm, bad = gradient_norm(named_parameters, config.grad_clip)
                if not math.isfinite(values[TOTAL]):
                    bad = "loss"
                if any_across_ranks(bad is not None, info):
                    lr = float(optimizer.param_groups[0]["lr"])
                    raise TrainingDivergedError.at_step(
                        step + 1,
                        bad or "a value on another rank",
                        values,
                        lr,
                        None if last_checkpoint is None else str(last_checkpoint),
                    )
                optimizer.step()
                step += 1
                in_epoch += 1
                values["grad_norm"] = grad_norm
                window.add(values, batch_size(batch) or 1, time.perf_counter() - started)
                bar.update(1)

                epoch_done = in_epoch >= per_epoch
                last = config.max_steps is not None and step >= config.max_steps
                last = last or (
                    config.max_steps is None and epoch_done and epoch + 1 >= config.epochs
                )
                regular_log = step % config.log_every == 0
                if regular_log or last:
                    train_metrics = log_train()
                    log(train_metrics)
                if regular_log:  # a partial window at the last step is kept for the checkpoint
                    window = MetricWindow()
                validated = False
                if make_valid_batches is not None and (
                    last
                    or (config.eval_every and step % config.eval_every == 0)
                    or (not config.eval_every and epoch_done)
                ):
                    with isolated_rng(mixed_seed(config.seed, _EVAL_STREAM)):
                        eval_metrics = evaluate(model, make_valid_batches, device, info)
                    validated = True
                    log(eval_metrics)
                if regular_log and callbacks:
                    merged = {**train_metrics, **(eval_metrics if validated else {})}
                    for callback in callbacks:
                        with isolated_rng(mixed_seed(config.seed, _CALLBACK_STREAM, step)):
                            extra = callback(step, model, merged)
                        if extra:
                            log(extra)
                periodic = config.checkpoint_every and step % config.checkpoint_every == 0
                stopping = any_across_ranks(bool(stop_request()), info)
                if last or stopping or periodic:
                    loss_now = eval_metrics.get(EVAL_LOSS, math.inf) if validated else math.inf
                    is_best = loss_now < best_loss
                    best_loss = min(best_loss, loss_now)
                    last_checkpoint = _checkpoint(
                        run_dir, step, model, optimizer, run_config, config, info,
                        epoch + 1 if epoch_done else epoch,
                        0 if epoch_done else in_epoch,
                        window, {**train_metrics, **eval_metrics}, best_loss,
                    )  # fmt: skip
                    if is_best and last_checkpoint is not None:
                        best_checkpoint = last_checkpoint
                        if info.is_main:
                            mark_best(last_checkpoint)
                if stopping and not last:
                    raise stop_request().stopped(f"at step {step}", last_checkpoint)
                if epoch_done:
                    epoch, in_epoch = epoch + 1, 0
                if epoch_done or last:
                    break
            else:
                raise ValueError(
                    f"make_batches(epoch={epoch}) stopped after batch {in_epoch}, but num_batches "
                    f"= {per_epoch}; pass the number of batches one epoch yields"
                )
    finally:
        if flush:
            torch.set_flush_denormal(False)  # PyTorch's default (it offers no way to read it)
        torch.set_float32_matmul_precision(precision)
        bar.close()
        if metrics_logger is not None:
            metrics_logger.close()
    if info.distributed:
        torch.distributed.barrier()
    return TrainResult(
        steps=step,
        epochs=step / per_epoch,
        metrics={**resumed_metrics, **train_metrics, **eval_metrics},
        last_checkpoint=last_checkpoint,
        best_checkpoint=best_checkpoint,
        run_dir=run_dir,
    )


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
