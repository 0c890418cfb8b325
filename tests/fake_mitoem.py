"""A small fake MitoEM release on disk, laid out exactly like the real one.

Usage in a test::

    from tests.fake_mitoem import write_fake_release

    release = write_fake_release(tmp_path / "MitoEM-R", depth=(8, 4, 8), size=64)
    release["root"]                   # pass to mitoseg-convert --mitoem / convert_release
    release["raw"][slice(*release["splits"]["val"])]   # the val raw, uint8 (4, 64, 64)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from PIL import Image

from mitoseg.datasets.synthetic import make_volume

# Added to every non-zero id, so labels need more than 8 bits as in the real release.
ID_OFFSET = 300
SPLITS = ("train", "val", "test")


def _write_listing(path: Path, files: list[str], size: int, dtype: str) -> Path:
    listing = {
        "image": files,
        "depth": len(files),
        "height": size,
        "width": size,
        "dtype": dtype,
        "ndim": 1,
        "tile_size": size,
        "tile_st": [0, 0],
        "tile_ratio": 1,
        "n_rows": 1,
        "n_columns": 1,
    }
    path.write_text(json.dumps(listing, indent=1))
    return path


def _write_labels(path: Path, labels: np.ndarray, label_format: str) -> None:
    if label_format == "tif":
        tifffile.imwrite(path, labels.astype(np.uint32))
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)  # 16-bit grey PNG


def write_fake_release(
    root: str | Path,
    depth: tuple[int, int, int] = (8, 4, 8),
    size: int = 64,
    seed: int = 0,
    label_format: Literal["tif", "png16"] = "tif",
    with_json: bool = True,
) -> dict[str, Any]:
    """Write a fake MitoEM release: ``im/``, ``mito_train/``, ``mito_val/`` and JSON listings.

    Files follow the real numbering: ``im/im0000.png ...`` (8-bit grey PNG, every slice),
    ``mito_train/seg0000.tif ...`` for the train slices and ``mito_val/segNNNN.tif ...``
    continuing the numbering for the val slices (``.png`` 16-bit grey with ``png16``); no test
    labels. With ``with_json``: ``im_train.json``, ``mito_train.json``, ``im_val.json``,
    ``mito_val.json`` and (when there are test slices) ``im_test.json``, with paths relative to
    ``root`` and the full-slice tiling keys (tile_size = size, tile_st [0, 0], ratio 1, 1 x 1).

    Args:
        root: release folder, created if missing.
        depth: slices of train, val and test; test may be 0.
        size: height and width of each slice.
        seed: seed of :func:`mitoseg.datasets.synthetic.make_volume`.
        label_format: ``"tif"`` (uint32 TIFF) or ``"png16"`` (16-bit PNG) label slices.
        with_json: write the JSON listings too.

    Returns:
        ``root`` (Path); ``raw`` uint8 (Z, size, size) and ``labels`` uint32 (Z, size, size),
        Z = sum(depth), 0 background and every id > 255 (test slices carry labels too, though
        none are written); ``splits``: name -> (z0, z1) slices of the volume, test only when
        present; ``listings``: JSON name -> Path (empty without ``with_json``).
    """
    if label_format not in ("tif", "png16"):
        raise ValueError(f"label_format must be 'tif' or 'png16', got {label_format!r}")
    if min(depth[:2]) < 1 or depth[2] < 0:
        raise ValueError(f"need train and val slices and test >= 0, got depth={depth}")
    root = Path(root)
    raw, labels = make_volume((sum(depth), size, size), seed=seed, voxel_size_nm=(30, 8, 8))
    labels[labels > 0] += ID_OFFSET
    if label_format == "png16" and labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"ids up to {labels.max()} do not fit 16-bit PNG; use label_format='tif'")
    bounds = np.cumsum((0, *depth)).tolist()
    splits = {name: (bounds[i], bounds[i + 1]) for i, name in enumerate(SPLITS) if depth[i]}
    suffix = ".tif" if label_format == "tif" else ".png"
    files: dict[str, list[str]] = {"im": []}
    (root / "im").mkdir(parents=True, exist_ok=True)
    for z in range(raw.shape[0]):
        Image.fromarray(raw[z]).save(root / "im" / f"im{z:04d}.png")
        files["im"].append(f"im/im{z:04d}.png")
    for split in ("train", "val"):
        folder = root / f"mito_{split}"
        folder.mkdir(exist_ok=True)
        files[split] = [f"mito_{split}/seg{z:04d}{suffix}" for z in range(*splits[split])]
        for z, name in zip(range(*splits[split]), files[split], strict=True):
            _write_labels(root / name, labels[z], label_format)
    listings: dict[str, Path] = {}
    if with_json:
        for split, (z0, z1) in splits.items():
            name = f"im_{split}.json"
            listings[name] = _write_listing(root / name, files["im"][z0:z1], size, "uint8")
            if split != "test":
                name = f"mito_{split}.json"
                listings[name] = _write_listing(root / name, files[split], size, "uint32")
    return {"root": root, "raw": raw, "labels": labels, "splits": splits, "listings": listings}
