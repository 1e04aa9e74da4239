"""Static and dynamic binarization."""

import pytest
import torch

from latentvi.data import binarize_dynamic, binarize_static


def test_static_is_deterministic_in_seed():
    images = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    first, again, other = (binarize_static(images, s) for s in (3, 3, 4))
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_static_respects_certain_pixels():
    images = torch.tensor([0.0, 1.0]).repeat(100)
    assert torch.equal(binarize_static(images, 0), images)


def test_static_mean_matches_intensity():
    # 20000 draws per intensity: the standard error is at most 0.5 / sqrt(20000) = 0.0035,
    # so a tolerance of 0.02 is over 5 standard errors.
    intensities = torch.linspace(0, 1, 11)
    draws = binarize_static(intensities.expand(20000, 11).contiguous(), seed=1)
    torch.testing.assert_close(draws.mean(0), intensities, atol=0.02, rtol=0)


def test_dynamic_draws_fresh_values():
    images = torch.full((1000,), 0.5)
    generator = torch.Generator().manual_seed(0)
    first, second = binarize_dynamic(images, generator), binarize_dynamic(images, generator)
    assert not torch.equal(first, second)


def test_refuses_out_of_range_and_integers():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize_static(torch.tensor([0.5, 1.5]), 0)
    with pytest.raises(ValueError, match="floating point"):
        binarize_static(torch.tensor([0, 1]), 0)
