"""What the trainer needs from a data set, and the deterministic order it reads it in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .images import ImageBatch


@dataclass
class TensorDataset:
    """Images held in memory: (N, C, H, W) float in [-1, 1] and (N,) int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    label_names: list[str] | None
    name: str = "tensors"

    def __post_init__(self) -> None:
        assert self.images.ndim == 4 and self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.label_names) if self.label_names else 0

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]


class IndexStream:
    """An endless stream of data-set indices: epoch e is a permutation drawn from seed + e, and epochs are
    concatenated (no sample is dropped, data sets smaller than a batch work).

    Batch s is `stream[s * B : (s + 1) * B]`, a function of (seed, step) alone: resuming at step s needs no
    saved sampler state, and every process computes the same global batch and takes its own slice (the
    distributed sampler), so the samples a step sees do not depend on the number of processes.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("the data set is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._cache: dict[int, torch.Tensor] = {}

    def epoch(self, e: int) -> torch.Tensor:
        perm = self._cache.get(e)
        if perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm = torch.randperm(self.size, generator=g)
            else:
                perm = torch.arange(self.size)
            self._cache = {k: v for k, v in self._cache.items() if k >= e - 1}  # keep at most two epochs
            self._cache[e] = perm
        return perm

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        start, stop = step * batch_size, (step + 1) * batch_size
        parts = []
        for e in range(start // self.size, (stop - 1) // self.size + 1):
            lo = max(start - e * self.size, 0)
            hi = min(stop - e * self.size, self.size)
            parts.append(self.epoch(e)[lo:hi])
        return torch.cat(parts)


class StepBatches:
    """The images one process reads at each step, as a map-style data set indexed by step, so a
    torch DataLoader with workers can decode them ahead of time (folders of images). Item `step` is the
    list of this process's micro-batches: slice (m * world + rank) of the global batch, for each m."""

    def __init__(
        self, dataset, stream: IndexStream, batch_size: int, accum: int, world: int, rank: int
    ) -> None:
        self.dataset, self.stream = dataset, stream
        self.batch_size, self.accum, self.world, self.rank = batch_size, accum, world, rank
        self.per = batch_size // (accum * world)

    def micro_slice(self, m: int) -> slice:
        k = m * self.world + self.rank
        return slice(k * self.per, (k + 1) * self.per)

    def __getitem__(self, step: int) -> list[ImageBatch]:
        idx = self.stream.batch(step, self.batch_size)
        return [read_batch(self.dataset, idx[self.micro_slice(m)]) for m in range(self.accum)]


def read_batch(dataset, indices: torch.Tensor) -> ImageBatch:
    """One micro-batch with its labels. Image data sets report unreadable files (replaced, with the
    replacement's own label) instead of failing; latent caches give posterior moments (N, 2, 2, C, h, w)."""
    if hasattr(dataset, "load_batch"):
        return dataset.load_batch(indices)
    if hasattr(dataset, "load_moments"):
        moments, labels = dataset.load_moments(indices)
        return ImageBatch(moments, labels)
    images, labels = dataset.load(indices)
    return ImageBatch(images, labels)


def step_batches(loader_source: StepBatches, start: int, stop: int, num_workers: int):
    """Iterate the items of steps start..stop-1: in this process, or prefetched by worker processes."""
    if num_workers <= 0:
        return (loader_source[s] for s in range(start, stop))
    from torch.utils.data import DataLoader

    return iter(
        DataLoader(
            loader_source,  # type: ignore[arg-type]
            batch_size=None,
            sampler=range(start, stop),
            num_workers=num_workers,
            prefetch_factor=2,
            persistent_workers=False,
        )
    )
