"""Blockwise prediction in Lightning: outputs created, blocks written and recorded, outputs
finished (the glue of :mod:`mitoseg.predict.blocks`).

A :class:`PredictJob` is one output: its plan and its zarr path. Global rank 0 creates (or checks,
to resume) every output before any rank predicts (:func:`prepare_output`); each rank runs its own
blocks (:class:`~mitoseg.predict.blocks.BlockSampler`); :class:`BlockWriter` writes each block
into the partial output and records it in the journal, so a run killed at any point and started
again redoes unfinished blocks only; once every rank is done, rank 0 builds the pyramid and
renames the output into place. ``mitoseg-predict`` runs one job (:class:`BlockPredictData`);
the test-time evaluation of ``mitoseg-train`` runs one per evaluated set.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mitoseg import io, signals
from mitoseg.files import check_replaceable, partial_path, publish
from mitoseg.io.intensity import RawIntensity
from mitoseg.predict.background import BackgroundWriter
from mitoseg.predict.blocks import (
    NOTHING,
    BlockJournal,
    BlockPlan,
    BlockSampler,
    block_loader,
    journal_path,
)
from mitoseg.predict.tiles import to_storage

log = logging.getLogger(__name__)


def _reset_peak_rss() -> None:
    """Start this process's peak-RSS count afresh (Linux; elsewhere nothing happens)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mib(key: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    return _status_mib("VmRSS") or 0.0


def _peak_rss_mib() -> float:
    """Peak RSS since :func:`_reset_peak_rss` (Linux), else since the process started."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def create_probs(
    path: Path,
    channels: Sequence[str],
    shape: tuple[int, ...],
    dtype: str,
    voxel_size_nm: Sequence[float] | None = None,
    chunks: Sequence[int] = (32, 256, 256),
) -> Any:
    """A new (C, Z, Y, X) probability zarr at ``path`` (replacing what is there), chunked
    (C, ``chunks``) clipped to the volume."""
    n = len(channels)
    chunks = (n, *(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True)))
    attrs: dict[str, Any] = {
        "axes": ["c", *io.AXES],
        "kind": "probabilities",
        "channels": list(channels),
        "scale": 255 if dtype == "uint8" else 1,
    }
    if voxel_size_nm is not None:
        attrs["voxel_size_nm"] = [float(v) for v in voxel_size_nm]
    return io.create_volume(path, (n, *shape), dtype, chunks=chunks, attrs=attrs, overwrite=True)


@dataclass(frozen=True)
class PredictJob:
    """One probability output: what to predict (``plan``) and where (``output``);
    ``raw_intensity`` (the input's statistics and normalisation) and ``compute`` (the precision
    and memory layout it is computed in, :meth:`mitoseg.hardware.Compute.record`) go into its
    attributes."""

    plan: BlockPlan
    output: Path
    voxel_size_nm: tuple[float, ...] | None = None
    raw_intensity: RawIntensity | None = None
    compute: dict[str, Any] | None = None

    @property
    def journal(self) -> BlockJournal:
        return BlockJournal(journal_path(self.output))

    def sampler(self, rank: int, world_size: int) -> BlockSampler:
        """This rank's unfinished blocks."""
        return BlockSampler(len(self.plan.blocks()), rank, world_size, self.journal.done())


def prepare_output(job: PredictJob, overwrite: bool) -> None:
    """Create the partial output and its journal, or check an unfinished one to resume it.

    Raises:
        VolumeError: the output exists and ``overwrite`` is False, or an unfinished output
            there was started with other settings.
        UnsafeOutputError: ``overwrite`` would remove an output, partial output or journal
            that mitoseg did not write (:func:`mitoseg.files.check_replaceable`).
    """
    output, journal, plan = job.output, job.journal, job.plan
    partial = partial_path(output)
    if overwrite:
        check_replaceable(output)  # replaced by publish() once every block is written
        check_replaceable(partial)
        journal.check_ours()
        for path in (partial, journal.path):
            if path.exists():
                shutil.rmtree(path)
    elif output.exists():
        raise io.VolumeError(f"output {output} already exists; pass overwrite=true to replace it")
    if partial.exists():
        journal.check(plan, output)
        _check_compute(job, partial)
        log.info("resuming %s: %d blocks already written", output, len(journal.done()))
        return
    if journal.path.exists():
        shutil.rmtree(journal.path)  # a journal without its output records nothing
    with signals.deferred():  # a partial output without its journal could not be resumed
        create_probs(partial, plan.channels, plan.shape, plan.dtype, job.voxel_size_nm, plan.chunks)
        if job.raw_intensity is not None:  # how the input's values were read, beside the result
            io.open_volume_writable(partial).attrs["raw_intensity"] = job.raw_intensity.to_dict()
        if job.compute is not None:  # bf16 or fp32 (mitoseg.hardware): what made these numbers
            io.open_volume_writable(partial).attrs["compute"] = job.compute
        journal.create(plan)
    signals.check()


