"""ImageDataset, load_dataset's argument checks, and the digits data set."""

import pytest
import torch

from latentvi.data import DATASETS, SPLITS, ImageDataset, load_dataset


def test_image_dataset_properties():
    images = torch.rand(5, 3, 4, 2)
    data = ImageDataset(images, torch.arange(5), "toy")
    assert len(data) == 5 and data.shape == (3, 4, 2) and data.num_features == 24
    flat = data.flat()
    assert flat.shape == (5, 24)
    assert flat.data_ptr() == images.data_ptr()  # a view
    torch.testing.assert_close(flat[2], images[2].reshape(-1))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.rand(5, 4, 2), torch.arange(5), "images must be a float32"),
        (torch.rand(5, 1, 4, 2).double(), torch.arange(5), "images must be a float32"),
        (torch.rand(5, 1, 4, 2), torch.arange(5).int(), "labels must be an int64"),
        (torch.rand(5, 1, 4, 2), torch.arange(4), "5 examples but labels holds 4"),
        (2 * torch.rand(5, 1, 4, 2) + 0.5, torch.arange(5), r"in \[0, 1\]"),
    ],
)
def test_image_dataset_validates(images, labels, message):
    with pytest.raises(ValueError, match=message):
        ImageDataset(images, labels, "bad")


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"'cifar'.*'mnist', 'fashion-mnist', 'digits', 'idx'"):
        load_dataset("cifar")
    assert DATASETS == ("mnist", "fashion-mnist", "digits", "idx")


def test_unknown_split_lists_choices():
    with pytest.raises(ValueError, match=r"'validation'.*'train', 'valid', 'test'"):
        load_dataset("digits", "validation")
    assert SPLITS == ("train", "valid", "test")


def test_valid_needs_validation_flag():
    with pytest.raises(ValueError, match="validation=True"):
        load_dataset("digits", "valid")


def test_digits_refuses_root(tmp_path):
    with pytest.raises(ValueError, match="root is not used"):
        load_dataset("digits", root=tmp_path)


def test_digits_splits_shapes_and_ranges():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1497, 1, 8, 8) and test.images.shape == (300, 1, 8, 8)
    for data in (train, test):
        assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
        assert data.images.min() == 0 and data.images.max() == 1
        assert set(data.labels.tolist()) == set(range(10))
        assert torch.all(data.images * 16 == torch.round(data.images * 16))  # value / 16
    assert train.name == "digits/train"


def test_digits_validation_is_last_300_of_train():
    full = load_dataset("digits", "train")
    train = load_dataset("digits", "train", validation=True)
    valid = load_dataset("digits", "valid", validation=True)
    test = load_dataset("digits", "test", validation=True)
    assert (len(train), len(valid), len(test)) == (1197, 300, 300)
    torch.testing.assert_close(torch.cat([train.images, valid.images]), full.images)
    torch.testing.assert_close(torch.cat([train.labels, valid.labels]), full.labels)


def test_digits_split_is_fixed():
    first, second = load_dataset("digits", "test"), load_dataset("digits", "test")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    # The split is pinned: the labels of the first test examples under seed 0. Should a numpy
    # upgrade change its permutation stream, this fails rather than silently moving the split.
    assert first.labels[:10].tolist() == [6, 5, 5, 0, 4, 4, 8, 4, 9, 2]
