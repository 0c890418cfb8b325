"""Blockwise prediction (``mitoseg-predict``) against MONAI ``sliding_window_inference``:
throughput and peak memory, with real networks.

Each network runs with random weights from a checkpoint made here (the resolved model, target
and predict settings of its experiment, as ``mitoseg-train`` stores them): ``conv`` (one 3x3x3
convolution, so that the tiling, blending and I/O around it, where the two differ, weigh in),
``lucchipp_cpu`` (MONAI UNet 16-32-64-128, batch norm, channels-last; tiles 96^3, overlap 0.25)
and ``mitoem`` (the anisotropic residual U-Net of the MitoEM experiments; tiles 16 x 256 x 256,
overlap 0.5, two channels). Both sides use the network's tile shape, overlap, tiles per forward
pass and layout, no TTA, fp32, the same blending (``--blend``), end to end from a uint8 zarr to a
uint8 probability zarr: ours is the ``mitoseg-predict`` console script (its own report of
seconds and peak RSS above its RSS when prediction started); MONAI reads the whole volume,
infers and writes, in a fresh process that reports the same figures. Every measurement is a fresh
process, repeated ``--repeats`` times; the table gives medians.

    python benchmarks/predict_scale.py --sizes 0.1 0.5 1.0 --nets lucchipp_cpu mitoem
    python benchmarks/predict_scale.py --sizes 0.02 --plane 512 --impls ours ours_sync --nets conv

Volumes are ``--plane`` x ``--plane`` slices, as many as the size asks for (at least one tile
deep). The MitoEM network is slow on a CPU: about 0.04 Mvox/s per core (2 EPYC cores: 8.4 Mvox
in 112 s), so its sizes belong on a large machine or a GPU.

``ours_sync`` is ``mitoseg-predict io_threads=false`` (blocks read and written in the main
thread): the ``read wait`` and ``write wait`` columns are the seconds the network waited for them.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import record

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NETS = ("conv", "lucchipp_cpu", "mitoem")
IMPLS = ("ours", "monai", "ours_sync")
# The conv network's settings (the experiments bring their own).
CONV = {
    "model": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1,
              "kernel_size": 3, "padding": 1},
    "target": {"name": "semantic", "channels": ["foreground"]},
    "predict": {"tile_shape": [32, 128, 128], "overlap": 0.5, "blend": "gaussian", "tta": "none",
                "dtype": "uint8", "batch_size": 4, "channels_last": False},
}  # fmt: skip


def stored_config(net: str) -> dict:
    """What a checkpoint of ``net`` stores: the resolved model, target and predict sections."""
    if net == "conv":
        return CONV
    from omegaconf import OmegaConf

    from mitoseg.cli.common import compose_config

    cfg = compose_config("train", [f"experiment={net}", "data.root=/unused"])
    predict = OmegaConf.to_container(cfg.predict, resolve=True)
    assert isinstance(predict, dict)
    if predict.get("channels_last") == "auto":  # this machine's choice in fp32, on both sides
        from mitoseg.hardware import resolve_compute

        predict["channels_last"] = resolve_compute("32-true", "auto", "cpu").channels_last
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "target": {"name": str(cfg.target.name), "channels": list(cfg.target.channels)},
        "predict": predict,
    }


def make_checkpoint(net: str, path: Path) -> dict:
    """A checkpoint of ``net`` with random weights (seed 0); returns its stored config."""
    import torch
    from hydra.utils import instantiate

    from mitoseg.train.callbacks import CHECKPOINT_KEY

    config = stored_config(net)
    torch.manual_seed(0)
    model = instantiate(config["model"])
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, CHECKPOINT_KEY: {"config": config}}, path)
    return config


def make_volume(path: Path, shape: tuple[int, int, int]) -> None:
    from mitoseg import io

    out = io.create_volume(path, shape, "uint8", chunks=(32, 256, 256))
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, (32, *shape[1:]), dtype=np.uint8)
    for z in range(0, shape[0], 32):
        out[z : z + 32] = np.roll(pattern, z, axis=2)[: shape[0] - z]


REPORT = re.compile(r"in ([\d.]+) s .*peak RSS (\d+) MiB \((\d+) MiB when prediction started\)")
WAITS = re.compile(r"waited ([\d.]+) s for reads and ([\d.]+) s for writes")
ALLOCATOR = re.compile(r"memory allocator: (\S+)")


def run_ours(ckpt: Path, channels_last: bool, raw: Path, out: Path, args, threads: bool) -> dict:  # type: ignore[no-untyped-def]
    """``mitoseg-predict`` in its own process; its report of seconds and memory."""
    command = [
        str(BIN / "mitoseg-predict"), f"ckpt={ckpt}", f"input={raw}", f"output={out}",
        "overwrite=true", "tta=none", f"blend={args.blend}", f"io_threads={str(threads).lower()}",
        f"block_shape=[{','.join(map(str, args.block))}]", f"cache_dir={out.parent / 'cache'}",
        "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out.parent / 'hydra'}",
    ]  # fmt: skip
    if "channels_last:" in (ROOT / "conf" / "predict.yaml").read_text():
        command.append(f"channels_last={str(channels_last).lower()}")
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=out.parent)
    text = done.stdout + done.stderr
    found = REPORT.search(text)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"mitoseg-predict failed:\n{text[-3000:]}")
    waits = WAITS.search(text)
    allocator = ALLOCATOR.search(text)  # mitoseg.allocator: tcmalloc where the system has it
    return {
        "allocator": "?" if allocator is None else allocator[1].split("/")[-1].split(".")[0],
        "seconds": float(found[1]),
        "peak_mib": float(found[2]) - float(found[3]),
        "read_wait_s": float(waits[1]) if waits else None,
        "write_wait_s": float(waits[2]) if waits else None,
    }


def run_monai(ckpt: Path, raw: Path, out: Path, blend: str) -> dict:
    """MONAI ``sliding_window_inference`` on the whole volume, as lean as a user can."""
    import torch
    from monai.inferers import sliding_window_inference

    from mitoseg import io
    from mitoseg.cli.common import build_net, load_checkpoint
    from mitoseg.predict.writer import _peak_rss_mib, _reset_peak_rss, _rss_mib

    stored, weights = load_checkpoint(ckpt)
    net = build_net(stored, weights, str(ckpt)).eval()
    settings = stored.predict
    layout = torch.channels_last_3d if settings.channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    _reset_peak_rss()
    base = _rss_mib()
    start = time.perf_counter()
    volume = io.open_volume(raw)[:]
    x = torch.from_numpy(volume)[None, None].float().div_(255.0)
    del volume
    with torch.inference_mode():
        probs = sliding_window_inference(
            x, tuple(settings.tile_shape), int(settings.batch_size),
            lambda t: torch.sigmoid(net(t.contiguous(memory_format=layout))),
            overlap=float(settings.overlap), mode=blend, sigma_scale=0.125,
        )  # fmt: skip
        del x
        stored_probs = probs[0].clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()
        del probs
    chunks = (stored_probs.shape[0], 32, 256, 256)
    io.write_volume(out, stored_probs, chunks=chunks, overwrite=True)
    return {"seconds": time.perf_counter() - start, "peak_mib": _peak_rss_mib() - base}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(impl: str, ckpt: Path, config: dict, raw: Path, out: Path, args) -> dict:  # type: ignore[no-untyped-def]
    """One run of ``impl`` in a fresh process; ``cpu_s`` is that whole process's CPU time
    (imports and setup included), steadier than wall time on a shared machine."""
    cpu = _children_cpu_s()
    if impl != "monai":
        layout = bool(config["predict"]["channels_last"])
        result = run_ours(ckpt, layout, raw, out, args, threads=impl == "ours")
    else:
        command = [sys.executable, __file__, "--child", "--ckpt", str(ckpt), "--raw", str(raw),
                   "--out", str(out), "--blend", args.blend]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"monai failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"cpu_s": _children_cpu_s() - cpu}


def max_difference(a_path: Path, b_path: Path) -> int:
    """The largest difference of two uint8 probability volumes, slab by slab."""
    from mitoseg import io

    a, b = io.open_volume(a_path), io.open_volume(b_path)
    worst = 0
    for z in range(0, a.shape[1], 64):
        diff = np.abs(a[:, z : z + 64].astype(np.int16) - b[:, z : z + 64].astype(np.int16))
        worst = max(worst, int(diff.max()))
    return worst


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r[k], int | float) for r in runs)]
    same = {k: v for k, v in runs[0].items() if isinstance(v, str) and all(r[k] == v for r in runs)}
    return {k: statistics.median(r[k] for r in runs) for k in keys} | same | {"repeats": len(runs)}


def run_size(net: str, ckpt: Path, config: dict, size: float, scratch: Path, args) -> dict:  # type: ignore[no-untyped-def]
    """Every implementation on one volume of ``size`` Gvox: median figures per implementation."""
    plane = args.plane * args.plane
    tile_depth = config["predict"]["tile_shape"][0]
    depth = max(32, -(-tile_depth // 32) * 32, round(size * 1e9 / plane / 32) * 32)
    raw = scratch / f"raw_{depth}x{args.plane}.zarr"
    if not raw.exists():
        make_volume(raw, (depth, args.plane, args.plane))
    rows: dict[str, dict] = {}
    for impl in args.impls:
        if impl == "monai" and size > args.monai_max_gvox:  # the size asked for
            continue
        out = scratch / f"{impl}.zarr"
        runs = [measure(impl, ckpt, config, raw, out, args) for _ in range(args.repeats)]
        rows[impl] = median_of(runs)
    if {"ours", "monai"} <= rows.keys():
        rows["monai"]["max_diff_uint8"] = max_difference(
            scratch / "ours.zarr", scratch / "monai.zarr"
        )
    return {"net": net, "shape": (depth, args.plane, args.plane), "rows": rows}


def print_rows(result: dict) -> None:
    voxels = int(np.prod(result["shape"]))
    rows = result["rows"]
    for impl, r in rows.items():
        ratio = ""
        if impl == "ours" and "monai" in rows:
            m = rows["monai"]
            ratio = (f"{m['seconds'] / r['seconds']:.2f}x speed, "
                     f"{r['peak_mib'] / m['peak_mib']:.3f}x memory")  # fmt: skip
        waits = [r.get(k) for k in ("read_wait_s", "write_wait_s")]
        cells = [
            result["net"],
            f"{voxels / 1e9:.3f}",
            "x".join(map(str, result["shape"])),
            impl if "allocator" not in r else f"{impl} ({r['allocator']})",
            f"{r['seconds']:.1f}",
            f"{voxels / r['seconds'] / 1e6:.2f}",
            f"{r['peak_mib']:.0f}",
            f"{r['cpu_s']:.1f}",
            *("" if w is None else f"{w:.1f}" for w in waits),
            ratio,
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(json.dumps(result), file=sys.stderr, flush=True)


def describe(result: dict, args: argparse.Namespace) -> str:
    ours, voxels = result["rows"]["ours"], int(np.prod(result["shape"]))
    return (f"{result['net']} network (random weights), {voxels / 1e9:.2f} Gvox, block "
            f"{args.block}, {args.blend} blending, allocator {ours.get('allocator', '?')}, "
            f"median of {ours['repeats']}")  # fmt: skip


def record_headline(result: dict, args: argparse.Namespace) -> None:
    """Records of the largest size where ours and MONAI both ran (full-size runs only)."""
    rows, voxels = result["rows"], int(np.prod(result["shape"]))
    ours, monai = rows["ours"], rows["monai"]
    name = "predict_blockwise" if result["net"] == "conv" else f"predict_{result['net']}"
    baseline = "MONAI sliding_window_inference on the whole volume, same network and tiling"
    notes = describe(result, args)
    record(
        f"{name}_mvox_per_s",
        voxels / ours["seconds"] / 1e6,
        "Mvox/s",
        baseline=voxels / monai["seconds"] / 1e6,
        baseline_name=baseline,
        notes=notes,
    )
    record(
        f"{name}_peak_mib",
        ours["peak_mib"],
        "MiB",
        baseline=monai["peak_mib"],
        baseline_name=baseline,
        notes=notes + ", peak RSS above the RSS before predicting",
    )


def record_smallest(result: dict, args: argparse.Namespace) -> None:
    """Peak memory at the smallest size where both ran: where a whole-volume blend is smallest
    against a block's working set, the hardest case for the memory goal."""
    ours, monai = result["rows"]["ours"], result["rows"]["monai"]
    record(
        f"predict_{result['net']}_smallest_peak_mib",
        ours["peak_mib"],
        "MiB",
        baseline=monai["peak_mib"],
        baseline_name="MONAI sliding_window_inference on the whole volume, same network and tiling",
        notes=describe(result, args) + ", peak RSS above the RSS before predicting",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="Gvox")
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=["ours", "monai"])
    parser.add_argument(
        "--monai-max-gvox", type=float, default=1.1, help="largest --sizes value MONAI runs at"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plane", type=int, default=1024, help="y = x size of the volumes")
    parser.add_argument("--block", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--blend", choices=["gaussian", "constant"], default="gaussian")
    parser.add_argument("--no-record", action="store_true", help="leave results.json alone")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_monai(Path(args.ckpt), Path(args.raw), Path(args.out), args.blend)))
        return
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="mitoseg-predict-bench-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    print("| net | Gvox | shape | impl | s | Mvox/s | peak MiB above start | CPU s of the process "
          "| read wait s | write wait s | ours against MONAI |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for net in args.nets:
        ckpt = scratch / f"{net}.ckpt"
        config = make_checkpoint(net, ckpt)
        both = []
        for size in args.sizes:
            result = run_size(net, ckpt, config, size, scratch, args)
            print_rows(result)
            if {"ours", "monai"} <= result["rows"].keys():
                both.append(result)
        if both and not args.no_record:
            record_headline(both[-1], args)
            if len(both) > 1:
                record_smallest(both[0], args)


if __name__ == "__main__":
    main()
