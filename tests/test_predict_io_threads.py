"""Background reader and writer threads of blockwise prediction: the same output as without them,
their errors raised (never a hang), and a prediction stopped by a signal still resumes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mitoseg import io, signals
from mitoseg.files import partial_path
from mitoseg.predict.background import BackgroundWriter, Prefetcher
from mitoseg.predict.blocks import BlockDataset, BlockJournal, BlockPlan, journal_path
from mitoseg.predict.writer import BlockPredictData, BlockWriter, PredictJob
from mitoseg.train.module import SegmentationModule

SHAPE = (12, 16, 20)
BLOCK = (4, 8, 20)  # 6 blocks


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail instead of hanging."""

    def alarm(signum, frame):  # type: ignore[no-untyped-def]
        raise Hang(f"no result after {seconds} s")

    before = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def our_threads() -> list[str]:
    """The reader / writer threads still alive (a stopped reader ends within its poll)."""
    time.sleep(0.3)
    return [t.name for t in threading.enumerate() if t.name.startswith("mitoseg-")]


@pytest.fixture
def plan(tmp_path: Path) -> BlockPlan:
    data = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", data, chunks=(4, 8, 20))
    return BlockPlan(
        raw=str(tmp_path / "raw.zarr"), shape=SHAPE, channels=("a", "b"), dtype="uint8",
        block_shape=BLOCK, tile_shape=(4, 8, 8), overlap=0.5, blend="gaussian", tta="none",
        checkpoint="test", chunk_shape=(4, 8, 20),
    )  # fmt: skip


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1))


def predict(
    plan: BlockPlan, output: Path, model: nn.Module, io_threads: bool = True
) -> BlockWriter:
    writer = BlockWriter([PredictJob(plan, output)], progress=False, io_threads=io_threads)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, use_distributed_sampler=False, callbacks=[writer],
    )  # fmt: skip
    data = BlockPredictData(PredictJob(plan, output), io_threads=io_threads)
    module = SegmentationModule(model, channels=plan.channels, tile_batch=4)
    with deadline():
        trainer.predict(module, datamodule=data, return_predictions=False)
    return writer


