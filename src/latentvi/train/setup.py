"""Set-up and resume of :func:`latentvi.train.fit`: checks, the run's state, numerics.

:func:`check_run_folder` refuses a resume without a checkpoint and a fresh run into a folder that
holds some; :func:`fresh_state` seeds the generators of a new run, :func:`resume_state` loads the
latest checkpoint and restores them; :func:`numerics` sets the float behaviour for the fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from latentvi.config import to_dict
from latentvi.train.checkpoint import (
    find_best,
    find_latest,
    load_checkpoint,
    remove_checkpoints_after,
)
from latentvi.train.config import TrainConfig
from latentvi.train.distributed import DistInfo
from latentvi.train.errors import CheckpointError
from latentvi.train.lock import check_unlocked
from latentvi.train.metrics import MetricWindow
from latentvi.train.optim import adopt_hyperparameters, hyperparameters
from latentvi.train.precision import bfloat16_matmuls_in_effect
from latentvi.train.rng import mixed_seed, seed_everything
from latentvi.train.runs import check_writable

__all__ = [
    "RunState",
    "check_contract",
    "check_run_folder",
    "fresh_state",
    "numerics",
    "resolved_config",
    "resolved_device",
    "resume_state",
]

logger = logging.getLogger(__name__)

RANK_STREAM = 3  # the random stream of ranks > 0 (mixed with the seed and the rank)


@dataclasses.dataclass
class RunState:
    """What changes during a run (and what a checkpoint keeps of it)."""

    step: int = 0
    epoch: int = 0
    in_epoch: int = 0
    window: MetricWindow = dataclasses.field(default_factory=MetricWindow)
    best_loss: float = math.inf
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    resumed_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def check_contract(model: torch.nn.Module, config: TrainConfig) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"{type(model).__name__} has no loss(batch) method; the loop needs "
            "model.loss(batch) -> (scalar loss, metrics dict)"
        )


def resolved_device(config: TrainConfig, info: DistInfo) -> torch.device:
    device = config.resolved_device()
    if device.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return device


def check_run_folder(run_dir: Path | None, resume: bool) -> Path | None:
    """The latest checkpoint of the run folder; refuses a resume without one, and a fresh run
    into a folder that holds some."""
    if run_dir is not None:
        check_writable(run_dir)
        check_unlocked(run_dir)
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
    return latest


def resolved_config(
    config: TrainConfig, extra: Mapping[str, Any] | None, details: dict[str, Any]
) -> dict[str, Any]:
    extra = dict(extra or {})
    for key in ("train", "resolved"):
        if key in extra:
            raise ValueError(f"extra_config key {key!r} is reserved; nest your values elsewhere")
    resolved = {"train": to_dict(config), "resolved": details, **extra}
    return json.loads(json.dumps(resolved, default=str))


def fresh_state(config: TrainConfig, info: DistInfo) -> RunState:
    """The state of a new run; seeds python, numpy and torch with ``config.seed`` (rank r > 0:
    a seed mixed from (seed, r))."""
    seed = config.seed if info.rank == 0 else mixed_seed(config.seed, RANK_STREAM, info.rank)
    seed_everything(seed)
    return RunState()


def resume_state(
    latest: Path,
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    info: DistInfo,
    device: torch.device,
    per_epoch: int,
) -> RunState:
    """Load the latest checkpoint into the model and optimizer (keeping the current config's
    optimizer settings) and restore the random state; the run's state after that step."""
    wanted = hyperparameters(optimizer)
    saved = load_checkpoint(latest, model, optimizer, map_location=device, rank=info.rank)
    adopt_hyperparameters(optimizer, wanted)
    try:
        step, epoch, in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
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
    state = RunState(
        step=step,
        epoch=epoch,
        in_epoch=in_epoch,
        window=MetricWindow(saved.get("window")),
        best_loss=saved.get("best_eval_loss") or math.inf,
        resumed_metrics=dict(saved.get("metrics", {})),
        last_checkpoint=latest,
        best_checkpoint=find_best(run_dir),
    )
    if not saved["rng_restored"]:
        seed_everything(mixed_seed(config.seed, RANK_STREAM, info.rank, step))
    if info.is_main:
        for removed in remove_checkpoints_after(run_dir, step):
            logger.warning("removed %s, newer than the checkpoint resumed from", removed)
    logger.info("resuming from %s (step %d, epoch %d)", latest, step, epoch)
    return state


@contextlib.contextmanager
def numerics(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Flush subnormals and set the float32 matmul precision while training; restore after."""
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
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)  # PyTorch's default (it offers no way to read it)
        torch.set_float32_matmul_precision(precision)