def _check_compute(job: PredictJob, partial: Path) -> None:
    """Refuse to resume a partial output computed in another precision or layout."""
    stored = io.open_volume(partial).attrs.get("compute")
    if job.compute is None or stored is None or dict(stored) == job.compute:
        return
    raise io.VolumeError(
        f"{job.output}: the unfinished run there computed in {stored}, this one would compute in "
        f"{job.compute}; pass the same trainer.precision / channels_last to resume, or "
        "overwrite=true to start again"
    )


def finish_output(job: PredictJob) -> None:
    """Check that every block is recorded, build the pyramid and move the output in place."""
    n = len(job.plan.blocks())
    missing = sorted(set(range(n)) - job.journal.done())
    if missing:
        raise RuntimeError(
            f"{job.output}: blocks {missing[:10]} of {n} were not written; run again to finish them"
        )
    partial = partial_path(job.output)
    io.finalize_volume(partial)
    with signals.deferred():  # the output in place and its journal gone: one step
        publish(partial, job.output)
        shutil.rmtree(job.journal.path)
    signals.check()


class BlockWriter(pl.Callback):
    """Write each predicted block into its job's partial output (data loader ``i`` is job ``i``),
    record it, show progress; rank 0 finishes every output once all ranks are done.

    Works for ``trainer.predict`` and ``trainer.test`` alike. With ``io_threads``, blocks are
    written (and then recorded) in a background thread while the next one computes
    (:class:`mitoseg.predict.background.BackgroundWriter`); a failed write is raised at the next
    block; on an error or a signal the blocks computed so far are written and recorded first.

    Args:
        jobs: the outputs, in data-loader order.
        progress: show progress bars (rank 0: its blocks done / total, Mvox/s, and the tiles
            done in the current block, so a run of one large block does not sit at 0/1).
        io_threads: write in a background thread (False: each block when it is computed).
    """

    def __init__(
        self, jobs: Sequence[PredictJob] = (), progress: bool = True, io_threads: bool = True
    ) -> None:
        self.jobs, self.progress, self.io_threads = list(jobs), progress, io_threads
        self.summary: dict[str, Any] = {}
        self._writer: BackgroundWriter | None = None
        self._loaders: list[Any] = []
        self._outs: list[Any] = []
        self._blocks: list[list[Any]] = []
        self._bar: Any = None
        self._tile_bar: Any = None
        self._voxels = 0
        self._written = 0
        self._start = 0.0
        self._rss_start = 0.0

    def _begin(self, trainer: pl.Trainer, loaders: Any) -> None:
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self._loaders = loaders
        self._writer = BackgroundWriter(depth=1 if self.io_threads else 0)
        self._outs = [io.open_volume_writable(partial_path(j.output)) for j in self.jobs]
        self._blocks = [j.plan.blocks() for j in self.jobs]
        mine = sum(len(loader.sampler.pending) for loader in loaders)
        self._bar = tqdm(
            total=mine,
            unit="block",
            desc=f"predict rank {trainer.global_rank}" if trainer.world_size > 1 else "predict",
            disable=not self.progress or trainer.global_rank != 0,
        )
        self._voxels, self._written, self._start = 0, 0, time.perf_counter()
        _reset_peak_rss()  # the peak logged at the end is prediction's own
        self._rss_start = _rss_mib()

    def _watch_tiles(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the tiles of the block being predicted (a second bar under the blocks' one)."""
        if not self.progress or trainer.global_rank != 0:
            return
        self._tile_bar = tqdm(total=0, unit="tile", desc="tiles of block", leave=False)
        pl_module.tile_progress = self._tiles_done  # type: ignore[assignment]

    def _tiles_done(self, done: int, total: int) -> None:
        bar = self._tile_bar
        if done < bar.n or total != bar.total:  # a new block
            bar.reset(total=total)
        bar.update(done - bar.n)

    def _write(self, outputs: dict[str, Any], dataloader_idx: int) -> None:
        index = int(outputs["index"])
        if index == NOTHING:
            return
        block = self._blocks[dataloader_idx][index]
        out = self._outs[dataloader_idx]
        # the blended block is this callback's to consume: converted in its own memory
        stored = to_storage(outputs["probs"], str(out.dtype), inplace=True).cpu().numpy()
        journal = self.jobs[dataloader_idx].journal

        def write() -> None:  # the data, then its record: a rerun redoes an unrecorded block
            out[(slice(None), *block.slices)] = stored
            journal.mark(index)

        assert self._writer is not None
        self._writer.submit(write)
        self._voxels += block.size
        self._written += 1
        seconds = time.perf_counter() - self._start
        self._bar.set_postfix_str(f"{self._voxels / max(seconds, 1e-9) / 1e6:.2f} Mvox/s")
        self._bar.update(1)

    def _end(self, trainer: pl.Trainer) -> None:
        assert self._writer is not None
        self._writer.flush()  # every block written and recorded, or its error raised
        self._writer.close()
        self._bar.close()
        if self._tile_bar is not None:  # a later run of the module shows no closed bar
            self._tile_bar.close()
            self._tile_bar = None
            trainer.lightning_module.tile_progress = None  # type: ignore[assignment]
        seconds = time.perf_counter() - self._start
        peak = _peak_rss_mib()
        waits = self._io_waits()
        log.info(
            "rank %d wrote %d blocks in %.1f s, peak RSS %.0f MiB (%.0f MiB when it started); "
            "the network waited %.1f s for reads and %.1f s for writes",
            trainer.global_rank, self._written, seconds, peak, self._rss_start, *waits,
        )  # fmt: skip
        trainer.strategy.barrier("mitoseg-blocks-written")
        if trainer.global_rank == 0:
            for job in self.jobs:
                finish_output(job)
        trainer.strategy.barrier("mitoseg-output-final")
        self.summary = {
            "blocks": sum(len(b) for b in self._blocks),
            "voxels": int(sum(np.prod(j.plan.shape) for j in self.jobs)),
            "rank_blocks": self._written,
            "rank_seconds": seconds,
            "rank_peak_rss_mib": peak,
            "rank_start_rss_mib": self._rss_start,
            "rank_read_wait_seconds": waits[0],
            "rank_write_wait_seconds": waits[1],
        }

    def _io_waits(self) -> tuple[float, float]:
        """Seconds the main thread waited for blocks to be read, and to be written."""
        readers = [getattr(loader, "reader", None) for loader in self._loaders]
        read = sum(r.wait_seconds for r in readers if r is not None)
        return read, self._writer.wait_seconds if self._writer is not None else 0.0

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Stop the threads: the reader at once, the writer once the computed blocks are
        written (a rerun resumes after them)."""
        for loader in self._loaders:
            reader = getattr(loader, "reader", None)
            if reader is not None:
                reader.close()
        if self._writer is not None:
            self._writer.close(timeout=60.0)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, trainer.predict_dataloaders)
        self._watch_tiles(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, trainer.test_dataloaders)
        self._watch_tiles(trainer, pl_module)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        self._write(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # type: ignore[no-untyped-def]
        self._write(outputs, dataloader_idx)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)


class BlockPredictData(pl.LightningDataModule):
    """``mitoseg-predict``'s data: creates or checks the output (global rank 0, before any rank
    predicts) and serves each rank its unfinished blocks.

    Args:
        job: the output.
        overwrite: start again, discarding a finished or unfinished output at ``job.output``.
        num_workers: data-loader workers reading blocks.
        io_threads: read the next block in a background thread while one computes.
    """

    prepare_data_per_node = False  # one shared file system: only global rank 0 prepares

    def __init__(
        self,
        job: PredictJob,
        overwrite: bool = False,
        num_workers: int = 0,
        io_threads: bool = True,
    ) -> None:
        super().__init__()
        self.job, self.overwrite, self.num_workers = job, overwrite, num_workers
        self.io_threads = io_threads
        self.sampler: BlockSampler | None = None

    def prepare_data(self) -> None:
        prepare_output(self.job, self.overwrite)

    def setup(self, stage: str) -> None:
        self.sampler = self.job.sampler(self.trainer.global_rank, self.trainer.world_size)

    @property
    def pending(self) -> list[int]:
        return self.sampler.pending if self.sampler is not None else []

    def predict_dataloader(self) -> DataLoader:
        assert self.sampler is not None
        return block_loader(self.job.plan, self.sampler, self.num_workers, int(self.io_threads))
