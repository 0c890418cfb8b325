"""SIGTERM (SLURM, ``timeout``) and SIGINT (Ctrl-C) sent to running console scripts: each stops
within seconds, also inside a block, keeps what it finished, says how to resume in its last line
and exits 128 + signum; running that line resumes or finishes the work."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io, signals
from mitoseg.datasets.synthetic import make_volume
from tests.test_cli import BIN, TINY

FIXTURE = Path(__file__).parent / "fixtures" / "layout_v0.ckpt"  # tiles (16, 32, 32)
STOP_S = 8.0  # "within seconds", with room for a busy test machine


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MITOSEG_DEBUG", "HYDRA_FULL_ERROR")}
    return env | {"MITOSEG_CACHE": str(cwd / "cache")}


def _interrupt(
    args: list[str], cwd: Path, ready: Callable[[], bool], sig: int, delay: float = 0.0
) -> tuple[int, float, str]:
    """Start ``args``, send ``sig`` ``delay`` s after ``ready()``; (status, seconds to stop,
    output). Fails if the command ends before it could be signalled."""
    log = cwd / f"{Path(args[0]).name}.out"
    with log.open("w") as out:
        process = subprocess.Popen(
            args, cwd=cwd, env=_env(cwd), stdout=out, stderr=subprocess.STDOUT, text=True
        )
        try:
            while not ready():
                assert process.poll() is None, f"ended before the signal:\n{log.read_text()}"
                time.sleep(0.05)
            time.sleep(delay)
            assert process.poll() is None, f"ended before the signal:\n{log.read_text()}"
            start = time.perf_counter()
            process.send_signal(sig)
            status = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return status, time.perf_counter() - start, log.read_text()


def _resume_command(output: str, prog: str) -> list[str]:
    """The command of the hint, the last line of the output."""
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: ") and f": {prog} " in last, last
    return shlex.split(last[last.index(f": {prog} ") + 2 :])


def _rerun(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=cwd, env=_env(cwd), capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _volume(path: Path, shape: tuple[int, int, int]) -> Path:
    raw, _ = make_volume(shape, seed=1)
    io.write_volume(path, raw, attrs={"voxel_size_nm": [5.0, 5.0, 5.0]})
    return path


# --------------------------------------------------------------------------------- predict


def test_predict_stops_inside_its_one_block_on_sigterm(tmp_path: Path) -> None:
    """At 8f5406b the block (675 tiles, several seconds) ran to its end and exited 0."""
    _volume(tmp_path / "raw.zarr", (32, 256, 256))  # one block
    args = [
        str(BIN / "mitoseg-predict"), f"ckpt={FIXTURE}", "input=raw.zarr", "output=probs.zarr",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    partial = tmp_path / ".probs.zarr.partial"  # made just before prediction starts
    status, seconds, output = _interrupt(args, tmp_path, partial.exists, signal.SIGTERM, 1.0)
    assert status == 128 + signal.SIGTERM, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    assert "wrote probs.zarr" not in output and not (tmp_path / "probs.zarr").exists()
    assert "mitoseg-predict: stopped by SIGTERM" in output
    command = _resume_command(output, "mitoseg-predict")
    assert command[1:] == args[1:]  # the same command resumes


def test_predict_keeps_finished_blocks_on_sigint_and_the_hint_resumes(tmp_path: Path) -> None:
    """At 8f5406b SIGINT ended in Lightning's 'Detected KeyboardInterrupt' and exit 1, with no
    word on resuming."""
    _volume(tmp_path / "raw.zarr", (32, 64, 128))
    args = [
        str(BIN / "mitoseg-predict"), f"ckpt={FIXTURE}", "input=raw.zarr", "output=probs.zarr",
        "block_shape=[16,64,64]", "chunk_shape=[16,64,64]", "trainer.enable_progress_bar=false",
        "overwrite=true",  # dropped from the hint: it would discard the finished blocks
    ]  # fmt: skip
    first = tmp_path / ".probs.zarr.blocks" / "done" / "0"
    status, seconds, output = _interrupt(args, tmp_path, first.exists, signal.SIGINT)
    assert status == 128 + signal.SIGINT, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    kept = len(list(first.parent.iterdir()))
    assert 1 <= kept < 4, "the run ended before it could be interrupted"
    assert f"mitoseg-predict: {kept} finished blocks are kept; to resume, rerun:" in output
    command = _resume_command(output, "mitoseg-predict")
    assert "overwrite=true" not in command
    result = _rerun(command, tmp_path)
    assert f"resuming probs.zarr: {kept} blocks already written" in result.stdout
    assert io.open_volume(tmp_path / "probs.zarr").shape == (1, 32, 64, 128)


# ----------------------------------------------------------------------------------- train

RUN = [
    *[o for o in TINY if not o.startswith(("trainer.max_steps", "hydra.run.dir"))],
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "logger=none",
]


def _step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


def test_train_saves_last_ckpt_on_sigterm_while_fitting_and_ckpt_last_resumes(
    tmp_path: Path,
) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [str(BIN / "mitoseg-train"), *RUN, "trainer.max_steps=100000", "test=false"]
    status, seconds, output = _interrupt(
        [*args, "hydra.run.dir=run"], tmp_path, last.exists, signal.SIGTERM
    )  # fitting: the first checkpoint is written
    assert status == 128 + signal.SIGTERM, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    step = _step(last)
    assert f"interrupted at step {step}: saved {last}" in output
    command = _resume_command(output, "mitoseg-train")
    assert command[-2:] == [f"hydra.run.dir={tmp_path / 'run'}", "ckpt=last"]
    # the same run, told to end two steps later
    steps = f"trainer.max_steps={step + 2}"
    command = [steps if a.startswith("trainer.max_steps=") else a for a in command]
    result = _rerun(command, tmp_path)
    assert f"Restored all states from the checkpoint at {last}" in result.stdout + result.stderr
    assert _step(last) >= step + 1


@pytest.mark.slow
def test_train_stops_test_time_prediction_on_sigterm_and_ckpt_last_finishes(
    tmp_path: Path,
) -> None:
    """At 8f5406b the run was still predicting the test volume minutes after the signal."""
    args = [str(BIN / "mitoseg-train"), *RUN, "trainer.max_steps=2", "data.test.shape=[32,256,256]"]
    partial = tmp_path / "run" / ".test_probs.zarr.partial"
    status, seconds, output = _interrupt(
        [*args, "hydra.run.dir=run"], tmp_path, partial.exists, signal.SIGTERM, 1.0
    )
    assert status == 128 + signal.SIGTERM, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    assert not (tmp_path / "run" / "metrics.json").exists()
    command = _resume_command(output, "mitoseg-train")
    assert command[-1] == "ckpt=last"
    result = _rerun(command, tmp_path)
    assert "test fg_iou" in result.stdout and (tmp_path / "run" / "metrics.json").is_file()


# ---------------------------------------------------------------------------- decode, measure


@pytest.mark.slow
def test_segment_stops_mid_decode_on_sigint_and_leaves_no_partial_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 256, (1, 128, 512, 512), dtype=np.uint8)
    attrs = {"kind": "probabilities", "channels": ["foreground"], "scale": 255}
    io.write_volume(tmp_path / "probs.zarr", probs, chunks=(1, 8, 512, 512), attrs=attrs)
    args = [str(BIN / "mitoseg-segment"), "probs=probs.zarr", "hydra.run.dir=run", "slab=8"]
    run = tmp_path / "run"

    def writing() -> bool:  # the mask is being built under a temporary name
        return run.is_dir() and any(p.name.startswith(".mask.zarr") for p in run.iterdir())

    status, seconds, output = _interrupt(args, tmp_path, writing, signal.SIGINT, 0.1)
    assert status == 128 + signal.SIGINT, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "segment.log"]  # nothing half
    _rerun(_resume_command(output, "mitoseg-segment"), tmp_path)
    assert (run / "mask.zarr").is_dir()


@pytest.mark.slow
def test_measure_stops_mid_run_on_sigterm(tmp_path: Path) -> None:
    labels = np.zeros((30, 192, 192), np.uint32)
    cubes = labels[1::6, 1::6, 1::6].shape
    ids = np.arange(1, int(np.prod(cubes)) + 1, dtype=np.uint32).reshape(cubes)
    for dz, dy, dx in np.ndindex(3, 3, 3):  # 3 x 3 x 3 cubes, thousands of objects
        cube = labels[1 + dz :: 6, 1 + dy :: 6, 1 + dx :: 6]
        cube[: cubes[0], : cubes[1], : cubes[2]] = ids
    io.write_volume(tmp_path / "labels.zarr", labels, attrs={"voxel_size_nm": [5.0, 5.0, 5.0]})
    args = [str(BIN / "mitoseg-measure"), "labels.zarr", "--out", "table", "-v"]
    log = tmp_path / "mitoseg-measure.out"
    started = lambda: log.exists() and "pass 1:" in log.read_text()  # noqa: E731
    status, seconds, output = _interrupt(args, tmp_path, started, signal.SIGTERM, 0.3)
    assert status == 128 + signal.SIGTERM, output
    assert seconds < STOP_S, f"{seconds:.1f} s to stop"
    assert not (tmp_path / "table" / "summary.json").exists()
    _rerun(_resume_command(output, "mitoseg-measure"), tmp_path)
    assert (tmp_path / "table" / "summary.json").is_file()


# ---------------------------------------------------------------------------------- module


def test_a_deferred_signal_waits_for_the_next_check_and_a_second_one_does_not(
    monkeypatch,
) -> None:
    # what this process had (Lightning leaves SIG_IGN after a KeyboardInterrupt in a trainer call)
    before = signal.getsignal(signal.SIGINT)
    with signals.handled():
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert signals.received() == signal.SIGINT  # only noted
            with pytest.raises(signals.Interrupted) as stop:
                signals.check()
            assert stop.value.clean and stop.value.exit_code == 130
            with pytest.raises(signals.Interrupted) as stop:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises at once
            assert not stop.value.clean
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert signals.received() == 0  # nothing left for later work in this process
    signals.check()


def test_a_signal_while_the_output_is_created_leaves_it_resumable(
    tmp_path: Path, monkeypatch
) -> None:
    """The partial output and its journal are made as one step: a partial output without a
    journal would refuse the rerun that the hint proposes."""
    from mitoseg.predict.blocks import BlockJournal, BlockPlan
    from mitoseg.predict.writer import PredictJob, prepare_output

    plan = BlockPlan(
        raw=str(tmp_path / "raw.zarr"), shape=(8, 16, 16), channels=("foreground",),
        dtype="uint8", block_shape=(8, 16, 16), tile_shape=(8, 16, 16), overlap=0.5,
        blend="gaussian", tta="none", checkpoint="x.ckpt", chunk_shape=(8, 16, 16),
    )  # fmt: skip
    job = PredictJob(plan, tmp_path / "probs.zarr")
    create = BlockJournal.create

    def signalled(journal: BlockJournal, plan: BlockPlan) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # between the partial output and its journal
        create(journal, plan)

    monkeypatch.setattr(BlockJournal, "create", signalled)
    with signals.handled(), pytest.raises(signals.Interrupted):
        prepare_output(job, overwrite=False)
    monkeypatch.setattr(BlockJournal, "create", create)
    prepare_output(job, overwrite=False)  # resumes (refused if the journal were missing)
    assert job.journal.done() == set()
