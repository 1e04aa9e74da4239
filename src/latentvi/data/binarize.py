"""Binarization of grey-level images into Bernoulli samples with the pixel intensity as
probability: static (one fixed draw for a data set) or dynamic (a fresh draw every time the
image is seen, as in Burda et al. 2015's protocol for MNIST)."""

from __future__ import annotations

import torch

__all__ = ["binarize_dynamic", "binarize_static"]


def binarize_dynamic(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli draw per pixel: `[*S] -> [*S]`, values in {0, 1} of the dtype of `images`.

    A pixel becomes 1 when a uniform number drawn from `generator` (on the generator's device,
    then moved to `images.device`) falls below its intensity, so intensities must lie in [0, 1]
    (larger ones give 1, smaller ones 0; this hot path does not check).
    """
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1]; got dtype {images.dtype}.")
    uniform = torch.rand(
        images.shape, generator=generator, device=generator.device, dtype=images.dtype
    )
    # Compare straight into a tensor of the images' dtype: a bool tensor converted afterwards
    # costs ~20x more on the CPU.
    return torch.lt(uniform.to(images.device), images, out=torch.empty_like(images))


def binarize_static(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed binarization, `[*S] -> [*S]` in {0, 1}: the same `seed` gives the same values on
    every device, since the noise is drawn on the CPU from `torch.Generator().manual_seed(seed)`."""
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1]; got dtype {images.dtype}.")
    if images.numel() > 0:
        low, high = images.min().item(), images.max().item()
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"images must lie in [0, 1] to serve as probabilities; got [{low}, {high}]."
            )
    return binarize_dynamic(images, torch.Generator().manual_seed(seed))
