"""A registry entry from a training checkpoint: ``weights.pt`` (the network's state dict, fp32),
``manifest.json`` and ``model_card.md`` (rendered from a template with the scores of the run's
``metrics.json``, never typed by hand).

The command is ``python -m mitoseg.cli.pretrained make`` (which can also score a check crop);
this module writes the files.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from mitoseg.analyze.report import columns_of
from mitoseg.evaluate.semantic import format_table
from mitoseg.files import write_json_atomic, write_text_atomic
from mitoseg.io.intensity import RawIntensity
from mitoseg.pretrained import CARD, FORMAT, MANIFEST, WEIGHTS, PretrainedError, sha256_of
from mitoseg.train.callbacks import CHECKPOINT_KEY
from mitoseg.train.checkpoints import load_weights_only, save_atomic, upgrade_targets

log = logging.getLogger(__name__)

TEMPLATE = "model_card.template.md"  # an entry's own template, else the package's


def data_placeholder(root: str) -> str:
    """What a user's data folder is called in a shipped command: ``/path/to/<its name>``."""
    return f"/path/to/{Path(root).name or 'data'}"


def net_state_dict(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The network's tensors of a Lightning checkpoint (``net.*``), fp32, contiguous."""
    prefix = "net."
    state = checkpoint.get("state_dict", {})
    weights = {
        k[len(prefix) :]: v.detach().to("cpu").contiguous()
        for k, v in state.items()
        if k.startswith(prefix)
    }
    if not weights:
        raise PretrainedError(f"{path} holds no network weights (no 'state_dict' net.* entries)")
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def run_command(run_dir: Path, data_root: str | None) -> str | None:
    """``mitoseg-train <overrides>`` from the run's ``.hydra/overrides.yaml``, without
    ``overwrite=`` / ``hydra.run.dir=`` and with the data folder as :func:`data_placeholder`."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    items = [str(o) for o in yaml.safe_load(path.read_text()) or []]
    items = [o for o in items if not o.lstrip("+~").startswith(("overwrite=", "hydra.run.dir="))]
    if data_root:
        items = [o.replace(data_root, data_placeholder(data_root)) for o in items]
    return " ".join(["mitoseg-train", *items])


def _replace_strings(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) and old else value


def scores_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """From a run's ``metrics.json``: the decoder parameters chosen on validation, the validation
    row at them and the final (test) scores."""
    selected, swept = metrics["selected"], metrics.get("swept", [])
    val = [r for r in metrics.get("val", []) if all(r.get(k) == selected[k] for k in swept)]
    final = dict(metrics["final"])
    final_set = final.pop("set", "test")
    for key in selected:
        final.pop(key, None)
    return {
        "selected": selected,
        "swept": list(swept),
        "selected_on": metrics.get("selected_on"),
        "val": {k: v for k, v in (val[0] if val else {}).items() if k not in selected},
        final_set: final,
    }


def build_manifest(
    name: str, checkpoint: dict[str, Any], path: Path, metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest (without the weights' hash) of the checkpoint at ``path``; with
    ``metrics`` (the run's ``metrics.json``), the decoder parameters chosen on validation go into
    ``config.postprocess`` and the scores into ``scores``."""
    record = checkpoint.get(CHECKPOINT_KEY, {})
    if "config" not in record:
        raise PretrainedError(
            f"{path} has no '{CHECKPOINT_KEY}.config' entry: not a checkpoint of mitoseg-train"
        )
    config = upgrade_targets(record["config"])
    run = dict(record.get("run") or {})
    root = (run.get("data") or {}).get("root")
    output_dir = run.pop("output_dir", None)
    run = _replace_strings(run, output_dir or "", "<run>")  # where it ran: of no use
    run = _replace_strings(run, root or "", data_placeholder(root or ""))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "weights": WEIGHTS,
        "config": config,
        "source": {
            "checkpoint": path.name,
            "global_step": checkpoint.get("global_step"),
            "command": run_command(path.parent.parent, root),
            "versions": record.get("versions"),
        },
        "run": run,
    }
    if metrics is not None:
        if metrics.get("checkpoint") not in (None, path.name):
            raise PretrainedError(
                f"the scores of the metrics file are those of {metrics['checkpoint']}, not of "
                f"{path.name}: make the entry from that checkpoint"
            )
        scores = scores_of(metrics)
        config["postprocess"] = {**config["postprocess"], **scores["selected"]}
        manifest["scores"] = scores
    return manifest


