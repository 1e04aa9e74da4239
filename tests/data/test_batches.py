"""Batches: coverage, reproducibility, resuming, sharding, and dynamic binarization."""

import pytest
import torch

from latentvi.data import Batches, ImageDataset, epoch_seed

N = 103  # not a multiple of the batch size or of the world size


def index_batches(batches):
    """The example indices of each batch (the data tensor is arange(N))."""
    return [batch[0] for batch in batches]


def make(**kwargs):
    return Batches(torch.arange(N), **{"batch_size": 10, **kwargs})


def intensities(count=N, features=8):
    return torch.rand(count, features, generator=torch.Generator().manual_seed(0))


def assert_same(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second, strict=True):
        assert len(one) == len(other)
        for a, b in zip(one, other, strict=True):
            assert torch.equal(a, b)


def test_every_example_once_per_epoch():
    batches = make()
    assert batches.num_batches == len(batches) == 11
    chunks = index_batches(batches.epoch(seed=0, epoch=0))
    assert len(chunks) == 11 and [len(c) for c in chunks] == [10] * 10 + [3]
    assert torch.equal(torch.cat(chunks).sort().values, torch.arange(N))
    assert not torch.equal(torch.cat(chunks), torch.arange(N))  # shuffled


def test_drop_last_and_no_shuffle():
    batches = make(drop_last=True, shuffle=False)
    assert batches.num_batches == 10
    assert torch.equal(torch.cat(index_batches(batches.epoch(0, 0))), torch.arange(100))


def test_tensors_stay_aligned():
    labels = torch.arange(N) * 7
    images = torch.arange(N, dtype=torch.float32)[:, None, None, None].expand(N, 1, 2, 2)
    for image, label in Batches(images, labels, batch_size=16).epoch(seed=4, epoch=1):
        assert image.shape[1:] == (1, 2, 2)
        assert torch.equal(image[:, 0, 0, 0].long() * 7, label)


def test_same_seed_same_batches_and_epochs_differ():
    batches = make()
    assert_same(list(batches.epoch(1, 2)), list(batches.epoch(1, 2)))
    first = torch.cat(index_batches(batches.epoch(1, 2)))
    assert not torch.equal(first, torch.cat(index_batches(batches.epoch(1, 3))))
    assert not torch.equal(first, torch.cat(index_batches(batches.epoch(2, 2))))


def test_same_generator_state_same_batches():
    batches = Batches(intensities(), torch.arange(N), batch_size=10, binarize="dynamic")
    one, two = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert_same(list(batches.iterate(one)), list(batches.iterate(two)))
    # Draws happen when iterate is called, so both generators moved on alike.
    assert torch.equal(torch.rand(3, generator=one), torch.rand(3, generator=two))


def test_global_seed_controls_plain_iteration():
    batches = make()
    with torch.random.fork_rng():  # leave the global generator as other tests expect it
        torch.manual_seed(5)
        first = list(batches)
        torch.manual_seed(5)
        assert_same(first, list(batches))


@pytest.mark.parametrize("start", [0, 1, 6, 11])
def test_resume_gives_the_rest_of_the_epoch(start):
    batches = Batches(intensities(), torch.arange(N), batch_size=10, binarize="dynamic")
    whole = list(batches.epoch(seed=3, epoch=7))
    resumed = list(batches.epoch(seed=3, epoch=7, start=start))
    assert_same(resumed, whole[start:])  # binarized pixels included


def test_resume_skips_without_computing(monkeypatch):
    batches = Batches(intensities(), batch_size=10, binarize="dynamic")
    calls = []
    from latentvi.data import batches as module

    real = module.binarize_dynamic
    monkeypatch.setattr(module, "binarize_dynamic", lambda *a: calls.append(1) or real(*a))
    assert len(list(batches.epoch(0, 0, start=8))) == 3
    assert len(calls) == 3


def test_start_out_of_range():
    with pytest.raises(ValueError, match=r"start must be in 0\.\.11"):
        make().epoch(0, 0, start=12)


