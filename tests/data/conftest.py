"""Shared fixtures: a tiny MNIST-style idx folder written with our own writer."""

from pathlib import Path

import numpy as np
import pytest

from latentvi.data import write_idx

TRAIN, TEST, HEIGHT, WIDTH = 60, 12, 4, 5


def make_idx_folder(folder: Path, *, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train (60 images 4x5) and t10k (12) idx files; train images gzipped when `gz`."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part, prefix, count in (("train", "train", TRAIN), ("test", "t10k", TEST)):
        images = rng.integers(0, 256, size=(count, HEIGHT, WIDTH), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the full range appears
        labels = (np.arange(count) % 10).astype(np.uint8)
        suffix = ".gz" if gz and part == "train" else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
        parts[part] = (images, labels)
    return parts


@pytest.fixture
def idx_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = tmp_path / "idx"
    return folder, make_idx_folder(folder)
