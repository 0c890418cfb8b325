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
from omegaconf import DictConfig, OmegaConf

from mitoseg import io, pretrained
from mitoseg.analyze.report import columns_of
from mitoseg.cli.common import CONFIG_PATH, write_sweep_summary
from mitoseg.cli.entry import command, hydra_task, run_hydra
from mitoseg.datasets.volumes import FileVolumes
from mitoseg.decode.base import check_channels, params
from mitoseg.decode.run import BlockwiseOptions, output_name, run_decoder
from mitoseg.evaluate.semantic import format_table
from mitoseg.files import check_output_apart, write_json_atomic

log = logging.getLogger(__name__)


def to_container(cfg: Any) -> Any:
    """A config node as plain data (dicts, lists), interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def postprocess_config(cfg: DictConfig) -> DictConfig:
    """The decoder config of ``mitoseg-segment``: ``cfg.postprocess``, or with
    ``pretrained=<name>`` the model's (its parameters chosen on validation) with the command
    line's ``postprocess.<key>=`` overrides on top; ``postprocess=<other decoder>`` wins."""
    if cfg.get("pretrained") is None:
        return cfg.postprocess
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    if any(o.startswith("postprocess=") for o in given):
        return cfg.postprocess
    entry = pretrained.find(str(cfg.pretrained))
    stored = OmegaConf.create(entry.config["postprocess"])  # current module names: no upgrade
    changes = OmegaConf.from_dotlist([o for o in given if o.startswith("postprocess.")])
    merged = OmegaConf.merge(stored, changes.get("postprocess", {}))
    chosen = ", ".join(f"{k}={v}" for k, v in merged.items() if k != "_target_")
    log.info("decoder of pretrained model '%s': %s", cfg.pretrained, chosen)
    return merged


def segment(cfg: DictConfig) -> dict[str, Any]:
    """Decode ``cfg.probs`` with ``cfg.postprocess``; score against ``cfg.labels`` if given."""
    decoder = instantiate(postprocess_config(cfg))
    output_dir = Path(cfg.output_dir)
    output = output_dir / f"{output_name(decoder)}.zarr" if cfg.save_output else None
    for written in (output, output_dir / "metrics.json"):  # never into the probs or the labels
        if written is not None:
            check_output_apart(written, [cfg.probs, cfg.labels])
    # before the labels are converted: a wrong decoder fails at once (run_decoder checks too)
    check_channels(decoder, io.open_volume(cfg.probs), str(cfg.probs))
    labels = None
    if cfg.labels is not None:  # any format mitoseg-convert reads, converted once to the cache
        truth = FileVolumes(
            cfg.labels, labels=cfg.labels, labels_dataset=cfg.labels_dataset,
            label_values=cfg.label_values, label_threshold=cfg.label_threshold,
        )  # fmt: skip
        labels = truth.prepare_labels(Path(cfg.cache_dir))  # checked; the selection applied
    blockwise = BlockwiseOptions.from_dict(to_container(cfg.blockwise))
    run = run_decoder(
        decoder, cfg.probs, output, labels, blockwise=blockwise, work_dir=cfg.output_dir,
        progress=cfg.progress, slab=cfg.slab,
    )  # fmt: skip
    result: dict[str, Any] = {
        "probs": str(cfg.probs),
        "labels": None if cfg.labels is None else str(cfg.labels),
        "label_values": to_container(cfg.label_values),
        "label_threshold": cfg.label_threshold,
        "decoder": type(decoder).__name__,
        "postprocess": params(decoder),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    if blockwise is not None:
        shapes = {"block_shape": list(blockwise.block_shape), "halo": list(blockwise.halo)}
        result["blockwise"] = shapes | run.summary
    if run.scores is not None:
        result["scores"] = run.scores
    write_json_atomic(output_dir / "metrics.json", result)
    return result


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
    # outputs appear whole or not at all: after a signal there is nothing to resume from
    rerun = f"outputs are renamed into place only when whole; rerun: {command('mitoseg-segment')}"
    with hydra_task(lambda: rerun):
        result = segment(cfg)
    if "blockwise" in result:
        print(blockwise_line(result["blockwise"]))
    scores = result.get("scores")
    if scores is None:
        print(f"wrote {Path(cfg.output_dir)} (no labels given: no scores)")
        return None
    decoder_params = {k: v for k, v in result["postprocess"].items() if not isinstance(v, list)}
    print(format_table([{**decoder_params, **{k: scores[k] for k in columns_of(scores)}}]))
    print(f"wrote {Path(cfg.output_dir)}")
    metric = cfg.select_metric or ("fg_iou" if "fg_iou" in scores else "ap75")
    return float(scores[metric])


def main() -> None:
    """``mitoseg-segment``: errors in one line (exit 2); SIGTERM / SIGINT stop within seconds
    and exit 143 / 130 (:mod:`mitoseg.cli.entry`)."""
    run_hydra("mitoseg-segment", _main)
