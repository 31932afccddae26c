"""The training data order: a seeded permutation per epoch, split over the ranks, resumable mid-epoch.

A run that resumes from a checkpoint must see the same minibatches the interrupted run would have seen.
The order is therefore a pure function of (seed, epoch): every epoch is one permutation of the dataset,
cut to a whole number of global batches and dealt round-robin to the ranks (as ``DistributedSampler``
does), and the first ``skip`` batches of an epoch can be left out. Augmentation follows the same rule:
datasets that augment read their randomness from ``(seed, epoch, index)`` (``sample_generator``), so a
sample looks the same whichever rank, worker or resumed process draws it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample's augmentation in one epoch."""
    return torch.Generator().manual_seed(((seed * 1_000_003) + epoch) * 1_000_003 + index)


class EpochSampler(Sampler[int]):
    """This rank's indices of epoch ``epoch``'s permutation, after the first ``skip`` batches."""

    def __init__(self, size: int, batch: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        if size < batch * world:
            raise ValueError(f"{size} training samples cannot fill one global batch of {batch} x {world}")
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.epoch = self.skip = 0
        self.dataset: Dataset | None = None  # told the epoch, for augmentation (see ``sample_generator``)

    @property
    def batches_per_epoch(self) -> int:
        """Minibatches per rank in one epoch (the last partial global batch is dropped)."""
        return self.size // (self.batch * self.world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        if self.dataset is not None and hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = order[: self.batches_per_epoch * self.batch * self.world][self.rank :: self.world]
        return iter(mine[self.skip * self.batch :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.batch


def epoch_loader(
    dataset: Dataset,
    batch: int,
    world: int = 1,
    rank: int = 0,
    seed: int = 0,
    workers: int = 0,
    pin: bool = False,
    collate=None,
) -> DataLoader:
    """A training loader over ``EpochSampler``: per-process ``batch``, whole batches only."""
    sampler = EpochSampler(len(dataset), batch, world, rank, seed)  # type: ignore[arg-type]
    sampler.dataset = dataset
    return DataLoader(
        dataset, batch, sampler=sampler, drop_last=True, num_workers=workers, pin_memory=pin, collate_fn=collate,
        persistent_workers=False,  # workers are re-made each epoch, so they see the epoch just set
    )  # fmt: skip
