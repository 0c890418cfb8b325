"""Training-sample order: per-epoch sample seeds and a loader that resumes mid-epoch.

:class:`EpochSampler` gives every training sample of every epoch its own index (and so its own
seed), split over DDP ranks; :class:`ResumableLoader` stores how far into the epoch it is in each
checkpoint, so that a resumed run draws the patches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["EpochSampler", "ResumableLoader"]


class EpochSampler(DistributedSampler):
    """Indices ``epoch * length + i``: every training sample of every epoch has its own seed.

    Under DDP, rank ``r`` of ``world`` takes ``i = r, r + world, ...``, so ranks (and the
    data-loader workers of each, which get distinct indices) draw different patches, and
    ``length`` stays the number of samples per epoch over all ranks. (A DistributedSampler, so
    Lightning keeps it instead of wrapping it in one whose ``set_epoch`` would not reach it.)

    Lightning calls :meth:`set_epoch`, also after resuming, and :class:`ResumableLoader` has the
    resumed epoch start where the interrupted one stopped (:meth:`skip_once`), so a resumed run
    draws the patches that the uninterrupted run would have drawn.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(range(length), num_replicas=world_size, rank=rank, shuffle=False)
        self.length = int(length)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_once(self, samples: int) -> None:
        """Start the next iteration ``samples`` (of this rank's) into the epoch."""
        self._skip = int(samples)

    def _mine(self) -> range:
        start = self.epoch * self.length
        return range(start + self.rank, start + self.length, self.num_replicas)

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self) -> Iterator[int]:
        mine = self._mine()
        skip, self._skip = min(self._skip, len(mine)), 0
        return iter(mine[skip:])


class ResumableLoader(DataLoader):
    """A training DataLoader that knows how far into the epoch it is.

    Lightning stores :meth:`state_dict` in each checkpoint and hands it to :meth:`load_state_dict`
    on resume. The first epoch after that continues after the batches already trained on
    (without reading them when the sampler is an :class:`EpochSampler`) instead of starting the
    epoch again, and later epochs follow on. (Resuming from a checkpoint written after
    validation, Lightning counts one epoch too many; the loader's own epoch is what the sampler
    gets, so the samples are still those of the uninterrupted run.)
    """

    _position: tuple[int, int] = (0, 0)  # (epoch, batches yielded in it)
    _resume: tuple[int, int] | None = None  # where the first iteration after a resume starts
    _offset = 0  # this loader's epoch minus Lightning's (its set_epoch), fixed at a resume

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self._resume = (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning's set_epoch.
        epoch, start = int(getattr(self.sampler, "epoch", 0)), 0
        if self._resume is not None:
            (resume_epoch, start), self._resume = self._resume, None
            self._offset = resume_epoch - epoch
        epoch += self._offset
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        skip = start
        if isinstance(self.sampler, EpochSampler):
            self.sampler.skip_once(start * int(self.batch_size or 1))
            skip = 0
        self._position = (epoch, start)
        for i, batch in enumerate(super().__iter__()):
            if i < skip:  # another sampler: read and drop what was trained on
                continue
            self._position = (epoch, self._position[1] + 1)
            yield batch
