"""Pretrained models in the entry points: ``pretrained=<name>`` (mitoseg-predict), ``init=<name
or checkpoint>`` (mitoseg-train), and ``python -m mitoseg.cli.pretrained`` (list the entries,
make one from a training checkpoint)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from mitoseg import io, pretrained
from mitoseg.cli.common import CheckpointError, _flat, compose_config, load_checkpoint
from mitoseg.files import write_json_atomic
from mitoseg.train.checkpoints import upgrade_targets
from mitoseg.train.transfer import TransferError, transfer_weights

log = logging.getLogger(__name__)

CHECK_BOX = "35:131,64:256,576:768"


def load_pretrained(name: str) -> tuple[DictConfig, dict[str, torch.Tensor], Path]:
    """The stored config, weights (sha256 checked) and weights file of the entry ``name``."""
    entry = pretrained.find(name)
    weights = pretrained.load_weights(entry)
    return OmegaConf.create(upgrade_targets(entry.config)), weights, entry.weights_path


def load_model(ref: str) -> tuple[DictConfig, dict[str, torch.Tensor], str]:
    """A checkpoint path or a pretrained model's name -> its stored config, network weights and
    a description of the source (``pretrained:<name>`` or the path).

    A path that exists is a checkpoint; otherwise a registered name; otherwise the error says
    which (a missing checkpoint, or an unknown name with the names there are).
    """
    path = Path(ref).expanduser()
    if path.exists():
        stored, weights = load_checkpoint(path)
        return stored, weights, str(path)
    if ref in pretrained.available():
        stored, weights, _ = load_pretrained(ref)
        return stored, weights, f"pretrained:{ref}"
    if path.suffix or len(path.parts) > 1:  # meant as a file
        names = ", ".join(sorted(pretrained.available())) or "none installed"
        raise CheckpointError(
            f"checkpoint not found: {path} (nor is it a pretrained model; available: {names})"
        )
    pretrained.find(ref)  # raises: the names there are, or the entry's missing files
    raise AssertionError(f"{ref} is neither a file nor a pretrained model")


def model_differences(stored: Any, model: Any) -> list[str]:
    """``"model.key=<there> there, <here> here"`` for each network setting other than the number
    of output channels that differs between a stored config's ``model`` and ``model``."""
    theirs, ours = _flat(stored, "model"), _flat(model, "model")
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    return [
        f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here"
        for k in keys
        if k != "model.out_channels"
    ]


def source_config(ref: str) -> DictConfig:
    """The stored config of a checkpoint path or a pretrained model's name (no weights read for a
    name)."""
    if not Path(ref).expanduser().exists() and ref in pretrained.available():
        return OmegaConf.create(upgrade_targets(pretrained.find(ref).config))
    return load_model(ref)[0]


