"""The model card (Markdown) of a checkpoint that has none: what the checkpoint records of its
network, input, training and scores, how to validate and use it, and its limits."""

from __future__ import annotations

from typing import Any

from mitoseg.analyze.report import settings_text

SCORE_KEYS = ("fg_iou", "dice", "ap75", "ap50", "ap", "accuracy75", "are", "voi")


def _short(target: Any) -> str:
    return str(target or "?").rpartition(".")[2]


def _args(section: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in section.items() if not str(k).startswith("_"))


def _nm(values: Any) -> str:
    return " x ".join(f"{float(v):g}" for v in values) + " nm (z, y, x)"


def _training(run: dict[str, Any] | None, global_step: int | None) -> list[str]:
    if not run:
        return ["- The checkpoint records no training run (config only)."]
    data = run.get("data") or {}
    lines = []
    for split in ("train", "val", "test"):
        volume = data.get(split)
        if isinstance(volume, dict):
            details = _args({k: v for k, v in volume.items() if k not in ("cache_dir",)})
            lines.append(f"- {split} data: {_short(volume.get('_target_'))}({details})")
    if data.get("root"):
        lines.append(f"- data folder name: {str(data['root']).rstrip('/').rpartition('/')[2]}")
    optimizer = (run.get("module") or {}).get("optimizer") or {}
    trainer = run.get("trainer") or {}
    lines += [
        f"- patches {data.get('patch_shape')} voxels, batch {data.get('batch_size')}, "
        f"{global_step if global_step is not None else '?'} steps "
        f"(max_steps {trainer.get('max_steps')}, max_time {trainer.get('max_time')})",
        f"- optimiser {_short(optimizer.get('_target_'))}({_args(optimizer)}), "
        f"seed {run.get('seed')}",
    ]
    return lines


def _validation(metrics: dict[str, Any] | None) -> list[str]:
    lines = [
        "Validate on labelled data of your own before trusting the output: predict, decode and "
        "score it with mitoseg (`mitoseg-predict`, `mitoseg-segment probs=... labels=...` or "
        "`mitoseg-evaluate`), or compare the probabilities with your labels.",
        "",
    ]
    final = (metrics or {}).get("final")
    if not final:
        return lines + ["No held-out scores were found beside the checkpoint (metrics.json)."]
    scores = ", ".join(f"{k} {final[k]:.4f}" for k in SCORE_KEYS if isinstance(final.get(k), float))
    selected = (metrics or {}).get("selected") or {}
    chosen = settings_text(selected, list(selected)) or "none"
    return lines + [
        f"Scores of the training run on its held-out `{final.get('set', '?')}` set: {scores}.",
        f"Decoder settings chosen on validation: {chosen}.",
    ]


def model_card(
    name: str,
    config: dict[str, Any],
    run: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    versions: dict[str, Any] | None = None,
    global_step: int | None = None,
) -> str:
    """Markdown text; ``config`` is the checkpoint's resolved config, ``run`` the training run's
    config, ``metrics`` the run's ``metrics.json`` (all as plain data; None when unknown)."""
    model, target = config.get("model") or {}, config.get("target") or {}
    data, predict = config.get("data") or {}, config.get("predict") or {}
    decoder = config.get("postprocess") or {}
    record = ((data.get("raw_intensity") or {}).get("train") or {}).get("normalization")
    intensity = (
        f"{record['method']} {record['low']:g}..{record['high']:g} -> 0..1"
        if record
        else "not recorded (uint8 / 255 assumed)"
    )
    channels = ", ".join(target.get("channels") or [])
    lines = [
        f"# {name}",
        "",
        "3D mitochondria segmentation of electron microscopy volumes, trained with mitoseg: "
        f"the network gives probabilities of {channels} ({target.get('name')} target).",
        "",
        "## Model",
        f"- network: {_short(model.get('_target_'))}({_args(model)})",
        f"- input: one EM channel at {_nm(data.get('voxel_size_nm') or [1, 1, 1])}; raw "
        f"intensities normalised as {intensity} (the package's pre-processing)",
        f"- output: the sigmoid of the logits, one channel each: {channels}",
        f"- decoder in mitoseg: {_short(decoder.get('_target_'))}({_args(decoder)})",
        f"- mitoseg predicts tiles of {predict.get('tile_shape')} voxels, overlap "
        f"{predict.get('overlap')}, {predict.get('blend')} blending, TTA {predict.get('tta')}",
        "",
        "## Training",
        *_training(run, global_step),
        f"- software: {_args(versions or {}) or 'not recorded'}",
        "",
        "## Validation",
        *_validation(metrics),
        "",
        "## Intended use and limits",
        "- EM volumes of mitochondria at about the training voxel size and contrast; "
        "`mitoseg-predict resample=true` predicts another voxel size on the model's grid.",
        "- Other tissues, modalities, voxel sizes far from the training data, or raw values "
        "that look unlike the training data (mitoseg-predict warns) give unreliable output.",
        "- The probabilities are not calibrated; instances need mitoseg's decoder.",
        "",
        "## Use",
        "- mitoseg: `mitoseg-predict ckpt=model.zip input=/path/to/stack.tif "
        "output=probs.zarr` (the network, target and decoder come from the package).",
        "- bioimage.io tools (bioimageio.core, ...): the TorchScript weights need only PyTorch; "
        "the state-dict weights build the network from the architecture in the package.",
        "",
    ]
    return "\n".join(lines)
