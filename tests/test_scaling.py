"""latentvi.scaling (DreamerV3's robust targets): symlog/symexp are inverses, two-hot encoding and
decoding are exact on the bucket grid and between buckets, and the percentile return normalizer
matches np.percentile with the EMA written out by hand."""

import numpy as np
import pytest
import torch

from latentvi.scaling import (
    BINS,
    LIMIT,
    PercentileNormalizer,
    TwoHotSymlog,
    symexp,
    symlog,
    twohot,
    twohot_bins,
)

LARGE = [-3e8, -1e5, -1234.5, -1.0, -1e-6, 0.0, 1e-6, 0.5, 1.0, 7.0, 1e5, 3e8]


def test_symlog_and_symexp_are_inverses_including_large_and_negative_values():
    x = torch.tensor(LARGE, dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-15)
    y = torch.linspace(-LIMIT, LIMIT, 401, dtype=torch.float64)
    torch.testing.assert_close(symlog(symexp(y)), y, rtol=1e-12, atol=1e-12)
    # odd, the identity to first order at 0, logarithmic far out
    torch.testing.assert_close(symlog(-x), -symlog(x))
    assert symlog(torch.tensor(1e-8, dtype=torch.float64)).item() == pytest.approx(1e-8, rel=1e-7)
    assert symlog(torch.tensor(1e8, dtype=torch.float64)).item() == pytest.approx(np.log1p(1e8))


def test_the_bucket_grid_is_v3s():
    bins = twohot_bins(dtype=torch.float64)
    assert bins.shape == (BINS,) == (255,)
    assert bins[0].item() == -20.0 and bins[-1].item() == 20.0 and bins[127].item() == 0.0
    torch.testing.assert_close(bins.diff(), torch.full((254,), 40 / 254, dtype=torch.float64))
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="bins"):
            twohot_bins(bad)


def test_twohot_is_one_hot_on_the_grid():
    bins = twohot_bins(dtype=torch.float64)
    encoding = twohot(bins, bins)
    torch.testing.assert_close(encoding, torch.eye(BINS, dtype=torch.float64))


def test_twohot_between_buckets_splits_by_closeness_and_the_mean_recovers_the_value():
    bins = twohot_bins(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(1000, generator=g, dtype=torch.float64) * 2 - 1) * 19.99
    encoding = twohot(y, bins)
    assert ((encoding > 0).sum(-1) <= 2).all() and (encoding >= 0).all()
    torch.testing.assert_close(encoding.sum(-1), torch.ones_like(y))
    torch.testing.assert_close((encoding * bins).sum(-1), y, rtol=0, atol=1e-12)
    # the two weights sit on adjacent buckets, the one nearer y heavier: by hand for one value
    step = 40 / 254
    value = torch.tensor([0.25 * step], dtype=torch.float64)  # a quarter of the way to bucket 128
    row = twohot(value, bins)[0]
    assert row[127].item() == pytest.approx(0.75) and row[128].item() == pytest.approx(0.25)
    # beyond the grid: clipped to its ends
    torch.testing.assert_close(
        twohot(torch.tensor([-50.0, 50.0], dtype=torch.float64), bins),
        torch.eye(BINS, dtype=torch.float64)[[0, -1]],
    )


def test_twohot_symlog_distribution_decodes_its_own_target_exactly():
    """Logits that put the two-hot target's probabilities on the buckets decode to the scalar:
    symexp(Σ_k p_k b_k) = y, for rewards of any size and sign."""
    y = torch.tensor(LARGE, dtype=torch.float64)
    target = twohot(symlog(y), twohot_bins(dtype=torch.float64))
    distribution = TwoHotSymlog(torch.log(target))  # zeros -> −inf logits -> probability 0
    assert distribution.batch_shape == y.shape and distribution.event_shape == ()
    torch.testing.assert_close(distribution.mean, y, rtol=1e-9, atol=1e-12)
    # log_prob is minus the cross-entropy with the two-hot target, by hand
    logits = torch.randn(len(LARGE), BINS, dtype=torch.float64, generator=torch.Generator())
    expected = (target * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(TwoHotSymlog(logits).log_prob(y), expected)
    # zero logits (a zero-initialized head) predict 0
    assert TwoHotSymlog(torch.zeros(3, BINS)).mean.abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="buckets"):
        TwoHotSymlog(torch.zeros(3, 7), twohot_bins())


def test_twohot_cross_entropy_is_smallest_at_the_target():
    """Gradient descent on free logits by the cross-entropy drives the prediction to the
    target (a real regression property, not an identity)."""
    torch.manual_seed(0)
    y = torch.tensor([-300.0, -2.0, 0.0, 3.5, 1e4])
    logits = torch.zeros(5, BINS, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        (-TwoHotSymlog(logits).log_prob(y).sum()).backward()
        optimizer.step()
    torch.testing.assert_close(TwoHotSymlog(logits).mean, y, rtol=2e-2, atol=2e-2)


def _reference(batches, decay, floor=1.0):
    low = high = 0.0
    scales = []
    for batch in batches:
        low = decay * low + (1 - decay) * np.percentile(batch, 5)
        high = decay * high + (1 - decay) * np.percentile(batch, 95)
        scales.append((low, high, max(floor, high - low)))
    return scales


@pytest.mark.parametrize("decay", [0.99, 0.5, 0.0])
def test_percentile_normalizer_matches_numpy(decay):
    rng = np.random.default_rng(0)
    # returns whose spread grows, then shrinks below the floor
    batches = [rng.normal(size=(15, 40)) * s + m for s, m in ((50, 3), (200, -10), (0.01, 0))]
    batches += [rng.exponential(size=(15, 40)) * 30 for _ in range(5)]
    normalizer = PercentileNormalizer(decay).double()
    for batch, (low, high, scale) in zip(batches, _reference(batches, decay), strict=True):
        got = normalizer.update(torch.as_tensor(batch))
        assert normalizer.low.item() == pytest.approx(low, rel=1e-12, abs=1e-12)
        assert normalizer.high.item() == pytest.approx(high, rel=1e-12, abs=1e-12)
        assert got.item() == pytest.approx(scale, rel=1e-12)
    if decay == 0.0:  # the small batch alone sets the scale: its range is below the floor of 1
        fresh = PercentileNormalizer(0.0)
        assert fresh.update(torch.as_tensor(batches[2])).item() == 1.0
    assert set(normalizer.state_dict()) == {"low", "high"}  # saved with the agent


def test_percentile_normalizer_rejects_bad_arguments():
    for kwargs, name in (({"decay": 1.0}, "decay"), ({"low": 0.9, "high": 0.1}, "low, high"),
                         ({"floor": 0.0}, "floor")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{name} = "):
            PercentileNormalizer(**kwargs)
    with pytest.raises(ValueError, match="empty"):
        PercentileNormalizer().update(torch.zeros(0))