def test_sharding_gives_disjoint_halves():
    single = make(batch_size=20)
    ranks = [make(rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].examples_per_rank == 51 and ranks[0].num_batches == ranks[1].num_batches == 6
    shares = [torch.cat(index_batches(r.epoch(seed=2, epoch=5))) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 51
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    # Their union is the epoch's permutation less its last N mod 2 = 1 entry ...
    epoch = torch.cat(index_batches(single.epoch(seed=2, epoch=5)))
    assert set(shares[0].tolist()) | set(shares[1].tolist()) == set(epoch[:102].tolist())
    # ... and step b on both ranks covers batch b of one process with twice the batch size.
    steps = zip(*(index_batches(r.epoch(2, 5)) for r in ranks), strict=True)
    for (zero, one), together in zip(steps, index_batches(single.epoch(2, 5)), strict=True):
        assert set(zero.tolist()) | set(one.tolist()) == set(together[: 2 * len(zero)].tolist())


def test_sharding_divisible_union_is_epoch():
    ranks = [Batches(torch.arange(100), batch_size=7, rank=r, world_size=4) for r in range(4)]
    shares = [torch.cat(index_batches(r.epoch(0, 1))) for r in ranks]
    assert torch.equal(torch.cat(shares).sort().values, torch.arange(100))


def test_dynamic_binarization_values():
    images = intensities()
    batches = Batches(images, torch.arange(N), batch_size=10, binarize="dynamic")
    for binary, index in batches.epoch(0, 0):
        assert binary.dtype == torch.float32
        assert set(binary.unique().tolist()) <= {0.0, 1.0}
        assert torch.all(binary[images[index] == 0] == 0)
    # A fresh draw every epoch.
    first = torch.cat([b for b, _ in batches.epoch(0, 0)])
    second = torch.cat([b for b, _ in batches.epoch(0, 1)])
    order_first = torch.cat([i for _, i in batches.epoch(0, 0)])
    order_second = torch.cat([i for _, i in batches.epoch(0, 1)])
    assert not torch.equal(first[order_first.argsort()], second[order_second.argsort()])


def test_dynamic_binarization_mean_is_intensity():
    # 500 epochs of 40 examples: 20000 draws per pixel, standard error at most
    # 0.5 / sqrt(20000) = 0.0035; the tolerance 0.02 is over 5 standard errors.
    pixels = torch.linspace(0, 1, 11)
    batches = Batches(pixels.expand(40, 11).contiguous(), batch_size=8, binarize="dynamic")
    total = torch.zeros(11)
    for epoch in range(500):
        for (binary,) in batches.epoch(seed=0, epoch=epoch):
            total += binary.sum(0)
    torch.testing.assert_close(total / 20000, pixels, atol=0.02, rtol=0)


def test_from_dataset_flat():
    data = ImageDataset(torch.rand(12, 1, 2, 3), torch.arange(12), "toy")
    images, labels = next(iter(Batches.from_dataset(data, flat=True, batch_size=5).epoch(0, 0)))
    assert images.shape == (5, 6) and labels.shape == (5,)
    torch.testing.assert_close(images, data.flat()[labels])


def test_epoch_seed_is_stable_and_mixed():
    assert epoch_seed(0, 0) == epoch_seed(0, 0)
    seeds = {epoch_seed(s, e) for s in range(5) for e in range(5)}
    assert len(seeds) == 25 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"rank": 2, "world_size": 2}, "rank < world_size"),
        ({"binarize": "static"}, "'dynamic' or None"),
        ({"batch_size": 200, "drop_last": True}, "lower batch_size"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batches(intensities(), **{"batch_size": 10, **kwargs})


def test_binarize_checks_the_tensor():
    with pytest.raises(ValueError, match="floating-point"):
        Batches(torch.arange(N), batch_size=10, binarize="dynamic")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Batches(intensities() * 3, batch_size=10, binarize="dynamic")
    with pytest.raises(ValueError, match="share their first dimension"):
        Batches(intensities(), torch.arange(N - 1), batch_size=10)
