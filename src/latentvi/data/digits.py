"""scikit-learn's 8x8 handwritten digits (1797 images, pixel values 0..16), split once with a
fixed seed into 1497 training and 300 test images."""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS_SCALE", "DIGITS_SEED", "DIGITS_TEST_SIZE", "load_digits_arrays"]

DIGITS_SCALE = 16.0
"""The largest pixel value; images are divided by it to land in [0, 1]."""
DIGITS_SEED = 0
"""Seed of the numpy permutation that splits train from test."""
DIGITS_TEST_SIZE = 300


def load_digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (images, labels), "test": (images, labels)}` with uint8 images `[N, 1, 8, 8]`
    holding 0..16 and uint8 labels `[N]`; N = 1497 and 300. The split is the permutation
    `numpy.random.default_rng(DIGITS_SEED).permutation(1797)`: its first 1497 entries are train."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    features, targets = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,)
    images = features.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = targets.astype(np.uint8)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    train, test = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