def write_entry(
    folder: Path, weights: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> dict[str, Any]:
    """``weights.pt`` then ``manifest.json`` (with the weights' sha256) into ``folder``, each
    atomically; the manifest, written last, is what makes the entry exist."""
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(weights, folder / WEIGHTS)
    manifest = {**manifest, "sha256": sha256_of(folder / WEIGHTS)}
    manifest["bytes"] = (folder / WEIGHTS).stat().st_size
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def card_fields(manifest: dict[str, Any]) -> dict[str, str]:
    """The values a card template may name as ``{{ key }}``."""
    config, source = manifest["config"], manifest.get("source", {})
    data, predict = config.get("data", {}), config.get("predict", {})
    scores = manifest.get("scores", {})
    intensity = (data.get("raw_intensity") or {}).get("train")
    fields = {
        "name": manifest["name"],
        "sha256": manifest.get("sha256", "(not written yet)"),
        "size_mb": f"{manifest.get('bytes', 0) / 1e6:.1f}",
        "model": _model_line(config["model"]),
        "target": f"{config['target'].get('name')} (channels {list(config['target']['channels'])})",
        "voxel_size_nm": " x ".join(f"{v:g}" for v in data.get("voxel_size_nm") or []) or "?",
        "isotropic": str(data.get("isotropic")),
        "raw_intensity": RawIntensity.from_dict(intensity).describe() if intensity else "?",
        "prediction": ", ".join(
            f"{k}={predict[k]}" for k in ("tile_shape", "overlap", "blend", "tta") if k in predict
        ),
        "decoder": _params_line(config["postprocess"]),
        "command": source.get("command") or "(not recorded)",
        "global_step": str(source.get("global_step")),
        "seed": str(config.get("seed")),
        "versions": ", ".join(f"{k} {v}" for k, v in (source.get("versions") or {}).items()),
        "selected": _params_line(scores.get("selected", {})) or "(no metrics given)",
        "chosen": _params_line(
            {k: v for k, v in scores.get("selected", {}).items() if k in scores.get("swept", [])}
        )
        or "(no metrics given)",
        "selected_on": str(scores.get("selected_on")),
        "scores": _scores_table(scores),
        "check": _check_line(manifest.get("check")),
    }
    for part in ("val", "test"):
        for key, value in scores.get(part, {}).items():
            if isinstance(value, float):
                fields[f"{part}_{key}"] = f"{value:.4f}"
    return fields


def _model_line(model: dict[str, Any]) -> str:
    keys = [k for k in model if k != "_target_"]
    return f"{model.get('_target_')} ({', '.join(f'{k}={model[k]}' for k in keys)})"


def _params_line(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "_target_")


def _scores_table(scores: dict[str, Any]) -> str:
    rows = [
        {"set": part, **{k: scores[part].get(k, "") for k in columns_of(scores[part])}}
        for part in ("val", "test")
        if scores.get(part)
    ]
    return format_table(rows, list(rows[0])) if rows else "(no metrics given)"


def _check_line(check: dict[str, Any] | None) -> str:
    if not check:
        return "(no check crop scored)"
    box = " ".join(f"{a}:{b}" for a, b in check["box"])
    return (
        f"foreground IoU {check['fg_iou']:.4f} on {check['raw']} (z y x {box}) against "
        f"{check['labels']}, decoded with {check['decoder']}"
    )


def render_card(template: str, fields: dict[str, str], source: str = "template") -> str:
    """``template`` with every ``{{ key }}`` replaced by ``fields[key]``.

    Raises:
        PretrainedError: a placeholder names no field (the known ones listed).
    """
    unknown = sorted(set(re.findall(r"{{\s*(\w+)\s*}}", template)) - set(fields))
    if unknown:
        raise PretrainedError(
            f"{source} names unknown fields {unknown}; known: {', '.join(sorted(fields))}"
        )
    return re.sub(r"{{\s*(\w+)\s*}}", lambda m: fields[m.group(1)], template)


def write_card(folder: Path, manifest: dict[str, Any]) -> Path:
    """``model_card.md`` from ``folder``'s ``model_card.template.md`` (else the package's)."""
    template = folder / TEMPLATE
    if not template.is_file():
        template = Path(__file__).resolve().parent / TEMPLATE
    text = render_card(template.read_text(), card_fields(manifest), str(template))
    return write_text_atomic(folder / CARD, text)


def tested_checkpoint(run_dir: Path) -> Path:
    """The checkpoint that a run's test-time evaluation scored (``metrics.json``'s)."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise PretrainedError(
            f"{run_dir} holds no metrics.json (the run has not finished its test): pass the "
            "checkpoint itself"
        )
    name = json.loads(metrics.read_text()).get("checkpoint")
    if not name:
        raise PretrainedError(f"{metrics} names no checkpoint: pass the checkpoint itself")
    return run_dir / "checkpoints" / name


def make_entry(
    checkpoint_path: str | Path,
    name: str,
    dest: str | Path,
    metrics_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write the entry ``dest/name`` from a checkpoint: weights (state dict, fp32), manifest and
    card. ``checkpoint_path`` may be a run folder: the checkpoint its ``metrics.json`` scored.
    ``metrics_path``: the run's ``metrics.json`` (None: the one beside the checkpoints folder if
    there is one). Returns the manifest."""
    path = Path(checkpoint_path).expanduser()
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise PretrainedError(f"name {name!r}: use letters, digits, '_', '-' and '.'")
    if path.is_dir():
        path = tested_checkpoint(path)
    checkpoint = load_weights_only(path)
    if metrics_path is None and (path.parent.parent / "metrics.json").is_file():
        metrics_path = path.parent.parent / "metrics.json"
    metrics = json.loads(Path(metrics_path).read_text()) if metrics_path else None
    manifest = build_manifest(name, checkpoint, path, metrics)
    folder = Path(dest).expanduser() / name
    manifest = write_entry(folder, net_state_dict(checkpoint, path), manifest)
    write_card(folder, manifest)
    log.info("wrote %s (%s, sha256 %s)", folder, WEIGHTS, manifest["sha256"])
    return manifest
