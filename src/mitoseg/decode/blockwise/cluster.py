"""Where blocks run: a local Dask cluster, an existing one, or this process (for tests).

Blocks are submitted as tasks that read and write zarr by path (workers open the arrays
themselves; paths must be visible to every worker, e.g. a shared file system), and only small
per-block summaries come back to the client. Each stage shows a progress bar (blocks done /
total, Mvox/s) and logs a summary line; :class:`RunLog` totals the stages.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mitoseg.geometry import Block

log = logging.getLogger(__name__)

# Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap threshold
# at 128 KiB: every block-sized numpy temporary is then a fresh mmap whose pages fault in anew
# (in one process with that setting the flood pass took 1.8x and the relabel 3x as long). Without
# it the workers keep freed memory for the next block; their peak follows the block either way.
# A worker is one thread on one core, as Dask's own OMP_NUM_THREADS=1 says, but zarr compresses
# and decompresses chunks in a pool of its own threads (cores + 4): one worker then took about
# 1.1 cores and two workers on two cores were 1.6x one. One zarr thread per worker process.
WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.nanny.pre-spawn-environ.ZARR_THREADING__MAX_WORKERS": "1",
}


@contextmanager
def dask_client(address: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A Dask ``distributed.Client`` for the duration of the block.

    Args:
        address: scheduler address of an existing cluster (e.g. ``tcp://10.0.0.1:8786``); None
            starts a ``LocalCluster`` that is shut down on exit.
        workers: worker processes of the local cluster (one thread each); 0 runs every block in
            this process, one after the other, with no Dask at all (tests, debugging).

    Yields:
        The client, or None for in-process runs.
    """
    import dask
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            log.info("dask: connected to %s (%d workers)", address, _n_workers(client))
            yield client
        return
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        yield None
        return
    environ = dict(os.environ)
    try:
        with (
            dask.config.set(WORKER_CONFIG),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            _restore(environ)
            log.info("dask: local cluster of %d worker processes", workers)
            yield client
    finally:
        _restore(environ)


def _restore(environ: dict[str, str]) -> None:
    """Undo what starting the workers wrote into this process's environment (e.g.
    OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_), which processes started later would inherit."""
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)


def _n_workers(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))


@dataclass
class StageStats:
    """What one stage did: blocks, voxels of their write_rois, wall-clock seconds."""

    name: str
    blocks: int
    voxels: int
    seconds: float

    @property
    def mvox_per_s(self) -> float:
        return self.voxels / 1e6 / max(self.seconds, 1e-9)


@dataclass
class RunLog:
    """Stage statistics of one blockwise run, for the final summary."""

    stages: list[StageStats] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, Any]:
        """Blocks, voxels (of the largest stage: the volume), seconds and Mvox/s in total."""
        seconds = time.perf_counter() - self.started
        voxels = max((s.voxels for s in self.stages), default=0)
        blocks = max((s.blocks for s in self.stages), default=0)
        return {
            "blocks": blocks,
            "voxels": voxels,
            "seconds": round(seconds, 3),
            "mvox_per_s": round(voxels / 1e6 / max(seconds, 1e-9), 3),
            "stages": {s.name: round(s.seconds, 3) for s in self.stages},
        }


def run_blocks(
    client: Any,
    stage: str,
    fn: Callable[..., Any],
    blocks: Sequence[Block],
    *shared: Any,
    per_block: Callable[[Block], tuple[Any, ...]] | None = None,
    run_log: RunLog | None = None,
    progress: bool = True,
) -> list[Any]:
    """``fn(block, *shared, *per_block(block))`` for every block; results in block order.

    Args:
        client: a ``distributed.Client``, or None to run in this process.
        stage: name for the progress bar and the log.
        fn: a module-level function (workers import it by name).
        blocks: the blocks to run.
        shared: arguments passed to every call (small: paths, settings).
        per_block: extra arguments of one block (e.g. its lookup tables), or None.
        run_log: collects this stage's statistics.
        progress: show a tqdm bar of blocks done / total and Mvox/s.
    """
    extra = per_block or (lambda block: ())
    voxels = {block.id: block.write_roi.size for block in blocks}
    bar = tqdm(total=len(blocks), desc=stage, unit="block", disable=not progress, leave=False)
    start, done, results = time.perf_counter(), 0, {}
    try:
        for block_id, result in _completed(client, fn, blocks, shared, extra):
            results[block_id] = result
            done += voxels[block_id]
            bar.update(1)
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"{done / 1e6 / max(elapsed, 1e-9):.1f} Mvox/s", refresh=False)
    finally:
        bar.close()
    stats = StageStats(stage, len(blocks), done, time.perf_counter() - start)
    log.info(
        "%s: %d blocks, %.1f Mvox in %.2f s (%.1f Mvox/s)",
        stage,
        stats.blocks,
        stats.voxels / 1e6,
        stats.seconds,
        stats.mvox_per_s,
    )
    if run_log is not None:
        run_log.stages.append(stats)
    return [results[block.id] for block in blocks]


def _completed(
    client: Any,
    fn: Callable[..., Any],
    blocks: Sequence[Block],
    shared: tuple[Any, ...],
    extra: Callable[[Block], tuple[Any, ...]],
) -> Iterator[tuple[int, Any]]:
    """(block id, result) pairs as blocks finish."""
    if client is None:
        for block in blocks:
            yield block.id, fn(block, *shared, *extra(block))
        return
    from distributed import as_completed

    # A bounded number of tasks in flight: per-block arguments (lookup tables) are built only
    # shortly before their block runs, so the client never holds them for the whole volume.
    limit = max(8, 4 * sum(client.nthreads().values()))
    pending, futures = iter(blocks), {}
    running = as_completed()

    def submit_next() -> None:
        block = next(pending, None)
        if block is not None:
            future = client.submit(fn, block, *shared, *extra(block), pure=False)
            futures[future] = block.id
            running.add(future)

    for _ in range(limit):
        submit_next()
    try:
        for future in running:
            yield futures.pop(future), future.result()
            submit_next()
    finally:
        client.cancel(list(futures))


def _array_path(array: Any) -> str:
    return str(Path(array.store.root) / array.path)


def downsample_task(block: Block, source: str, out: str, factors: Any, mean: bool) -> None:
    """One region of a pyramid level (``block.write_roi``, whole chunks) from the level
    before."""
    from mitoseg.decode.blockwise import store
    from mitoseg.io.ome import downsample_region

    level, region = store.open_writable(out), block.write_roi.slices
    downsample_region(store.open_array(source), level, region, factors, mean)


def pyramid_fill(client: Any, block_shape: Sequence[int]) -> Callable[..., None] | None:
    """How a finished (Z, Y, X) output's pyramid levels are filled (see
    :func:`mitoseg.io.atomic_dir`): on ``client``'s workers, in regions of whole chunks that
    read about ``block_shape`` voxels of the level before each; None (in this process, chunk
    by chunk) without a client.
    """
    if client is None:
        return None

    def fill(source: Any, out: Any, factors: Sequence[int], mean: bool) -> None:
        from mitoseg.geometry import block_grid

        wanted = [max(1, b // f) for b, f in zip(block_shape, factors, strict=True)]
        grid = block_grid(out.shape, wanted, chunks=out.chunks)
        run_blocks(
            client, "pyramid", downsample_task, list(grid), _array_path(source),
            _array_path(out), tuple(factors), mean, progress=False,
        )  # fmt: skip

    return fill