def adopt_init_model(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """``init=`` without ``model=`` / ``model.*`` on the command line: this run's network becomes
    the source's (``init=`` needs the same network; the output channels stay this run's
    target's), and the settings that changed are logged and returned. With them, the run's own
    model stays, and :func:`init_net` refuses another network naming what differs."""
    if cfg.get("init") is None or any(o.lstrip("+~").startswith("model") for o in overrides):
        return []
    stored = source_config(str(cfg.init))
    differences = model_differences(stored.model, cfg.model)
    if not differences:
        return []
    ours = cfg.model.get("_target_")
    model = OmegaConf.to_container(stored.model, resolve=True)
    assert isinstance(model, dict)
    if "out_channels" in model:
        model["out_channels"] = len(cfg.target.channels)
    with open_dict(cfg):
        cfg.model = model
    settings = ", ".join(f"{k}={v}" for k, v in model.items() if k != "_target_")
    log.warning(
        "init=%s: this run's network is the source's, %s(%s), in place of %s (%d settings "
        "differ); set model=... to choose, it must be the same network",
        cfg.init, model.get("_target_"), settings, ours, len(differences),
    )  # fmt: skip
    return differences


def init_net(ref: str, net: nn.Module, cfg: DictConfig) -> dict[str, Any]:
    """``init=<ref>``: copy the weights of a pretrained model or checkpoint into ``net`` (this
    run's fresh network); layers whose shape depends on another target are reinitialised and
    listed in the log. Returns the report stored in checkpoints and ``metrics.json``.

    Raises:
        CheckpointError: no such checkpoint or name, or another network (the settings that
            differ named).
    """
    stored, weights, source = load_model(ref)
    differences = model_differences(stored.model, cfg.model)
    try:
        report = transfer_weights(net, weights, source, differences)
    except TransferError as error:
        raise CheckpointError(f"init={ref}: {error}") from error
    if differences:  # same tensors, other settings (e.g. dropout): worth knowing
        log.info("init=%s: network settings that differ: %s", ref, "; ".join(differences))
    theirs, ours = list(stored.target.channels), list(cfg.target.channels)
    if theirs != ours:
        log.info(
            "init=%s: trained for target '%s' %s, this run's target '%s' has %s",
            ref, stored.target.get("name"), theirs, cfg.target.get("name"), ours,
        )  # fmt: skip
    size = OmegaConf.select(stored, "data.voxel_size_nm")
    here = OmegaConf.select(cfg, "data.train.voxel_size_nm")
    if size is not None and here is not None and list(size) != list(here):
        log.info("init=%s: trained at %s nm, this run's data is %s nm", ref, list(size), list(here))
    log.info(
        "%s (optimiser and schedule start fresh; ckpt=last resumes instead)", report.describe()
    )
    result = report.to_dict()
    result["target"] = {"source": stored.target.get("name"), "here": cfg.target.get("name")}
    return result


def chosen_model(cfg: DictConfig) -> str:
    """What ``ckpt=`` / ``pretrained=`` name (exactly one of them): the checkpoint's resolved
    path, or ``pretrained:<name> sha256:<hash>`` (recorded in the outputs' plans, so that an
    output predicted with other weights is not resumed with these).

    Raises:
        CheckpointError: both or neither given.
    """
    ckpt, name = cfg.get("ckpt"), cfg.get("pretrained")
    if ckpt is not None and name is not None:
        raise CheckpointError(
            f"ckpt={ckpt} and pretrained={name}: pass one of them (a checkpoint, or a pretrained "
            "model's name)"
        )
    if name is not None:
        return f"pretrained:{name} sha256:{pretrained.find(str(name)).sha256}"
    if ckpt is None:
        names = ", ".join(sorted(pretrained.available())) or "none installed"
        raise CheckpointError(
            f"missing value for 'ckpt': pass ckpt=<checkpoint> or pretrained=<name> (pretrained "
            f"models: {names})"
        )
    return str(Path(str(ckpt)).expanduser().resolve())


def load_chosen(cfg: DictConfig) -> tuple[DictConfig, dict[str, torch.Tensor], str]:
    """The stored config, weights and a description of ``ckpt=`` or ``pretrained=``
    (:func:`chosen_model`); a pretrained model's config is its manifest's, with the decoder
    parameters chosen on validation and the prediction settings (tiles, TTA) of the recipe."""
    chosen_model(cfg)
    if cfg.get("pretrained") is not None:
        stored, weights, path = load_pretrained(str(cfg.pretrained))
        return stored, weights, f"pretrained model '{cfg.pretrained}' ({path})"
    stored, weights = load_checkpoint(cfg.ckpt)
    return stored, weights, str(cfg.ckpt)


# --- python -m mitoseg.cli.pretrained ----------------------------------------------------------


def parse_box(text: str) -> tuple[tuple[int, int], ...]:
    """``"z0:z1,y0:y1,x0:x1"`` -> ``((z0, z1), (y0, y1), (x0, x1))``."""
    try:
        box = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 3 or any(len(a) != 2 or not 0 <= a[0] < a[1] for a in box):
        raise ValueError(f"box {text!r}: expected z0:z1,y0:y1,x0:x1 with z0 < z1 etc.")
    return box  # type: ignore[return-value]


def score_crop(
    name: str,
    raw: str | Path,
    labels: str | Path,
    box: Sequence[Sequence[int]],
    work_dir: str | Path,
) -> dict[str, Any]:
    """Segment a crop of ``raw`` with the pretrained model ``name`` as a user would
    (``mitoseg-predict pretrained=<name>`` in fp32, then the manifest's decoder) and score its
    foreground against the same crop of ``labels`` (non-zero: foreground).

    Returns:
        ``{"raw", "labels" (file names), "box", "decoder", "fg_iou", ...}``: the semantic
        scores, what the model card's check line reports and the shipped tests reproduce.
    """
    from hydra.utils import instantiate

    from mitoseg.cli.predict import predict
    from mitoseg.decode.base import params
    from mitoseg.decode.run import run_decoder
    from mitoseg.io.sources import open_source

    entry, work = pretrained.find(name), Path(work_dir)
    (z0, z1), (y0, y1), (x0, x1) = box
    crops = {}
    for kind, path in (("raw", raw), ("labels", labels)):
        with open_source(path) as source:
            crops[kind] = source.read(z0, z1)[:, y0:y1, x0:x1]
    size = entry.config.get("data", {}).get("voxel_size_nm")
    io.write_volume(work / "raw.zarr", crops["raw"], attrs={"voxel_size_nm": size})
    io.write_volume(work / "labels.zarr", crops["labels"])
    overrides = [
        f"pretrained={name}", f"input={work / 'raw.zarr'}", f"output={work / 'probs.zarr'}",
        f"cache_dir={work / 'cache'}", "trainer.precision=32-true",
        f"block_shape=[{z1 - z0},{y1 - y0},{x1 - x0}]",  # one block: no seams between blocks
        "trainer.enable_progress_bar=false", "overwrite=true",
    ]  # fmt: skip
    predict(compose_config("predict", overrides))
    decoder = instantiate(entry.config["postprocess"])
    result = run_decoder(decoder, work / "probs.zarr", None, work / "labels.zarr")
    assert result.scores is not None
    return {
        "raw": Path(raw).name,
        "labels": Path(labels).name,
        "box": [list(b) for b in box],
        "decoder": ", ".join(f"{k}={v}" for k, v in params(decoder).items()),
        **result.scores,
        "compute": "32-true",
    }


@contextmanager
def searched_first(folder: Path) -> Iterator[None]:
    """``folder`` first on the registry's search path (``$MITOSEG_PRETRAINED``) for a while."""
    old = os.environ.get(pretrained.ENV)
    os.environ[pretrained.ENV] = os.pathsep.join(map(str, [folder, *pretrained.search_path()]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(pretrained.ENV, None)
        else:
            os.environ[pretrained.ENV] = old


def make(args: argparse.Namespace) -> dict[str, Any]:
    """``make``: the entry, then (with ``--check``) the check crop's scores in its manifest and
    card."""
    from mitoseg.pretrained.make import make_entry, write_card

    dest = Path(args.dest).expanduser()
    folder = dest / args.name
    if (folder / pretrained.MANIFEST).exists() and not args.overwrite:
        raise FileExistsError(f"{folder} already holds an entry; pass --overwrite to replace it")
    box = parse_box(args.check_box)
    for path in args.check or []:  # before anything is written
        if not Path(path).exists():
            raise FileNotFoundError(f"--check: {path} does not exist")
    manifest = make_entry(args.ckpt, args.name, dest, args.metrics)
    if args.check:
        with tempfile.TemporaryDirectory() as work:
            with searched_first(dest):  # the new entry, whatever $MITOSEG_PRETRAINED holds
                manifest["check"] = score_crop(args.name, *args.check, box, work)
        write_json_atomic(folder / pretrained.MANIFEST, manifest)
        write_card(folder, manifest)
    return manifest


def list_entries() -> str:
    """One line per registered model: name, test foreground IoU, folder."""
    lines = []
    for name, folder in sorted(pretrained.available().items()):
        entry = pretrained.find(name)
        test = entry.manifest.get("scores", {}).get("test", {})
        score = next((f"{k} {test[k]:.4f}" for k in ("fg_iou", "ap75") if k in test), "")
        lines.append(f"{name}\t{score}\t{folder}")
    return "\n".join(lines) or "no pretrained models installed"


def main(argv: list[str] | None = None) -> int:
    """``python -m mitoseg.cli.pretrained list | make CKPT --name NAME ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mitoseg.cli.pretrained", description="Pretrained models of mitoseg."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registered models")
    made = commands.add_parser(
        "make", help="a registry entry (weights, manifest, model card) from a checkpoint"
    )
    made.add_argument(
        "ckpt", type=Path,
        help="checkpoint of mitoseg-train, or its run folder (then the checkpoint that the run's "
        "metrics.json scored)",
    )  # fmt: skip
    made.add_argument("--name", required=True, help="the entry's name, e.g. lucchipp")
    made.add_argument(
        "--metrics", "--card-scores", type=Path, default=None,
        help="the run's metrics.json (default: beside the checkpoints folder)",
    )  # fmt: skip
    made.add_argument(
        "--dest", default=str(pretrained.PACKAGE_DIR),
        help="registry folder (default: the package's, shipped with mitoseg)",
    )  # fmt: skip
    made.add_argument(
        "--check", nargs=2, metavar=("RAW", "LABELS"),
        help="score a crop of this volume (e.g. Lucchi++ test_im.tif test_label.tif) for the card",
    )  # fmt: skip
    made.add_argument(
        "--check-box", default=CHECK_BOX,
        help=f"z0:z1,y0:y1,x0:x1 (default {CHECK_BOX}: 96 x 192 x 192 voxels of Lucchi++ "
        "test_im.tif, 11 %% foreground, 10 mitochondria)",
    )  # fmt: skip
    made.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            print(list_entries())
            return 0
        manifest = make(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    folder = Path(args.dest).expanduser() / args.name
    check = manifest.get("check")
    print(f"wrote {folder}: {pretrained.WEIGHTS} (sha256 {manifest['sha256']}), manifest, card")
    if check:
        print(f"check crop: foreground IoU {check['fg_iou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