def test_threads_give_the_same_output_and_read_and_write_off_the_main_thread(
    tmp_path: Path, plan: BlockPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: dict[str, set[str]] = {"read": set(), "write": set()}
    getitem, mark = BlockDataset.__getitem__, BlockJournal.mark

    def read(self, index):  # type: ignore[no-untyped-def]
        where["read"].add(threading.current_thread().name)
        return getitem(self, index)

    def record(self, index):  # type: ignore[no-untyped-def]
        where["write"].add(threading.current_thread().name)
        return mark(self, index)

    monkeypatch.setattr(BlockDataset, "__getitem__", read)
    monkeypatch.setattr(BlockJournal, "mark", record)
    predict(plan, tmp_path / "plain.zarr", net(), io_threads=False)
    assert where == {"read": {"MainThread"}, "write": {"MainThread"}}
    where = {"read": set(), "write": set()}
    summary = predict(plan, tmp_path / "threads.zarr", net()).summary
    assert where == {"read": {"mitoseg-reader"}, "write": {"mitoseg-writer"}}
    plain, threaded = (io.open_volume(tmp_path / n)[:] for n in ("plain.zarr", "threads.zarr"))
    assert threaded.shape == (2, *SHAPE) and threaded.any()
    np.testing.assert_array_equal(threaded, plain)
    assert summary["rank_blocks"] == 6 and summary["rank_read_wait_seconds"] >= 0
    assert our_threads() == []


def test_a_read_error_is_raised_not_a_hang(
    tmp_path: Path, plan: BlockPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    getitem = BlockDataset.__getitem__

    def read(self, index):  # type: ignore[no-untyped-def]
        if index == 3:
            raise io.VolumeError("raw.zarr: chunk 3 is damaged")
        return getitem(self, index)

    monkeypatch.setattr(BlockDataset, "__getitem__", read)
    output = tmp_path / "probs.zarr"
    with pytest.raises(io.VolumeError, match="chunk 3 is damaged"):
        predict(plan, output, net())
    assert BlockJournal(journal_path(output)).done() == set(range(3))
    assert our_threads() == []


def test_a_write_error_is_raised_not_a_hang(
    tmp_path: Path, plan: BlockPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = BlockJournal.mark

    def record(self, index):  # type: ignore[no-untyped-def]
        if index == 2:
            raise OSError("No space left on device")
        return mark(self, index)

    monkeypatch.setattr(BlockJournal, "mark", record)
    output = tmp_path / "probs.zarr"
    with pytest.raises(OSError, match="No space left"):
        predict(plan, output, net())
    assert BlockJournal(journal_path(output)).done() == {0, 1}  # none after the failed one
    assert not output.exists() and our_threads() == []


class StopAt(nn.Module):
    """``net`` that sends this process SIGTERM at its ``calls``-th call."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.net, self.calls = net(), calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises before this
        return self.net(x)


def test_a_sigterm_leaves_a_resumable_output(tmp_path: Path, plan: BlockPlan) -> None:
    expected = tmp_path / "whole.zarr"
    predict(plan, expected, net(), io_threads=False)
    output = tmp_path / "probs.zarr"
    with signals.handled(), pytest.raises(signals.Interrupted):
        predict(plan, output, StopAt(calls=8))  # 2 to 6 calls per block
    assert our_threads() == []
    journal = BlockJournal(journal_path(output))
    done = journal.done()
    assert 0 < len(done) < 6
    partial = io.open_volume(partial_path(output))[:]
    whole = io.open_volume(expected)[:]
    for index in done:  # every recorded block is written whole
        box = plan.blocks()[index]
        np.testing.assert_array_equal(
            partial[(slice(None), *box.slices)], whole[(slice(None), *box.slices)]
        )
    predict(plan, output, net())  # resumes the rest
    np.testing.assert_array_equal(io.open_volume(output)[:], whole)
    assert not journal.path.exists()


def test_prefetcher_keeps_order_and_raises_the_producers_error() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise ValueError("item 5 is broken")

    got = []
    with deadline(), pytest.raises(ValueError, match="item 5 is broken"):
        for item in Prefetcher(items(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert list(Prefetcher(iter(range(4)), depth=0)) == [0, 1, 2, 3]


def test_prefetcher_reads_one_block_ahead_not_more() -> None:
    produced = []

    def items() -> Iterator[int]:
        for i in range(5):
            produced.append(i)
            yield i

    reader = Prefetcher(items(), depth=1)
    for taken in range(1, 4):
        next(reader)
        time.sleep(0.2)  # computing: the reader has time to run ahead
        assert len(produced) == taken + 1
    reader.close()


def test_prefetcher_stops_when_closed() -> None:
    reader = Prefetcher(iter(range(10**9)), depth=1)
    assert next(reader) == 0
    reader.close()
    with pytest.raises(StopIteration):
        next(reader)
    assert our_threads() == []


def test_writer_runs_in_order_and_stops_after_a_failed_job() -> None:
    done: list[int] = []

    def job(i: int):  # type: ignore[no-untyped-def]
        def run() -> None:
            if i == 2:
                raise OSError("disk full")
            done.append(i)

        return run

    writer = BackgroundWriter(depth=1)
    with deadline(), pytest.raises(OSError, match="disk full"):
        for i in range(6):
            writer.submit(job(i))
        writer.flush()
    writer.close()
    assert done == [0, 1] and our_threads() == []


def test_writer_close_finishes_the_queued_jobs() -> None:
    started, done = threading.Event(), []

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        done.append("slow")

    writer = BackgroundWriter(depth=1)
    writer.submit(slow)
    started.wait(5)
    writer.submit(lambda: done.append("queued"))
    writer.close(timeout=5)
    assert done == ["slow", "queued"] and our_threads() == []


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_gathered_tiles_are_the_stacked_and_converted_ones(dtype: torch.dtype) -> None:
    from mitoseg.geometry import Box
    from mitoseg.predict.tiles import gather_tiles, raw_to_float

    raw = torch.randint(0, 256, (10, 20, 30)).to(dtype)
    boxes = [Box((0, 0, 0), (4, 8, 8)), Box((6, 12, 22), (4, 8, 8)), Box((3, 5, 7), (4, 8, 8))]
    stacked = torch.stack([raw[b.slices] for b in boxes])
    assert torch.equal(gather_tiles(raw, boxes, (4, 8, 8)), raw_to_float(stacked)[:, None])


def test_storage_conversion_in_place_gives_the_same_values() -> None:
    from mitoseg.predict.tiles import to_storage

    probs = torch.rand(2, 5, 6, 7) * 1.2 - 0.1
    expected = to_storage(probs, "uint8")
    assert torch.equal(to_storage(probs.clone(), "uint8", inplace=True), expected)
