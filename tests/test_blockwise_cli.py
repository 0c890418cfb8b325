"""``mitoseg-segment blockwise.enabled=true``: the same outputs, attributes and scores as the
in-memory
path, in this process, on a local Dask cluster, and on an existing cluster given its address."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from mitoseg import io
from mitoseg.cli.common import compose_config
from mitoseg.cli.segment import blockwise_line, segment
from mitoseg.decode import instances
from tests.test_cli import run
from tests.test_watershed import OFFSETS, _affinity_probs, _bc_probs

BC = [
    "postprocess=bc_watershed",
    "postprocess.seed_threshold=0.7",
    "postprocess.mask_threshold=0.55",
    "postprocess.min_seed_size=3",
    "postprocess.min_size=10",
]


def _segment(tmp_path: Path, name: str, *overrides: str) -> dict:
    fixed = [f"output_dir={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}", "progress=false"]
    return segment(compose_config("segment", [*fixed, *overrides]))


@pytest.fixture()
def bc_volume(tmp_path: Path) -> tuple[Path, Path]:
    """Noisy BC probabilities (2, 24, 48, 48) in chunks of (12, 24, 24), and labels."""
    probs = _bc_probs(0, "uint8")
    labels = instances.bc_watershed(probs, 0.8, 0.5, 0.6, min_seed_size=3, min_size=10)
    attrs = {"voxel_size_nm": [30.0, 8.0, 8.0], "kind": "probabilities"}
    io.write_volume(tmp_path / "probs.zarr", probs, chunks=(2, 12, 24, 24), attrs=attrs)
    io.write_volume(tmp_path / "labels.zarr", labels, chunks=(12, 24, 24))
    return tmp_path / "probs.zarr", tmp_path / "labels.zarr"


def test_blockwise_in_process_equals_in_memory(bc_volume, tmp_path: Path) -> None:
    probs, labels = bc_volume
    inputs = [f"probs={probs}", f"labels={labels}", *BC]
    memory = _segment(tmp_path, "memory", *inputs)
    blocks = _segment(
        tmp_path, "blocks", *inputs, "blockwise.enabled=true", "blockwise.dask.workers=0",
        "blockwise.block_shape=[12,24,24]", "blockwise.halo=[12,24,24]",
    )  # fmt: skip
    expected = io.open_volume(tmp_path / "memory" / "instances.zarr")
    out = io.open_volume(tmp_path / "blocks" / "instances.zarr")
    np.testing.assert_array_equal(out[:], expected[:])
    assert out.attrs.asdict() == expected.attrs.asdict() and out.chunks == expected.chunks
    assert blocks["scores"] == memory["scores"] and blocks["scores"]["n_pred"] > 50
    summary = blocks["blockwise"]
    assert summary["blocks"] == 8 and summary["instances"] == expected[:].max()
    assert summary["voxels"] == 24 * 48 * 48 and summary["mvox_per_s"] > 0
    assert "8 blocks of [12, 24, 24]" in blockwise_line(summary)
    assert not list(tmp_path.glob("blocks/.*"))  # no scratch or temporary folder left


def _affinity_run(tmp_path: Path, *overrides: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The A decoder over all blocks: (result, instances written, whole-volume instances)."""
    probs = _affinity_probs(1, "uint8", OFFSETS, contour=False)
    io.write_volume(tmp_path / "affs.zarr", probs, chunks=(3, 12, 24, 24))
    decoder = instances.AffinityWatershed(0.75, 0.5, min_seed_size=3, min_size=10)
    result = _segment(
        tmp_path, "out", f"probs={tmp_path / 'affs.zarr'}", "postprocess=affinity_watershed",
        "postprocess.seed_threshold=0.75", "postprocess.min_seed_size=3",
        "postprocess.min_size=10", "blockwise.enabled=true", "blockwise.block_shape=[12,24,24]",
        "blockwise.halo=[12,24,24]",
        *overrides,
    )  # fmt: skip
    return result, io.open_volume(tmp_path / "out" / "instances.zarr")[:], decoder(probs)


