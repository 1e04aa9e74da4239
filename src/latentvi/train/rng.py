"""Random-number state of one process: seeding, capture/restore for checkpoints, isolation.

The global generators a training step may touch are python's `random`, numpy's global generator,
torch's CPU generator and, when CUDA is initialized, one torch generator per CUDA device. Capturing
all of them in a checkpoint and restoring them on resume makes a resumed run draw the same numbers
as one that never stopped.

`RNGState` is JSON-ready except for the torch states, which are uint8 tensors kept apart so that a
checkpoint stores them in a safetensors file.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "RNGState",
    "capture_rng_state",
    "derived_seed",
    "epoch_generator",
    "isolated_rng",
    "mixed_seed",
    "restore_rng_state",
    "seed_everything",
]

_SEED_MULTIPLIER = 1_000_003  # a prime: (seed, index) pairs map to distinct integers


def derived_seed(seed: int, index: int) -> int:
    """A seed for stream `index` of a run seeded with `seed`: ``seed * 1_000_003 + index``."""
    return seed * _SEED_MULTIPLIER + index


def mixed_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer `keys` (numpy SeedSequence): nearby key tuples give
    unrelated streams. Used for per-rank, evaluation and callback streams."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1)[0])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator handed to the batch factory for epoch `epoch` (0-based)."""
    return torch.Generator().manual_seed(derived_seed(seed, epoch))


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RNGState:
    """The global random state of one process.

    Attributes:
        python: ``random.getstate()`` as nested lists (JSON-ready).
        numpy: numpy's legacy global state as a dict (JSON-ready; 624 uint32 keys as ints).
        torch_cpu: ``torch.get_rng_state()``, uint8 ``[S]``.
        cuda: ``torch.cuda.get_rng_state_all()``, one uint8 tensor per device (empty without CUDA).
    """

    python: list
    numpy: dict
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The torch states under names ``{prefix}torch_cpu`` and ``{prefix}cuda.{i}``."""
        named = {f"{prefix}torch_cpu": self.torch_cpu}
        named.update({f"{prefix}cuda.{i}": state for i, state in enumerate(self.cuda)})
        return named

    def json(self) -> dict:
        """The JSON part; the tensors are referenced by count only (see :meth:`tensors`)."""
        return {"python": self.python, "numpy": self.numpy, "cuda_devices": len(self.cuda)}

    @classmethod
    def from_parts(cls, data: dict, tensors: dict[str, torch.Tensor], prefix: str) -> RNGState:
        """Inverse of :meth:`json` + :meth:`tensors`; raises KeyError for a missing entry."""
        cuda = [tensors[f"{prefix}cuda.{i}"] for i in range(int(data["cuda_devices"]))]
        return cls(data["python"], data["numpy"], tensors[f"{prefix}torch_cpu"], cuda)


def capture_rng_state() -> RNGState:
    """The current global random state of this process."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    numpy_state = {
        "name": str(name),
        "keys": [int(key) for key in keys],
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return RNGState(
        python=[version, list(internal), gauss],
        numpy=numpy_state,
        torch_cpu=torch.get_rng_state().clone(),
        cuda=[state.clone() for state in cuda],
    )


def restore_rng_state(state: RNGState) -> None:
    """Make `state` the current global random state. CUDA states are restored for as many
    devices as both the state and this machine have."""
    version, internal, gauss = state.python
    random.setstate((int(version), tuple(int(value) for value in internal), gauss))
    numpy_state = state.numpy
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state.torch_cpu.to(device="cpu", dtype=torch.uint8))
    if state.cuda and torch.cuda.is_available():
        for device, cuda_state in enumerate(state.cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.to(device="cpu", dtype=torch.uint8), device)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with all global generators seeded from `seed`, then put back the state from
    before the block: what runs inside neither sees nor disturbs the training stream."""
    saved = capture_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(saved)
