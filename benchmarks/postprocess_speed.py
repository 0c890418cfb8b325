"""Binarize + 7^3 median: mitoseg's box-sum median against scipy.ndimage.median_filter.

Both run in this process on the same mask; the script checks that the outputs are identical and
prints the throughput of each and the speed-up ratio.

    python benchmarks/postprocess_speed.py [--shape 48 256 256] [--size 7]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from results import record
from scipy import ndimage

from mitoseg.decode.masks import binary_median


def timed(fn, *args, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 256, 256))
    parser.add_argument("--size", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # A realistic mask: smooth blobs plus salt-and-pepper noise for the median to remove.
    field = ndimage.gaussian_filter(rng.random(args.shape, dtype=np.float32), 3)
    mask = (field > np.quantile(field, 0.9)) ^ (rng.random(args.shape) < 0.02)
    voxels = mask.size
    t_ref, reference = timed(
        lambda m: ndimage.median_filter(m.astype(np.uint8), size=args.size, mode="reflect") > 0,
        mask,
    )
    t_ours, ours = timed(binary_median, mask, args.size, repeat=3)
    assert np.array_equal(ours, reference), "box-sum median differs from median_filter"
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(
        f"mask {args.shape} ({voxels / 1e6:.1f} Mvox), median size {args.size}, outputs identical"
    )
    print("| implementation | seconds | Mvox/s |")
    print("|---|---|---|")
    print(f"| scipy.ndimage.median_filter (reference) | {t_ref:.2f} | {voxels / t_ref / 1e6:.2f} |")
    print(f"| mitoseg binary_median (box sum) | {t_ours:.3f} | {voxels / t_ours / 1e6:.1f} |")
    print(f"speed-up: {t_ref / t_ours:.0f}x")
    record(
        "binarize_median_seconds",
        t_ours,
        "s",
        baseline=t_ref,
        baseline_name=f"scipy.ndimage.median_filter (size {args.size}) of the thresholded mask",
        notes=f"mask {tuple(args.shape)}: {t_ref / t_ours:.0f}x, outputs identical",
    )


if __name__ == "__main__":
    main()
