"""Instance metrics: mitoseg's one-pass ``instance_scores`` against whole-volume baselines.

The ground truth tiles ``mitoseg.datasets.synthetic.make_volume`` labels (a few seeds, ids offset
per
tile) to each requested size; the prediction drops 5 % of the ids, merges 5 % into their
neighbour id and shifts everything by one voxel in x. Each implementation runs in its own
subprocess on the same arrays (loaded from .npy), which reports wall time and peak RSS above
the level right after loading (VmHWM, reset through /proc/self/clear_refs). The script checks
that all implementations give the same scores.

Implementations: ``ours`` (instance_metrics.instance_scores, z-slabs), ``unique`` (contingency
from np.unique over one key per voxel, same matching and Rand / VOI), ``skimage`` (the same
table, plus skimage's adapted_rand_error and variation_of_information on whole volumes).

    python benchmarks/metrics_speed.py --sizes 0.02 0.05 [--baseline-max-gvox 0.3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import record

IMPLEMENTATIONS = ("ours", "unique", "skimage")
_INPLANE = 1024  # Y = X of every benchmark volume
_TILE = (32, 256, 256)


# --------------------------------------------------------------------------- data


def _tiles(n_seeds: int) -> list[np.ndarray]:
    from mitoseg.datasets.synthetic import make_volume

    return [make_volume(_TILE, seed=s, voxel_size_nm=(30.0, 8.0, 8.0))[1] for s in range(n_seeds)]


def make_truth(gvox: float, tiles: list[np.ndarray]) -> np.ndarray:
    """uint32 (Z, 1024, 1024) with about ``gvox`` * 1e9 voxels: tiles with distinct ids."""
    depth = max(1, round(gvox * 1e9 / _INPLANE**2))
    truth = np.zeros((depth, _INPLANE, _INPLANE), dtype=np.uint32)
    step = max(int(t.max()) for t in tiles)
    k = 0
    for z in range(0, depth, _TILE[0]):
        for y in range(0, _INPLANE, _TILE[1]):
            for x in range(0, _INPLANE, _TILE[2]):
                tile = tiles[k % len(tiles)][: depth - z]
                view = truth[z : z + tile.shape[0], y : y + _TILE[1], x : x + _TILE[2]]
                np.add(tile, np.uint32(k * step), out=view, where=tile > 0)
                k += 1
    return truth


def make_pred(truth: np.ndarray, seed: int = 0, slab: int = 32) -> np.ndarray:
    """Drop 5 % of the ids, merge 5 % into id - 1, shift by one voxel in x (slab by slab)."""
    rng = np.random.default_rng(seed)
    n = int(truth.max())
    lut = np.arange(n + 1, dtype=np.uint32)
    ids = rng.permutation(np.arange(2, n + 1))
    k = len(ids) // 20
    lut[ids[:k]] = 0
    lut[ids[k : 2 * k]] = ids[k : 2 * k] - 1
    pred = np.empty_like(truth)
    for z0 in range(0, truth.shape[0], slab):
        out = pred[z0 : z0 + slab]
        np.take(lut, truth[z0 : z0 + slab], out=out)
        out[:, :, 1:] = out[:, :, :-1].copy()
        out[:, :, 0] = 0
    return pred


# --------------------------------------------------------------------------- worker


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _run_worker(impl: str, workdir: Path, slab: int, out: Path) -> None:
    truth = np.load(workdir / "truth.npy")
    pred = np.load(workdir / "pred.npy")
    try:  # reset the peak RSS so that it measures the computation only
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    rss0 = _status_kib("VmRSS")
    start = time.perf_counter()
    if impl == "ours":
        from mitoseg.evaluate.instance import instance_scores

        scores = instance_scores(truth, pred, slab=slab)
    else:
        from mitoseg.baselines.metrics import instance_scores_whole

        scores = instance_scores_whole(truth, pred, skimage_rand_voi=impl == "skimage")
    seconds = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - rss0) / 1024 if reset else float("nan")
    out.write_text(json.dumps({"seconds": seconds, "extra_mib": extra, "scores": scores}))


def run_impl(impl: str, workdir: Path, slab: int) -> dict:
    out = workdir / f"{impl}.json"
    cmd = [sys.executable, __file__, "--worker", impl, "--workdir", str(workdir)]
    subprocess.run([*cmd, "--slab", str(slab)], check=True)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- report


def same_scores(a: dict, b: dict) -> bool:
    """Identical, except Rand / VOI from skimage's float tables, which agree to 1e-9."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        close = math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        if not (x == y or (key.startswith(("are", "voi")) and close)):
            return False
    return True


