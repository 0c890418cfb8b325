"""``mitoseg-predict``: blockwise, resumable tile prediction of a volume with a checkpoint.

Runs on one device or under Lightning DDP (``trainer.devices=N``, ``trainer.num_nodes=M``);
see :mod:`mitoseg.predict.blocks`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mitoseg import allocator, io
from mitoseg.cli.common import CONFIG_PATH, build_net, trained_intensity
from mitoseg.cli.entry import command, hydra_task, run_hydra
from mitoseg.cli.predict_grid import predict_grid, work_output
from mitoseg.cli.pretrained import chosen_model, load_chosen
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.decode.base import params
from mitoseg.decode.run import run_decoder
from mitoseg.files import check_output_apart, check_replaceable
from mitoseg.hardware import resolve_compute
from mitoseg.io.intensity import Normalization, RawIntensity, measure, mismatch
from mitoseg.predict.blocks import BlockJournal, BlockPlan, journal_path
from mitoseg.predict.writer import BlockPredictData, BlockWriter, PredictJob
from mitoseg.train.module import SegmentationModule

log = logging.getLogger(__name__)

PREDICT_KEYS = ("tile_shape", "overlap", "tta", "dtype", "batch_size", "blend")


def predict_settings(cfg: DictConfig, stored: DictConfig) -> DictConfig:
    """The checkpoint's ``predict`` section with the non-null command-line values on top."""
    settings = OmegaConf.to_container(stored.predict, resolve=True)
    assert isinstance(settings, dict)
    for key in PREDICT_KEYS:
        if cfg.get(key) is not None:
            settings[key] = (
                OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
            )
    return OmegaConf.create(settings)


def input_intensity(cfg: DictConfig, stored: DictConfig, raw: Path) -> RawIntensity:
    """The input's statistics (once, subsampled) and normalisation, chosen from its own dtype
    and range like the training data's (or ``raw_range``); warns, with the numbers, when the
    input looks unlike what the model was trained on."""
    trained = trained_intensity(stored)
    found = measure(io.open_volume(raw), raw, reference=trained, raw_range=cfg.raw_range)
    log.info("input %s: %s", cfg.input, found.describe())
    if trained is None:
        log.info(
            "checkpoint %s records no statistics of its training data (written before they "
            "were recorded): the input's range is not compared with them", cfg.get("ckpt"),
        )  # fmt: skip
    problem = mismatch(f"input {cfg.input}", found, trained)
    if problem:
        log.warning(problem)
    return found


def make_plan(
    cfg: DictConfig, stored: DictConfig, raw: Path, normalization: Normalization | None = None
) -> BlockPlan:
    """The job: input, output layout and every setting the probabilities depend on."""
    settings = predict_settings(cfg, stored)
    return BlockPlan(
        raw=str(raw.resolve()),
        shape=tuple(int(s) for s in io.open_volume(raw).shape),  # type: ignore[arg-type]
        channels=tuple(stored.target.channels),
        dtype=str(settings.dtype),
        block_shape=tuple(int(b) for b in cfg.block_shape),  # type: ignore[arg-type]
        tile_shape=tuple(int(t) for t in settings.tile_shape),  # type: ignore[arg-type]
        overlap=float(settings.overlap),
        blend=str(settings.blend),
        tta=str(settings.tta),
        checkpoint=chosen_model(cfg),
        chunk_shape=tuple(int(c) for c in cfg.chunk_shape),  # type: ignore[arg-type]
        normalization=normalization,
    )


