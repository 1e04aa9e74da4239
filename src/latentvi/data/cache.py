"""Where derived data files live; writing them atomically and reading them without pickle.

A cache carries its own checksum: :func:`save_npz_atomic` stores the sha256 of every array's
name, dtype, shape and bytes under ``__sha256__``, and :func:`load_npz` recomputes it, so a
truncated or zeroed cache is detected (ValueError naming the file) and can be rebuilt."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["CHECKSUM", "arrays_digest", "cache_dir", "load_npz", "save_npz_atomic"]

CHECKSUM = "__sha256__"


def cache_dir() -> Path:
    """The folder for derived files: `$LATENTVI_CACHE` if set, else `$XDG_CACHE_HOME/latentvi`,
    else `~/.cache/latentvi`. It is not created here."""
    explicit = os.environ.get("LATENTVI_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "latentvi"
    return Path.home() / ".cache" / "latentvi"


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The sha256 of the arrays' names, dtypes, shapes and bytes, as 32 uint8 values."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8).copy()


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` to the uncompressed `.npz` file `path` so that readers see either no file or
    the whole file: write a temporary file in the same folder, flush it to disk, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays, **{CHECKSUM: arrays_digest(arrays)})
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_npz(path: str | Path, *, require_checksum: bool = False) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` file into memory. Object arrays are refused
    (`allow_pickle=False`), so a planted file cannot run code. A file written by
    :func:`save_npz_atomic` is checked against its checksum; ValueError naming the file when it is
    truncated, damaged, or (``require_checksum``) carries no checksum."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, KeyError) as error:
        raise ValueError(f"{path} is truncated or not an npz file ({error})") from None
    stored = arrays.pop(CHECKSUM, None)
    if stored is None:
        if require_checksum:
            raise ValueError(f"{path} carries no checksum (written by an older version)")
        return arrays
    if not np.array_equal(stored, arrays_digest(arrays)):
        raise ValueError(f"{path} is damaged: its content does not match its checksum")
    return arrays