def bench_size(gvox: float, tiles: list[np.ndarray], args: argparse.Namespace) -> list[dict]:
    truth = make_truth(gvox, tiles)
    pred = make_pred(truth)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        np.save(workdir / "truth.npy", truth)
        np.save(workdir / "pred.npy", pred)
        voxels, shape = truth.size, truth.shape
        del truth, pred
        for impl in args.impls:
            if impl != "ours" and voxels > args.baseline_max_gvox * 1e9:
                continue
            result = run_impl(impl, workdir, args.slab)
            rows.append({"impl": impl, "gvox": voxels / 1e9, "shape": shape, **result})
    ours = next((r for r in rows if r["impl"] == "ours"), None)
    for r in rows:
        r["mvox_s"] = r["gvox"] * 1e3 / r["seconds"]
        if ours is not None:
            r["speedup"] = r["seconds"] / ours["seconds"]
            r["memory_ratio"] = r["extra_mib"] / max(ours["extra_mib"], 1e-9)
            r["identical"] = same_scores(r["scores"], ours["scores"])
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| Gvox | shape | truth ids | implementation | seconds | Mvox/s | extra MiB |"
    lines = [head + " speed-up of ours | memory ratio | same scores |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['gvox']:.3f} | {'x'.join(map(str, r['shape']))} | "
            f"{int(r['scores']['n_truth'])} | {r['impl']} | {r['seconds']:.2f} | "
            f"{r['mvox_s']:.0f} | {r['extra_mib']:.0f} | {r.get('speedup', math.nan):.1f} | "
            f"{r.get('memory_ratio', math.nan):.1f} | {r.get('identical', '')} |"
        )
    return "\n".join(lines)


def record_headline(rows: list[dict]) -> None:
    """ours against the np.unique baseline (else skimage) at the largest size both ran."""
    for ref in ("unique", "skimage"):
        pairs = [
            (o, b)
            for o in rows
            for b in rows
            if o["impl"] == "ours" and b["impl"] == ref and b["gvox"] == o["gvox"]
        ]
        if pairs:
            break
    else:
        return
    ours, base = pairs[-1]
    others = ", ".join(
        f"{r['impl']} {r['seconds']:.2f} s ({r['speedup']:.1f}x, {r['extra_mib']:.0f} MiB)"
        for r in rows
        if r["gvox"] == ours["gvox"] and r["impl"] != "ours"
    )
    record(
        "instance_metrics_seconds",
        ours["seconds"],
        "s",
        baseline=base["seconds"],
        baseline_name=f"whole-volume {ref} version (mitoseg.baselines.metrics)",
        notes=f"{ours['gvox']:.2f} Gvox, ours {ours['extra_mib']:.0f} MiB; {others}; "
        f"same scores: {all(r.get('identical', True) for r in rows)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.02], help="Gvox")
    parser.add_argument("--baseline-max-gvox", type=float, default=0.3)
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=IMPLEMENTATIONS)
    parser.add_argument("--slab", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=4, help="distinct synthetic tiles")
    parser.add_argument("--workdir", type=Path, default=None, help="where the .npy files go")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _run_worker(args.worker, args.workdir, args.slab, args.workdir / f"{args.worker}.json")
        return
    tiles = _tiles(args.seeds)
    rows = [row for gvox in args.sizes for row in bench_size(gvox, tiles, args)]
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(markdown(rows))
    record_headline(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=list))
    if not all(r.get("identical", True) for r in rows):
        sys.exit("scores differ between implementations")


if __name__ == "__main__":
    main()
