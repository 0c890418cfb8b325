"""Round-trip table (issue 19.3): perfect targets of every hard shape family, stored as uint8
probabilities, decoded at each decoder's default settings; AP-75 and the ground-truth objects
above the size floor that were lost or split. Optionally the same on the real Lucchi++ labels
(5 nm; instances = 3D connected components of the masks, train and test).

The baseline in the same run is the published PyTorch Connectomics / MitoEM setting: sizes in
voxels (min_size 1024, min_seed_size 32) and no neck merge.

    python benchmarks/roundtrip.py [--lucchi ../shared/data/lucchi_pp] [--targets BCD] [--no-record]

With ``--targets`` a subset of A, BC, AC, BCD runs; its records carry the targets in their names
(e.g. ``roundtrip_lucchipp_bcd_min_ap75``) beside those of the full table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cc3d
import numpy as np
from results import record

from mitoseg.datasets.shape_families import SHAPE_FAMILIES, shape_family
from mitoseg.decode.base import size_voxels, with_voxel_size
from mitoseg.evaluate.roundtrip import round_trip, target_decoders

VOXEL_SIZES = {"5 nm": (5.0, 5.0, 5.0), "30x8x8 nm": (30.0, 8.0, 8.0)}
PUBLISHED = {"min_size": 1024, "min_seed_size": 32}


def targets(voxel_size_nm: tuple[float, float, float]) -> dict[str, tuple]:
    """A, BC, AC and BCD with their default decoders (mitoseg.evaluate.roundtrip)."""
    return {name.upper(): pair for name, pair in target_decoders(voxel_size_nm).items()}


def published(decoder: object) -> object:
    fields = {f.name for f in dataclasses.fields(decoder)}  # type: ignore[arg-type]
    extra = {"merge_necks": False} if "merge_necks" in fields else {}
    return dataclasses.replace(decoder, **PUBLISHED, **extra)  # type: ignore[type-var]


def floor(decoder: object, voxel_size_nm: tuple[float, float, float]) -> int:
    """The default decoder's size floor in voxels: both settings are scored on these objects."""
    return size_voxels(with_voxel_size(decoder, voxel_size_nm, "round trip"))[1]  # type: ignore[arg-type]


def row(name: str, family: str, voxel: str, new: dict, old: dict, seconds: float) -> dict:
    line = (
        f"| {name} | {family} | {voxel} | {new['n_truth']} | {new['ap75']:.3f} | {new['lost']} "
        f"| {new['split']} | {old['ap75']:.3f} | {old['lost']} | {old['split']} | {seconds:.1f} |"
    )
    print(line, flush=True)
    return {"target": name, "family": family, "voxel": voxel, "new": new, "old": old}


def both_settings(
    labels: np.ndarray, vs: tuple[float, float, float], chosen: list[str], family: str, voxel: str
) -> list[dict]:
    """The round trip of ``labels`` for each chosen target, at the default setting (timed) and at
    the published one, scored on the same objects; one printed row each."""
    rows = []
    for name, (target, decoder) in targets(vs).items():
        if name not in chosen:
            continue
        start = time.perf_counter()
        new = round_trip(labels, target, decoder, vs)
        seconds = time.perf_counter() - start
        old = round_trip(labels, target, published(decoder), vs, floor=floor(decoder, vs))
        rows.append(row(name, family, voxel, new, old, seconds))
    return rows


def lucchi_labels(root: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {
        part: cc3d.connected_components(
            tifffile.imread(root / f"{part}_label.tif") > 0, connectivity=26, out_dtype=np.uint32
        )
        for part in ("train", "test")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lucchi", type=Path, default=None, help="folder of the Lucchi++ TIFFs")
    parser.add_argument("--targets", nargs="+", type=str.upper, help="default: A BC AC BCD")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    known = list(targets(VOXEL_SIZES["5 nm"]))
    chosen = args.targets or known
    if unknown := sorted(set(chosen) - set(known)):
        parser.error(f"unknown targets {unknown}; known: {known}")
    suffix = "" if set(chosen) == set(known) else "_" + "_".join(t.lower() for t in chosen)
    names = ", ".join(chosen)
    print("| target | shapes | voxels | objects | AP-75 | lost | split ", end="")
    print("| published AP-75 | lost | split | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for voxel, vs in VOXEL_SIZES.items():
        for family in SHAPE_FAMILIES:
            rows += both_settings(shape_family(family, vs), vs, chosen, family, voxel)
    synthetic = rows[:]
    if args.lucchi is not None:
        for part, labels in lucchi_labels(args.lucchi).items():
            rows += both_settings(labels, (5.0, 5.0, 5.0), chosen, f"Lucchi++ {part}", "5 nm")
    if args.no_record:
        return
    worst = min(synthetic, key=lambda r: r["new"]["ap75"])
    bad = sum(r["new"]["lost"] + r["new"]["split"] for r in synthetic)
    old_bad = sum(r["old"]["lost"] + r["old"]["split"] for r in synthetic)
    record(
        f"roundtrip_synthetic{suffix}_min_ap75",
        worst["new"]["ap75"],
        "AP-75",
        baseline=min(r["old"]["ap75"] for r in synthetic),
        baseline_name="published voxel sizes (1024 / 32), no neck merge",
        notes=f"{names} x 5 shape families x 5 nm and 30x8x8 nm, uint8; objects lost or "
        f"split: {bad} (published setting: {old_bad})",
    )
    real = rows[len(synthetic) :]
    if real:
        record(
            f"roundtrip_lucchipp{suffix}_min_ap75",
            min(r["new"]["ap75"] for r in real),
            "AP-75",
            baseline=min(r["old"]["ap75"] for r in real),
            baseline_name="published voxel sizes (1024 / 32), no neck merge",
            notes=f"{names} on the 3D components of the Lucchi++ train and test labels (5 nm); "
            f"lost or split: {sum(r['new']['lost'] + r['new']['split'] for r in real)}",
        )


if __name__ == "__main__":
    main()
