"""Where derived data files live; writing them atomically and reading them without pickle."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "load_npz", "save_npz_atomic"]


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
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a cache may be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` file into memory. Object arrays are refused
    (`allow_pickle=False`), so a planted file cannot run code."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}