def test_local_cluster_of_two_worker_processes(tmp_path: Path) -> None:
    result, out, expected = _affinity_run(tmp_path, "blockwise.dask.workers=2")
    np.testing.assert_array_equal(out, expected)
    assert "scores" not in result and result["blockwise"]["instances"] == out.max() > 50


def test_existing_cluster_by_address(bc_volume, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    probs, labels = bc_volume
    inputs = [f"probs={probs}", f"labels={labels}", "postprocess.median_size=3"]
    memory = _segment(tmp_path, "memory", *inputs)
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as observer,
        get_task_stream(observer) as stream,
    ):
        blocks = _segment(
            tmp_path, "blocks", *inputs, "blockwise.enabled=true",
            "blockwise.block_shape=[12,24,24]",
            f"blockwise.dask.address={cluster.scheduler_address}",
        )  # fmt: skip
    assert {task["key"].rsplit("-", 5)[0] for task in stream.data} == {"semantic_task"}
    expected = io.open_volume(tmp_path / "memory" / "mask.zarr")
    np.testing.assert_array_equal(io.open_volume(tmp_path / "blocks" / "mask.zarr")[:], expected[:])
    assert blocks["scores"] == memory["scores"] and blocks["blockwise"]["blocks"] == 8


@pytest.mark.slow
def test_console_script_on_a_local_cluster(bc_volume, tmp_path: Path) -> None:
    probs, labels = bc_volume
    done = run(
        "mitoseg-segment", f"probs={probs}", f"labels={labels}", *BC, "blockwise.enabled=true",
        "blockwise.block_shape=[12,24,24]", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert "blockwise: 8 blocks" in done.stdout and "ap75" in done.stdout
    assert io.open_volume(tmp_path / "run" / "instances.zarr").dtype == np.uint32


def test_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch) -> None:
    """distributed writes OMP_NUM_THREADS=1 (and malloc settings) into the parent's environment
    when it starts workers; processes started afterwards (e.g. a training run) would inherit
    them and compute differently."""
    import os

    from mitoseg.decode.blockwise import dask_client

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with dask_client(None, 1) as client:
        assert client is not None
        assert dict(os.environ) == before
    assert dict(os.environ) == before


@pytest.mark.parametrize("kind", ["instances", "raw"])
def test_pyramid_levels_filled_on_the_workers_equal_this_process(tmp_path: Path, kind) -> None:
    """Blockwise outputs get their pyramid from the workers, region by region (the client read
    the whole volume for it: 4 of 41 s of a 0.5 Gvox BC decode); levels equal the in-process
    ones."""
    from distributed import Client, LocalCluster, get_task_stream

    from mitoseg.decode.blockwise.cluster import pyramid_fill
    from mitoseg.io import ome

    rng = np.random.default_rng(0)
    shape, dtype = (6, 40, 36), np.uint32 if kind == "instances" else np.uint8
    vol = rng.integers(0, 200, shape).astype(dtype)
    attrs = {"axes": list("zyx"), "kind": kind, "voxel_size_nm": [10.0, 5.0, 5.0]}
    paths = [tmp_path / f"{name}.zarr" for name in ("here", "workers")]
    for path in paths:
        io.create_volume(path, shape, dtype, chunks=(2, 8, 8), attrs=attrs)[...] = vol
    assert ome.write_pyramid(paths[0], min_size=4) == 4
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        assert ome.write_pyramid(paths[1], 4, pyramid_fill(client, (2, 16, 16))) == 4
    assert {task["key"].rsplit("-", 5)[0] for task in stream.data} == {"downsample_task"}
    assert len(stream.data) > 3  # several regions a level
    for level in ("1", "2", "3", "4"):
        here, there = (zarr.open_array(str(p / level), mode="r") for p in paths)
        np.testing.assert_array_equal(there[:], here[:])
    assert pyramid_fill(None, (2, 16, 16)) is None  # in-process runs keep the chunk loop
