"""Data order and augmentation that a resumed run replays exactly.

The batch of iteration ``i`` and the random seed of every sample in it are functions of
``(seed, i)`` alone: epochs are seeded permutations of the data set laid end to end, and each
sample's augmentation runs under its own seed. So an interrupted run resumed at iteration ``i``
sees exactly the batches it would have seen, whatever the number of data-loading workers.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from pixelwise.errors import InputError

SampleKey = tuple[int, int]  # (index into the data set, augmentation seed)


def mix_seeds(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style mixing)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state >> 1


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """Batches for iterations ``start … total - 1`` as ``(index, augmentation seed)`` pairs.

    Args:
        dataset_size: number of samples.
        batch_size: samples per batch (per process under distributed training).
        seed: the run's seed.
        start: first iteration to produce (the resumed iteration count).
        total: iterations in the whole run.
        rank: this process's rank; each rank takes its own slice of a global batch.
        world_size: number of processes.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start: int, total: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if dataset_size < 1:
            raise InputError("the training set is empty")
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start, self.total, self.rank, self.world_size = start, total, rank, world_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for iteration in range(self.start, self.total):
            yield self.batch(iteration)

    def batch(self, iteration: int) -> list[SampleKey]:
        """The ``(index, seed)`` pairs of this process's share of iteration ``iteration``."""
        global_batch = self.batch_size * self.world_size
        first = iteration * global_batch + self.rank * self.batch_size
        return [(self._index(position), mix_seeds(self.seed, iteration, position))
                for position in range(first, first + self.batch_size)]

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.dataset_size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(mix_seeds(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.dataset_size, generator=generator)
        return int(self._order[offset])


class SeededSamples(Dataset):
    """Wraps a data set so that sample ``(index, seed)`` is augmented under its own seed,
    without disturbing the caller's random state."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would also queue a CUDA seeding, which
            # records a stack trace each call (about a millisecond: half of a super-resolution step).
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
