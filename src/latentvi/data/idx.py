"""The idx file format of MNIST-style data sets (LeCun et al.): a reader that checks everything,
a small writer, and the loader for a folder of the four standard files.

Layout of an idx file (big-endian): two zero bytes, one byte naming the element type (0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte with the number of
dimensions D, then D uint32 sizes, then the elements in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from latentvi.data.dataset import DatasetNotFoundError

__all__ = ["IDX_FILES", "find_idx_file", "load_idx_split", "read_idx", "write_idx"]

_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in _TYPE_CODES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_LABEL = 9  # the idx data sets latentvi reads (MNIST, Fashion-MNIST) have ten classes

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The standard file names (images, labels) of each part; each may also end in `.gz`."""


def _malformed(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is not a valid idx file: {reason}. Download it again or remove it.")


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an idx file (plain or gzip, detected from its first bytes) into a native-endian array
    of the stored shape, e.g. uint8 `[N, H, W]` for idx3 images and uint8 `[N]` for idx1 labels.

    Raises ValueError naming the file when it is truncated, has trailing bytes, a bad magic number,
    an unknown element type, or (with `ndim`) a different number of dimensions.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise _malformed(path, f"its gzip stream is damaged ({error})") from error
    if len(data) < 4:
        raise _malformed(path, f"it is truncated: {len(data)} bytes, shorter than the 4-byte magic")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPE_CODES:
        raise _malformed(
            path,
            f"bad magic number 0x{data[:4].hex()} (expected 0x0000 then a type byte in "
            f"{sorted(hex(code) for code in _TYPE_CODES)} then the number of dimensions)",
        )
    dtype, dims = _TYPE_CODES[data[2]], data[3]
    if dims == 0:
        raise _malformed(path, "its header declares zero dimensions")
    if ndim is not None and dims != ndim:
        raise _malformed(path, f"it holds {dims}-dimensional data where {ndim} were expected")
    header = 4 + 4 * dims
    if len(data) < header:
        raise _malformed(path, f"it is truncated inside the header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise _malformed(
            path, f"it is {kind}: {len(data)} bytes where shape {shape} needs {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` (any shape with 1 to 255 dimensions; uint8, int8, int16, int32, float32 or
    float64) as an idx file, gzip-compressed when `path` ends in `.gz`."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(
            f"array has dtype {array.dtype}, which idx cannot store; convert it to one of "
            "uint8, int8, int16, int32, float32, float64."
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"array must have 1 to 255 dimensions; got {array.ndim}.")
    if max(array.shape) >= 2**32:
        raise ValueError(f"array.shape {array.shape} has a size that does not fit in uint32.")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_TYPE_CODES[code]).tobytes()
    data = header + body
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def find_idx_file(folder: str | Path, stem: str) -> Path | None:
    """`folder/stem` if it exists, else `folder/stem.gz`, else None."""
    for name in (stem, f"{stem}.gz"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def load_idx_split(
    folder: str | Path, part: str, *, guidance: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Read one part ("train" or "test") of an MNIST-style idx folder.

    Returns uint8 images `[N, H, W]` and uint8 labels `[N]`. A missing folder or file raises
    DatasetNotFoundError whose message ends with `guidance` (how to get the files).
    """
    if part not in IDX_FILES:
        raise ValueError(f"part={part!r} is not an idx part; choose one of {sorted(IDX_FILES)}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"idx folder {folder} does not exist. {guidance}".strip())
    stems = IDX_FILES[part]
    found = [find_idx_file(folder, stem) for stem in stems]
    missing = [stem for stem, path in zip(stems, found, strict=True) if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"idx folder {folder} lacks {', '.join(missing)} (plain or .gz); it must hold "
            f"{', '.join(name for pair in IDX_FILES.values() for name in pair)}. {guidance}".strip()
        )
    images_path, labels_path = found
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"{images_path} and {labels_path} must hold uint8 data; got {images.dtype} and "
            f"{labels.dtype}. Write them with write_idx from uint8 arrays."
        )
    if labels.size and int(labels.max()) > MAX_LABEL:
        raise ValueError(
            f"{labels_path} holds label {int(labels.max())}, outside 0..{MAX_LABEL} (ten classes); "
            "the file is damaged or belongs to another data set."
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files do not belong together."
        )
    return images, labels
