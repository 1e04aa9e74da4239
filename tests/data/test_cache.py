"""The cache folder's location and atomic, pickle-free npz files."""

import os
from pathlib import Path

import numpy as np
import pytest

from latentvi.data import cache_dir
from latentvi.data.cache import CHECKSUM, arrays_digest, load_npz, save_npz_atomic


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTVI_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LATENTVI_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "latentvi"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "latentvi"


def test_save_and_load(tmp_path):
    path = tmp_path / "sub" / "a.npz"
    arrays = {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "y": np.ones(2, dtype=np.float32)}
    save_npz_atomic(path, arrays)
    assert sorted(os.listdir(path.parent)) == ["a.npz"]  # no temporary file left behind
    back = load_npz(path)
    assert back.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_npz_atomic(path, {"x": np.zeros(3)})

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_npz_atomic(path, {"x": np.ones(3)})
    assert [p.name for p in Path(tmp_path).iterdir()] == ["a.npz"]
    np.testing.assert_array_equal(load_npz(path)["x"], np.zeros(3))


def test_load_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(path)


def test_a_cache_carries_its_checksum_and_a_damaged_one_is_refused(tmp_path):
    path = tmp_path / "a.npz"
    arrays = {"images": np.arange(60, dtype=np.uint8).reshape(3, 4, 5), "labels": np.ones(3)}
    save_npz_atomic(path, arrays)
    with np.load(path) as archive:
        assert CHECKSUM in archive.files
    # zeroed images, valid layout, the old checksum: refused by its own checksum
    zeroed = {**arrays, "images": np.zeros_like(arrays["images"])}
    np.savez(path, **zeroed, **{CHECKSUM: arrays_digest(arrays)})
    with pytest.raises(ValueError, match="damaged: its content does not match its checksum"):
        load_npz(path)
    # truncated
    save_npz_atomic(path, arrays)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not an npz file"):
        load_npz(path)
    # a file without a checksum is refused where one is required
    np.savez(path, **arrays)
    assert load_npz(path).keys() == arrays.keys()
    with pytest.raises(ValueError, match="carries no checksum"):
        load_npz(path, require_checksum=True)
