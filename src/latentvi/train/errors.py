"""The errors of the training package; each says what went wrong and what to do next."""

from __future__ import annotations

import errno
import math
from collections.abc import Mapping

__all__ = ["CheckpointError", "RunFailedError", "TrainingDivergedError", "describe_os_error"]


class CheckpointError(ValueError):
    """A checkpoint folder or one of its files is missing, truncated, corrupt, or does not match
    the model/optimizer it is loaded into. The message names the file and the problem."""


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became non-finite. Raised before the optimizer step and before any
    checkpoint is written, so the parameters and the last checkpoint on disk are still good.

    Attributes:
        step: the step whose update was refused (1-based; parameters are those after ``step - 1``).
        metric: what went non-finite, e.g. ``"loss"`` or ``"gradient of encoder.weight"``.
        last_checkpoint: the newest good checkpoint folder, or None.
    """

    def __init__(self, message: str, *, step: int, metric: str, last_checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.metric = metric
        self.last_checkpoint = last_checkpoint

    @classmethod
    def at_step(
        cls,
        step: int,
        metric: str,
        values: Mapping[str, float],
        lr: float,
        last_checkpoint: str | None,
    ) -> TrainingDivergedError:
        """The error for a refused update at `step`, listing the non-finite `values` and saying
        how to go on (resume from `last_checkpoint` with a tenth of the learning rate `lr`)."""
        bad = sorted(name for name, value in values.items() if not math.isfinite(value))
        detail = f" (non-finite: {', '.join(bad)})" if bad else ""
        if last_checkpoint is None:
            next_step = (
                "no checkpoint has been written yet (set TrainConfig.out and checkpoint_every to "
                "keep one); restart with a lower learning rate, e.g. "
                f"dataclasses.replace(config, lr={lr / 10:g})"
            )
        else:
            next_step = (
                f"the last good checkpoint is {last_checkpoint}; to continue from it with a "
                "lower learning rate call "
                f"fit(..., config=dataclasses.replace(config, lr={lr / 10:g}), resume=True)"
            )
        message = (
            f"training diverged at step {step}: {metric} is not finite{detail}. The optimizer "
            f"step was not taken and no checkpoint was written; {next_step}"
        )
        return cls(message, step=step, metric=metric, last_checkpoint=last_checkpoint)


class RunFailedError(OSError):
    """A filesystem or memory error while a job wrote its run folder (a full disk, a read-only
    folder, no memory left). The message is one line naming the path and the cause; what was
    written before (the last complete checkpoint) is intact."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_READING = (errno.ENOENT, errno.ENOTDIR)


def describe_os_error(error: BaseException) -> str:
    """One line for an ``OSError`` or ``MemoryError``: ``cannot write PATH: CAUSE``."""
    if isinstance(error, MemoryError):
        detail = " ".join(str(error).split())
        return f"out of memory{f' ({detail})' if detail else ''}: use smaller sizes"
    if not isinstance(error, OSError):
        return " ".join(str(error).split())
    cause = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.filename is None:
        return cause
    verb = "read" if error.errno in _READING else "write"
    where = str(error.filename)
    if error.filename2 is not None:
        where += f" -> {error.filename2}"
    return f"cannot {verb} {where}: {cause}"
