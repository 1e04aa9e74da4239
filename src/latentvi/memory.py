"""Sizes checked against the machine's memory before anything large is allocated.

:func:`require_memory` refuses, with one line (a ValueError naming the option, the size and the
fix), a job whose estimated need exceeds the memory available now (``MemAvailable`` of
``/proc/meminfo``, else ``os.sysconf``). The estimates are lower bounds of what the job
allocates (weights, their gradients and two Adam moments in float32; data tensors), so a job
that is refused would certainly have failed inside the allocator; a job that fits is never
refused. Where the available memory cannot be read, nothing is refused.

Networks are counted exactly without allocating them: :func:`meta_build` builds one on
PyTorch's ``meta`` device (shapes only), and :func:`network_bytes` counts its weights and
buffers (each trainable weight four times while training: itself, its gradient, Adam's two
moments; ``tests/test_memory.py`` checks this against the tensors a real update leaves).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "available_memory",
    "format_bytes",
    "meta_build",
    "mlp_parameters",
    "network_bytes",
    "require_memory",
    "require_training_memory",
    "training_bytes",
]

FLOAT_BYTES = 4
TRAINING_COPIES = 4  # weights, gradients and Adam's two moments


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now, or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(size: float) -> str:
    """``1.5 GB``-style sizes (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} EB"


def mlp_parameters(sizes: Sequence[int]) -> int:
    """Weights and biases of fully connected layers ``sizes[0] -> sizes[1] -> ...``."""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def training_bytes(parameters: int, data_floats: int = 0) -> int:
    """Bytes a model of ``parameters`` float32 weights needs to train with Adam, plus
    ``data_floats`` float32 values of data."""
    return FLOAT_BYTES * (TRAINING_COPIES * parameters + data_floats)


def require_memory(needed: int, what: str, options: Iterable[str], fix: str) -> None:
    """Refuse ``needed`` bytes (for ``what``, set by ``options``) when over what is available."""
    available = available_memory()
    if available is None or needed <= available:
        return
    names = ", ".join(options)
    raise ValueError(
        f"{names} too large: {what} needs at least {format_bytes(needed)} of memory, and this "
        f"machine has {format_bytes(available)} available; {fix}"
    )


def meta_build(build: Callable[[], Any]) -> Any:
    """``build()`` on the ``meta`` device: the network's shapes, no memory. Sizes too large
    for PyTorch to describe raise ``OverflowError``."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, TypeError) as error:
        if "overflow" not in str(error).lower():
            raise
        raise OverflowError(" ".join(str(error).split())[:200]) from None


def network_bytes(module: torch.nn.Module, training: bool = True) -> int:
    """Bytes of ``module``'s weights and buffers (e.g. from :func:`meta_build`); with
    ``training``, each weight that requires a gradient counts :data:`TRAINING_COPIES` times
    (itself, its gradient, Adam's two moments)."""
    total = 0
    for parameter in module.parameters():
        copies = TRAINING_COPIES if training and parameter.requires_grad else 1
        total += copies * parameter.numel() * parameter.element_size()
    return total + sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())


def require_training_memory(
    build: Callable[[], torch.nn.Module],
    what: str,
    network_options: Sequence[str],
    data_bytes: int,
    data_what: str,
    data_options: Sequence[str],
) -> None:
    """Refuse in one line (ValueError) training ``build()`` (``what``; counted on the meta
    device: weights, gradients, Adam's moments) with ``data_bytes`` of data (``data_what``)
    when both cannot fit in the memory available now, naming the options of the larger part."""
    try:
        network = network_bytes(meta_build(build))
    except OverflowError as error:
        raise ValueError(
            f"{', '.join(network_options)} too large: {what} cannot be built ({error}); use "
            "smaller sizes"
        ) from None
    require_memory(
        network + data_bytes,
        f"training {what} ({format_bytes(network)} of weights, gradients and Adam moments) with "
        f"{data_what} ({format_bytes(data_bytes)})",
        network_options if network >= data_bytes else data_options,
        "use smaller sizes",
    )