def predict(cfg: DictConfig) -> Path:
    """Run the blockwise prediction (resuming an unfinished one); returns the output path."""
    output = Path(cfg.output).expanduser()
    # before loading anything: never into the input or the checkpoint, even with overwrite
    check_output_apart(output, [cfg.input, cfg.ckpt])
    if output.exists() and not cfg.overwrite:
        raise io.VolumeError(f"output {output} already exists; pass overwrite=true to replace it")
    check_replaceable(output)  # overwrite replaces only what mitoseg wrote
    segmentation = segmentation_output(cfg, output)
    stored, weights, source = load_chosen(cfg)
    net = build_net(stored, weights, source)
    settings = predict_settings(cfg, stored)
    paths = FileVolumes(
        cfg.input, raw_dataset=cfg.dataset, voxel_size_nm=cfg.voxel_size_nm
    ).prepare(Path(cfg.cache_dir))
    check_output_apart(output, [paths.raw])  # the converted input, in cache_dir
    raw_intensity = input_intensity(cfg, stored, paths.raw)
    grid = predict_grid(paths.raw, cfg.voxel_size_nm, stored.get("data", {}).get("voxel_size_nm"))
    grid.warn(bool(cfg.resample))
    resampling = grid.resampling(bool(cfg.resample))
    if resampling and (str(cfg.trainer.devices) != "1" or int(cfg.trainer.num_nodes) != 1):
        raise ValueError("resample=true predicts in one process: set trainer.devices=1")
    raw, voxel_size = (
        grid.model_input(Path(cfg.cache_dir), cfg.block_shape)
        if resampling
        else (paths.raw, grid.output_nm)
    )
    plan = make_plan(cfg, stored, raw, raw_intensity.normalization)
    try:
        plan.blocks()
    except ValueError as err:
        raise io.VolumeError(str(err)) from err
    job_output = work_output(Path(cfg.cache_dir), output, plan) if resampling else output
    # bf16 and channels-last where this machine computes faster with them (mitoseg.hardware)
    compute = resolve_compute(cfg.trainer.precision, cfg.channels_last, cfg.trainer.accelerator)
    log.info("memory allocator: %s", allocator.describe())
    job = PredictJob(plan, job_output, voxel_size, raw_intensity, compute.record())
    data = BlockPredictData(job, cfg.overwrite, cfg.num_workers, bool(cfg.io_threads))
    module = SegmentationModule(
        net,
        tta=settings.tta,
        channels=plan.channels,
        tile_batch=int(settings.batch_size),
        blend=plan.blend,
        channels_last=compute.channels_last,
        compile=bool(cfg.compile),
    )
    writer = BlockWriter(
        [job], progress=bool(cfg.trainer.enable_progress_bar), io_threads=bool(cfg.io_threads)
    )
    trainer = pl.Trainer(
        **{**cfg.trainer, "enable_progress_bar": False, "precision": compute.precision},
        logger=False,
        callbacks=[writer],
        enable_checkpointing=False,
        use_distributed_sampler=False,  # BlockPredictData hands each rank its own blocks
    )
    start = time.perf_counter()
    if job_output != output and job_output.exists() and not cfg.overwrite:
        log.info("%s: finished earlier on the model's grid; resampling it back", job_output)
    else:
        trainer.predict(module, datamodule=data, return_predictions=False)
    if resampling and trainer.is_global_zero:
        grid.write_back(job_output, output, plan, bool(cfg.overwrite))
    seconds = time.perf_counter() - start
    if trainer.is_global_zero and writer.summary:
        summary = writer.summary
        print(
            f"wrote {output}: {len(plan.channels)} x {grid.shape} {plan.dtype}, "
            f"{summary['blocks']} blocks ({summary['rank_blocks']} by this process, "
            f"{trainer.world_size} process(es)) in {seconds:.1f} s "
            f"({summary['voxels'] / seconds / 1e6:.2f} Mvox/s, {compute.precision}), peak RSS "
            f"{summary['rank_peak_rss_mib']:.0f} MiB ({summary['rank_start_rss_mib']:.0f} MiB "
            "when prediction started)"
        )
    elif trainer.is_global_zero:  # the model's grid was predicted by an earlier run
        print(f"wrote {output}: {len(plan.channels)} x {grid.shape} {plan.dtype}, resampled back")
    if segmentation is not None and trainer.is_global_zero:
        decode_output(stored, output, segmentation)
    return output


def segmentation_output(cfg: DictConfig, output: Path) -> Path | None:
    """``segmentation=``'s path, checked before anything runs: apart from the input, the
    checkpoint and the probabilities, and new unless ``overwrite=true`` (then only over an
    output of mitoseg's)."""
    if cfg.get("segmentation") is None:
        return None
    path = Path(cfg.segmentation).expanduser()
    check_output_apart(path, [cfg.input, cfg.ckpt, output])
    if path.exists() and not cfg.overwrite:
        raise io.VolumeError(
            f"segmentation {path} already exists; pass overwrite=true to replace it"
        )
    check_replaceable(path)
    return path


def decode_output(stored: DictConfig, probs: Path, output: Path) -> None:
    """Decode ``probs`` with the model's decoder (a pretrained model's: with the parameters
    chosen on its validation data) into ``output``: a mask (uint8) or instances (uint32)."""
    decoder = instantiate(stored.postprocess)
    start = time.perf_counter()
    run_decoder(decoder, probs, output)
    chosen = ", ".join(f"{k}={v}" for k, v in params(decoder).items() if not isinstance(v, list))
    print(
        f"wrote {output}: {type(decoder).__name__} ({chosen}) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def resume_hint(cfg: DictConfig) -> str:
    """After a signal: the blocks kept and the command that resumes them."""
    output = Path(cfg.output).expanduser()
    journal = BlockJournal(journal_path(output))
    if output.exists() and not journal.path.exists():  # the signal came as it finished
        return f"{output} was written whole: nothing to resume"
    if output.exists():  # an earlier output that overwrite=true was replacing: start again
        return f"{output} is unchanged; rerun the same command: {command('mitoseg-predict')}"
    kept = f"{len(journal.done())} finished blocks are kept; " if journal.path.exists() else ""
    # overwrite=true would discard the finished blocks
    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith("overwrite=")]
    return f"{kept}to resume, rerun: {command('mitoseg-predict', args)}"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def _main(cfg: DictConfig) -> None:
    with hydra_task(lambda: resume_hint(cfg)):
        predict(cfg)


def main() -> None:
    """``mitoseg-predict``: errors in one line (exit 2); SIGTERM / SIGINT stop within seconds
    with the blocks written so far kept, and exit 143 / 130 (:mod:`mitoseg.cli.entry`)."""
    run_hydra("mitoseg-predict", _main)
