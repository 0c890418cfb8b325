"""``mitoseg-download``: fetch a public EM dataset, verify it, extract it and convert it to zarr.

::

    mitoseg-download NAME [--dest DIR] [--base-url URL] [--no-convert] [--accept-unverified]

NAME is ``lucchipp``, ``mitoem-r`` or ``mitoem-h``. Everything goes to ``DIR/NAME/``
(``archives/``, ``source/``, ``zarr/{train,val,test}/{raw,labels}.zarr``). Running it again
resumes an interrupted download and does nothing once the dataset is complete. ``--base-url``
(or ``MITOSEG_DOWNLOAD_BASE_URL``) fetches every file from ``URL/<file name>``, e.g. a mirror.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from mitoseg.datasets.fetch import DownloadError, UnverifiedError
from mitoseg.datasets.registry import DATASETS, download_dataset
from mitoseg.files import UnsafeOutputError, check_output_apart
from mitoseg.io import VolumeError, open_volume

BASE_URL_ENV = "MITOSEG_DOWNLOAD_BASE_URL"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mitoseg-download``."""
    names = "\n".join(f"  {name:10s}{d.description}" for name, d in DATASETS.items())
    p = argparse.ArgumentParser(
        prog="mitoseg-download",
        description="Download a public EM dataset (checksums verified, resumable), extract it "
        "safely and convert it to zarr.",
        epilog=f"datasets:\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=list(DATASETS), help="dataset to fetch")
    p.add_argument("--dest", type=Path, default=Path("data"), help="target folder (default: data)")
    p.add_argument(
        "--base-url",
        default=os.environ.get(BASE_URL_ENV) or None,
        help=f"fetch every file from URL/<file name> (a mirror; default: ${BASE_URL_ENV}, "
        "else the registry URLs)",
    )
    p.add_argument(
        "--no-convert",
        dest="convert",
        action="store_false",
        help="stop after extraction (no zarr conversion)",
    )
    p.add_argument(
        "--accept-unverified",
        action="store_true",
        help="use files whose checksum is unknown (their computed sha256 is printed)",
    )
    p.add_argument("--keep-archives", action="store_true", help="keep archives after extraction")
    p.add_argument("--retries", type=int, default=4, help="retries per transient network error")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    return p


def check_mirror_apart(root: Path, base_url: str | None) -> None:
    """A local mirror (``file://`` base URL) may not be, lie inside or contain the dataset's
    folder: its ``archives/`` are removed after extraction."""
    if base_url and urllib.parse.urlparse(base_url).scheme == "file":
        mirror = Path(urllib.request.url2pathname(urllib.parse.urlparse(base_url).path))
        check_output_apart(root, [mirror])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mitoseg-download``: 0 on success, 1 on a refused or failed download."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        check_mirror_apart(args.dest / args.name, args.base_url)
        result = download_dataset(
            args.name,
            args.dest,
            base_url=args.base_url,
            convert=args.convert,
            accept_unverified=args.accept_unverified,
            keep_archives=args.keep_archives,
            progress=progress,
            retries=args.retries,
        )
    except UnverifiedError as err:
        print(f"error: checksum unknown: {err}", file=sys.stderr)
        print(f"{err.sha256}  {err.name}")  # sha256sum format, for the registry
        return 1
    except (DownloadError, VolumeError, UnsafeOutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = "already done" if result.already_done else "done"
    lines = [f"{args.name}: {status} in {result.root}", f"source: {result.source}"]
    for path in result.arrays:
        array = open_volume(path)
        lines.append(f"{path}: shape {array.shape} {array.dtype}")
    lines += [f"{sha}  {name}" for name, sha in sorted(result.sha256.items())]
    lines.append(
        f"{result.root} was complete already: nothing written"
        if result.already_done
        else f"wrote {result.root}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
