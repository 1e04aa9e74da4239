"""Sizes checked against the machine's memory before anything large is allocated.

:func:`require_memory` refuses, with one line (a ValueError naming the option, the size and the
fix), a job whose estimated need exceeds the memory available now (``MemAvailable`` of
``/proc/meminfo``, else ``os.sysconf``). The estimates are lower bounds of what the job
allocates (weights, their gradients and two Adam moments in float32; data tensors), so a job
that is refused would certainly have failed inside the allocator; a job that fits is never
refused. Where the available memory cannot be read, nothing is refused.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "available_memory",
    "format_bytes",
    "mlp_parameters",
    "require_memory",
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
