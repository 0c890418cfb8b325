"""``mitoseg-segment``: decode saved probabilities and score them, without rerunning the net."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from mitoseg import io
from mitoseg.analyze.report import columns_of, write_json_atomic
from mitoseg.cli.common import CONFIG_PATH, write_sweep_summary
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.decode import run as decode
from mitoseg.evaluate.semantic import format_table

log = logging.getLogger(__name__)


def segment(cfg: DictConfig) -> dict[str, Any]:
    """Decode ``cfg.probs`` with ``cfg.postprocess``; score against ``cfg.labels`` if given."""
    probs = io.open_volume(cfg.probs)
    decoder = instantiate(cfg.postprocess)
    decode.check_channels(decoder, probs, str(cfg.probs))
    labels, labels_path = None, None
    if cfg.labels is not None:
        paths = FileVolumes(cfg.labels, raw_dataset=cfg.labels_dataset).prepare(Path(cfg.cache_dir))
        labels_path = paths.raw
        labels = io.open_volume(labels_path)
        if tuple(labels.shape) != tuple(probs.shape[1:]):
            raise io.VolumeError(
                f"labels {cfg.labels} have shape {tuple(labels.shape)} but probabilities "
                f"{cfg.probs} have (Z, Y, X) {tuple(probs.shape[1:])}"
            )
    output_dir = Path(cfg.output_dir)
    output = output_dir / f"{decode.output_name(decoder)}.zarr" if cfg.save_output else None
    result: dict[str, Any] = {
        "probs": str(cfg.probs),
        "labels": None if cfg.labels is None else str(cfg.labels),
        "decoder": type(decoder).__name__,
        "postprocess": decode.params(decoder),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    if cfg.blockwise:
        scores, result["blockwise"] = _segment_blockwise(cfg, decoder, labels_path, output)
    else:
        scores = decode.decode_and_score(decoder, probs, labels, output, slab=cfg.slab)
    if scores is not None:
        result["scores"] = scores
    write_json_atomic(output_dir / "metrics.json", result)
    return result


def _segment_blockwise(
    cfg: DictConfig, decoder: Any, labels_path: Path | None, output: Path | None
) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """Decode and score on Dask (``blockwise=true``): scores and the run summary."""
    from mitoseg.decode.blockwise import dask_client, decode_blockwise

    with dask_client(cfg.dask.address, cfg.dask.workers) as client:
        run = decode_blockwise(
            decoder,
            cfg.probs,
            output,
            labels_path,
            block_shape=tuple(cfg.block_shape),
            halo=tuple(cfg.halo),
            client=client,
            work_dir=cfg.output_dir,
            progress=cfg.progress,
        )
    summary = {"block_shape": list(cfg.block_shape), "halo": list(cfg.halo), **run.summary}
    return run.scores, summary


def blockwise_line(summary: dict[str, Any]) -> str:
    """One line on a blockwise run: blocks, volume, time, throughput, instances."""
    line = (
        f"blockwise: {summary['blocks']} blocks of {summary['block_shape']}, "
        f"{summary['voxels'] / 1e6:.1f} Mvox in {summary['seconds']:.1f} s "
        f"({summary['mvox_per_s']:.1f} Mvox/s)"
    )
    return line + (f", {summary['instances']} instances" if "instances" in summary else "")


def summary_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run of a sweep: its overrides, decoder parameters and main scores."""
    rows = []
    for path in sorted(
        sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)
    ):
        result = json.loads(path.read_text())
        row: dict[str, Any] = {"run": path.parent.name, "overrides": " ".join(result["overrides"])}
        row.update({k: v for k, v in result["postprocess"].items() if not isinstance(v, list)})
        scores = result.get("scores", {})
        row.update({k: scores.get(k, "") for k in columns_of(scores)})
        rows.append(row)
    return rows


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write and print one table of every run's scores."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        write_sweep_summary(sweep_dir, summary_rows(sweep_dir), config.get("select_metric"))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="segment")
def _main(cfg: DictConfig) -> float | None:
    result = segment(cfg)
    if "blockwise" in result:
        print(blockwise_line(result["blockwise"]))
    scores = result.get("scores")
    if scores is None:
        print(f"wrote {Path(cfg.output_dir)} (no labels given: no scores)")
        return None
    decoder_params = {k: v for k, v in result["postprocess"].items() if not isinstance(v, list)}
    print(format_table([{**decoder_params, **{k: scores[k] for k in columns_of(scores)}}]))
    metric = cfg.select_metric or ("fg_iou" if "fg_iou" in scores else "ap75")
    return float(scores[metric])


def main() -> None:
    _main()
