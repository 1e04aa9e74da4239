"""`TrainConfig`: the options of the one training loop (:func:`latentvi.train.fit`).

Every field carries its help text (it becomes the ``--help`` of the CLI option, see
:mod:`latentvi.config`); ``__post_init__`` rejects bad values with a ``ValueError`` that names the
field, the value and how to fix it. Steps are optimizer updates, counted from 1: "step 100" is the
state after the 100th update.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from latentvi.config import option, require, require_int
from latentvi.train.schedule import SCHEDULES

__all__ = ["DEVICES", "MATMUL_PRECISIONS", "TrainConfig", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")
MATMUL_PRECISIONS = ("float32", "bfloat16")

# numpy's global generator takes 32-bit seeds; the same bound keeps every derived seed in range.
_SEED_LIMIT = 2**32


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`latentvi.train.fit` (optimizer, schedule of logs/evals/checkpoints, run
    folder). The default optimizer is AdamW built from ``lr``, ``weight_decay``, ``betas``, ``eps``.
    """

    epochs: int = option(1, "passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = option(
        None, "stop after this many optimizer steps, overriding epochs (left out: use epochs)"
    )
    lr: float = option(1e-3, "learning rate of the default AdamW optimizer")
    lr_schedule: str = option(
        "constant",
        "learning-rate schedule: constant, or burda (3^i epochs at lr·10^(-i/7), i = 0..7)",
        choices=SCHEDULES,
    )
    weight_decay: float = option(0.0, "decoupled weight decay of the default AdamW optimizer")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW's (beta1, beta2) moment decay rates")
    eps: float = option(1e-8, "AdamW's denominator epsilon")
    grad_clip: float | None = option(
        None, "clip the global gradient L2 norm to this value (left out: no clipping)"
    )
    seed: int = option(0, "seed of python/numpy/torch RNGs and of each epoch's data order")
    device: str = option(
        "auto", "where to train: auto (cuda if available), cpu or cuda", choices=DEVICES
    )
    log_every: int = option(50, "steps between training-metric logs (means over the window)")
    eval_every: int = option(0, "steps between validation passes (0: at the end of each epoch)")
    checkpoint_every: int = option(0, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep on disk")
    progress: bool = option(
        True, "show a progress bar on stderr when it is a terminal (--no-progress: never)"
    )
    tensorboard: bool = option(True, "also write TensorBoard scalars when tensorboard is installed")
    flush_denormal: bool = option(
        True,
        "treat subnormal floats as zero on the CPU while training (torch.set_flush_denormal): "
        "steps stay fast when gradients underflow, e.g. IWAE weights of hopeless samples",
    )
    matmul_precision: str = option(
        "float32",
        "float32: exact float32 matmuls; bfloat16: float32 matmuls may round their inputs to "
        "bfloat16 and accumulate in float32 (oneDNN on CPUs with AMX/AVX512-BF16, TF32 or bf16 "
        "on CUDA; torch.set_float32_matmul_precision('medium')) while training; weights, "
        "activations and the optimizer stay float32",
        choices=MATMUL_PRECISIONS,
    )
    out: str | None = option(
        None, "run folder for config.json, metrics and checkpoints (left out: nothing is written)"
    )

    def __post_init__(self) -> None:
        require_int(self.epochs, "epochs", 1, "use 1 or more passes over the data")
        if self.max_steps is not None:
            require_int(self.max_steps, "max_steps", 1, "use 1 or more steps, or None")
        require(
            _is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr),
            "lr",
            self.lr,
            "use a positive finite learning rate such as 1e-3",
        )
        require(
            self.lr_schedule in SCHEDULES,
            "lr_schedule",
            self.lr_schedule,
            f"choose one of {', '.join(SCHEDULES)}",
        )
        require(
            _is_number(self.weight_decay) and 0 <= self.weight_decay < math.inf,
            "weight_decay",
            self.weight_decay,
            "use 0.0 (no decay) or a positive finite value",
        )
        require(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "use two decay rates in [0, 1), e.g. (0.9, 0.999)",
        )
        require(
            _is_number(self.eps) and 0 < self.eps < math.inf,
            "eps",
            self.eps,
            "use a small positive value such as 1e-8",
        )
        if self.grad_clip is not None:
            require(
                _is_number(self.grad_clip) and 0 < self.grad_clip < math.inf,
                "grad_clip",
                self.grad_clip,
                "use a positive finite norm such as 1.0, or None for no clipping",
            )
        require_int(self.seed, "seed", 0, f"use an integer in [0, {_SEED_LIMIT})")
        require(self.seed < _SEED_LIMIT, "seed", self.seed, f"use an integer in [0, {_SEED_LIMIT})")
        require(self.device in DEVICES, "device", self.device, f"use one of {DEVICES}")
        require(
            self.device != "cuda" or torch.cuda.is_available(),
            "device",
            self.device,
            "CUDA is not available on this machine (torch.cuda.is_available() is False); "
            "use device='cpu' or 'auto'",
        )
        require_int(self.log_every, "log_every", 1, "use 1 or more steps between logs")
        require_int(self.eval_every, "eval_every", 0, "use 0 (end of each epoch) or more steps")
        require_int(
            self.checkpoint_every, "checkpoint_every", 0, "use 0 (only at the end) or more steps"
        )
        require_int(self.keep_checkpoints, "keep_checkpoints", 1, "keep at least 1 checkpoint")
        require(isinstance(self.progress, bool), "progress", self.progress, "use True or False")
        require(
            isinstance(self.tensorboard, bool), "tensorboard", self.tensorboard, "use True or False"
        )
        require(
            self.matmul_precision in MATMUL_PRECISIONS,
            "matmul_precision",
            self.matmul_precision,
            f"use one of {', '.join(MATMUL_PRECISIONS)}",
        )
        require(
            self.out is None or (isinstance(self.out, str) and self.out.strip() != ""),
            "out",
            self.out,
            "use a folder path such as 'runs/vae' (a string), or None to write nothing",
        )

    def resolved_device(self) -> torch.device:
        """The device to train on (:func:`resolve_device` of ``device``)."""
        return resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` becomes ``cuda`` when CUDA is available, else ``cpu``; other names as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
