"""``mitoseg-export``: an instance zarr -> the MitoEM submission format (one HDF5 volume).

mitoseg-export INSTANCES.zarr OUT.h5 [--dataset main] [--dtype uint32] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mitoseg import io
from mitoseg.analyze.export import DTYPES, export_hdf5
from mitoseg.files import check_output_apart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mitoseg-export",
        description="Write an instance volume (zarr) as one HDF5 dataset, streamed by z-slabs: "
        "the MitoEM challenge submission format.",
    )
    parser.add_argument("instances", type=Path, help="instance ids zarr (Z, Y, X)")
    parser.add_argument("dst", type=Path, help="HDF5 file to write")
    parser.add_argument("--dataset", default="main", help="dataset name (default: main)")
    parser.add_argument("--dtype", default="uint32", choices=DTYPES)
    parser.add_argument("--slab", type=int, default=32, help="z-slices per copy step")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing export of mitoseg"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_output_apart(args.dst, [args.instances])  # before anything is read or written
        volume = io.open_volume(args.instances)
        export_hdf5(
            volume,
            args.dst,
            dataset=args.dataset,
            dtype=args.dtype,
            slab=args.slab,
            overwrite=args.overwrite,
        )
    except (io.VolumeError, ValueError) as error:
        print(f"mitoseg-export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} [{args.dataset}] {tuple(volume.shape)} {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
