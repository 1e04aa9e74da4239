"""The in-memory image data set container and the error raised when a data set is not on disk."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DatasetNotFoundError", "ImageDataset"]


class DatasetNotFoundError(ValueError):
    """A data set's files are not where we looked; the message says how to get them."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with their class labels, held in memory.

    Shapes: `images` is float32 `[N, C, H, W]` with values in [0, 1]; `labels` is int64 `[N]`.
    `name` says where the data came from, e.g. `"mnist/train"`.
    """

    images: torch.Tensor
    """float32 `[N, C, H, W]`, pixel intensities in [0, 1]."""
    labels: torch.Tensor
    """int64 `[N]`, class indices."""
    name: str
    """Data set and split, e.g. `"mnist/train"`."""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a float32 tensor of shape [N, C, H, W]; got dtype "
                f"{self.images.dtype} and shape {tuple(self.images.shape)}. "
                "Convert with images.float() and add a channel axis with images.unsqueeze(1)."
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"labels must be an int64 tensor of shape [N]; got dtype {self.labels.dtype} "
                f"and shape {tuple(self.labels.shape)}. Convert with labels.long().flatten()."
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"images holds {self.images.shape[0]} examples but labels holds "
                f"{self.labels.shape[0]}; pass one label per image."
            )
        if self.images.numel() > 0:
            low, high = self.images.min().item(), self.images.max().item()
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"images must lie in [0, 1]; got values in [{low}, {high}]. "
                    "Divide by the largest pixel value (e.g. 255) first."
                )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one image, `(C, H, W)`."""
        channels, height, width = self.images.shape[1:]
        return (channels, height, width)

    @property
    def num_features(self) -> int:
        """Pixels per image, `C * H * W`."""
        channels, height, width = self.shape
        return channels * height * width

    def flat(self) -> torch.Tensor:
        """The images as rows: `[N, C, H, W] -> [N, C*H*W]`, a view when `images` is contiguous
        (it always is for data from `load_dataset`)."""
        return self.images.reshape(len(self), self.num_features)
