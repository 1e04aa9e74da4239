"""Mini-batches of in-memory tensors by slicing one random permutation per epoch: no
per-example Python, reproducible from a generator or an `(seed, epoch)` pair, resumable
mid-epoch without computing the skipped batches, and shardable across data-parallel ranks.

Random draws of one epoch, in order, from the epoch's CPU generator:
1. `torch.randperm(N)` (when `shuffle`);
2. one int64 `noise_seed` (when `binarize="dynamic"`).
Batch `b` on rank `r` binarizes with its own generator seeded from
`numpy.random.SeedSequence(noise_seed, spawn_key=(r, b))`, so skipping batches leaves the noise
of the remaining ones unchanged. Noise is drawn on the data's device: the same seed gives the
same batches on the same kind of device.

Sharding: with `world_size = W` every rank draws the same permutation and keeps every W-th entry
starting at its `rank` (the last `N mod W` entries are dropped, so shares are disjoint and equal in
size). Step `b` across all ranks then covers entries `[b*B*W, (b+1)*B*W)` of the permutation,
the same examples a single process would see with batch size `B*W`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from latentvi.data.binarize import binarize_dynamic
from latentvi.data.dataset import ImageDataset

__all__ = ["Batches", "epoch_seed"]

_SEED_BOUND = 2**63 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for epoch `epoch` of a run seeded with `seed`, well mixed (numpy SeedSequence) so
    nearby `(seed, epoch)` pairs give unrelated streams. In [0, 2**63)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0; got seed={seed}, epoch={epoch}.")
    state = np.random.SeedSequence(seed, spawn_key=(epoch,)).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def _batch_noise_seed(noise_seed: int, rank: int, batch: int) -> int:
    sequence = np.random.SeedSequence(noise_seed, spawn_key=(rank, batch))
    return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1


class Batches:
    """Batches over tensors that share their first dimension N.

    Each batch is a tuple with one slice per tensor, `[N, *S_i] -> [B, *S_i]` (the last batch of
    an epoch is smaller unless `drop_last`). With `binarize="dynamic"`, the tensor at
    `binarize_index` (float in [0, 1]) is replaced by a fresh Bernoulli draw in every batch.

    Args:
        *tensors: data, e.g. `images [N, C, H, W]` and `labels [N]`; moved to `device` once.
        batch_size: examples per batch on each rank.
        shuffle: draw a new permutation each epoch; otherwise keep the stored order.
        drop_last: leave out the last, smaller batch of each rank's share.
        binarize: "dynamic" for per-batch Bernoulli binarization, or None.
        binarize_index: which tensor to binarize.
        rank, world_size: this process's place among data-parallel processes.
        device: where to keep the data (default: where it is).
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        binarize: Literal["dynamic"] | None = None,
        binarize_index: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not tensors:
            raise ValueError(
                "Batches needs at least one tensor, e.g. Batches(images, labels, ...)."
            )
        if device is not None:
            tensors = tuple(tensor.to(device) for tensor in tensors)
        sizes = {tensor.shape[0] if tensor.dim() > 0 else None for tensor in tensors}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                f"tensors must share their first dimension; got shapes "
                f"{[tuple(tensor.shape) for tensor in tensors]}."
            )
        devices = {tensor.device for tensor in tensors}
        if len(devices) != 1:
            raise ValueError(
                f"tensors lie on several devices {devices}; pass device= to move them."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need world_size >= 1 and 0 <= rank < world_size; got rank={rank}, "
                f"world_size={world_size}."
            )
        if binarize not in (None, "dynamic"):
            raise ValueError(f"binarize must be 'dynamic' or None; got {binarize!r}.")
        if binarize is not None:
            if not 0 <= binarize_index < len(tensors):
                raise ValueError(
                    f"binarize_index={binarize_index} names no tensor; pass 0..{len(tensors) - 1}."
                )
            target = tensors[binarize_index]
            if not target.is_floating_point():
                raise ValueError(
                    f"binarize needs floating-point intensities; tensor {binarize_index} has "
                    f"dtype {target.dtype}."
                )
            if target.numel() > 0 and (target.min().item() < 0 or target.max().item() > 1):
                raise ValueError(
                    f"binarize needs intensities in [0, 1]; tensor {binarize_index} has values "
                    "outside. Scale it first (e.g. divide by 255)."
                )
        self.tensors: tuple[torch.Tensor, ...] = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.binarize = binarize
        self.binarize_index = binarize_index
        self.rank = rank
        self.world_size = world_size
        self.device: torch.device = next(iter(devices))
        if self.num_batches == 0:
            raise ValueError(
                f"each rank holds {self.examples_per_rank} examples, fewer than batch_size="
                f"{batch_size}, and drop_last=True leaves no batch; lower batch_size or set "
                "drop_last=False."
            )

    @classmethod
    def from_dataset(
        cls, dataset: ImageDataset, *, flat: bool = False, **kwargs: object
    ) -> Batches:
        """Batches of `(images, labels)`: images `[B, C, H, W]`, or `[B, C*H*W]` with `flat`."""
        images = dataset.flat() if flat else dataset.images
        return cls(images, dataset.labels, **kwargs)  # type: ignore[arg-type]

    @property
    def num_examples(self) -> int:
        """N, the examples held (all ranks together)."""
        return self.tensors[0].shape[0]

    @property
    def examples_per_rank(self) -> int:
        """This rank's share of each epoch, `N // world_size`."""
        return self.num_examples // self.world_size

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        full, rest = divmod(self.examples_per_rank, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch seeded from torch's global generator (so `torch.manual_seed` fixes it)."""
        return self.iterate()

    def epoch(self, seed: int, epoch: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Epoch `epoch` of a run seeded with `seed`, from batch `start` on: the same batches
        every call, so a resumed run repeats exactly the rest of an interrupted epoch."""
        return self.iterate(torch.Generator().manual_seed(epoch_seed(seed, epoch)), start=start)

    def make_batches(
        self, epoch: int, generator: torch.Generator, *, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """:func:`latentvi.train.fit`'s batch factory: ``fit(model, batches.make_batches,
        batches, config)`` draws each epoch from the generator ``fit`` seeds for it, resuming at
        batch ``start`` (:meth:`iterate`; ``epoch`` is already in the generator's seed)."""
        return self.iterate(generator, start=start)

    def iterate(
        self, generator: torch.Generator | None = None, *, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch from a CPU `generator` (drawn from at once, not lazily), skipping the first
        `start` batches without computing them. The same generator state gives the same batches,
        binarization included."""
        if generator is None:
            seed = int(torch.randint(0, _SEED_BOUND, (), dtype=torch.int64))
            generator = torch.Generator().manual_seed(seed)
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator; got one on {generator.device}."
            )
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start must be in 0..{self.num_batches}; got {start}.")
        count = self.num_examples
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        noise_seed = None
        if self.binarize == "dynamic":
            noise_seed = int(torch.randint(0, _SEED_BOUND, (), generator=generator))
        share = order[self.rank : self.world_size * self.examples_per_rank : self.world_size]
        return self._batches(share.to(self.device), noise_seed, start)

    def _batches(
        self, share: torch.Tensor, noise_seed: int | None, start: int
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        size = self.batch_size
        for index in range(start, self.num_batches):
            rows = share[index * size : (index + 1) * size]  # (B,)
            batch = [tensor.index_select(0, rows) for tensor in self.tensors]  # fast gather
            if noise_seed is not None:
                noise = torch.Generator(device=self.device)
                noise.manual_seed(_batch_noise_seed(noise_seed, self.rank, index))
                batch[self.binarize_index] = binarize_dynamic(batch[self.binarize_index], noise)
            yield tuple(batch)
