"""A training loader whose order and augmentations survive a kill.

`SeededSampler` draws the epoch's order from (seed, epoch) and gives every
sample a seed of its own, (index, sample_seed) keys that the datasets turn
into a seeded augmentation. `ResumableDataLoader` counts the batches it has
handed out; Lightning saves that count in the checkpoint (the loader has
`state_dict` / `load_state_dict`) and on resume the sampler starts the
interrupted epoch at the next unseen batch instead of restarting it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant (splitmix64) to decorrelate the seeds


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation in one epoch (splitmix64 of the three)."""
    z = (seed * _MIX + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + _MIX) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


class SeededSampler(DistributedSampler):
    """Shuffled (seed, epoch) order, sharded over ranks, yielding `(index, sample_seed)` keys.

    A `DistributedSampler`, so Lightning keeps it under DDP and calls
    `set_epoch`. `start` skips the first samples of the next iteration (mid-epoch resume).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: self.total_size]
        else:  # pad by repeating, as DistributedSampler does
            order += (order * (self.total_size // max(n, 1) + 1))[: self.total_size - n]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        epoch = self.epoch
        for idx in self.indices()[start:]:
            yield idx, sample_seed(self.seed, epoch, idx)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `SeededSampler` that Lightning can checkpoint mid-epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SeededSampler):
            raise ValueError(f"ResumableDataLoader needs a SeededSampler, got {type(self.sampler).__name__}")
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: the real iterator (and its workers) starts at the first
        # next(), after Lightning has called set_epoch and restored our state.
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        self._yielded = -(-self.sampler.start // self.batch_size)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Epoch, number of batches handed out in it, and the batch size they had."""
        return {"epoch": int(self.sampler.epoch), "batches": int(self._yielded), "batch_size": int(self.batch_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after the samples it already handed out.

        Resuming with another batch size is applied, with a warning: the
        interrupted epoch continues after the samples already seen (counted
        with the saved batch size), so none is skipped or repeated.
        """
        self.sampler.set_epoch(state["epoch"])
        saved_bs = int(state.get("batch_size", self.batch_size))
        seen = int(state["batches"]) * saved_bs  # samples of this rank already trained on
        if saved_bs != self.batch_size:
            log.warning(
                "resuming with batch size %d instead of the checkpoint's %d: applied; epoch %d continues "
                "after the %d samples already seen", self.batch_size, saved_bs, state["epoch"], seen,
            )
        left = self.sampler.num_samples - seen
        if left <= 0 or (self.drop_last and left < self.batch_size):
            seen = 0  # the epoch was complete: the next one starts from its first sample
        self.sampler.start = seen
        self._yielded = -(-seen // self.batch_size)
