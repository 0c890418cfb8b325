"""mitoseg.analyze.measure and mitoseg-measure against brute-force per-object computations."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import marching_cubes, mesh_surface_area
from skimage.morphology import skeletonize

from mitoseg import io
from mitoseg.analyze import measure
from mitoseg.cli import measure as cli
from mitoseg.datasets.synthetic import make_instance_volume

VOXEL = (30.0, 8.0, 8.0)
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """uint32 (16, 48, 56): synthetic mitochondria (touching pairs, chains, border cuts) plus a
    one-voxel object, a thin rod and an object on the last z-slice."""
    _, lab = make_instance_volume((16, 48, 56), seed=2)
    lab = lab.copy()
    top = int(lab.max())
    lab[8, 24, 2] = top + 1
    lab[2, 2, 20:40] = top + 2
    lab[15, 40:44, 44:50] = top + 3
    return lab


# --------------------------------------------------------------------------- brute force


def brute_skeleton_length(skel: np.ndarray, size: np.ndarray) -> float:
    """Sum over 26-neighbour voxel pairs, skipping a diagonal pair joined by two shorter steps."""
    points = {tuple(p) for p in np.argwhere(skel)}
    total = 0.0
    for u, v in itertools.combinations(sorted(points), 2):
        d = np.subtract(v, u)
        if np.abs(d).max() != 1:
            continue
        nonzero = np.flatnonzero(d)
        shorter = False
        for mask in itertools.product((0, 1), repeat=nonzero.size):
            if 0 < sum(mask) < nonzero.size:
                step = np.zeros(3, int)
                step[nonzero[np.asarray(mask, bool)]] = d[nonzero[np.asarray(mask, bool)]]
                shorter |= tuple(np.add(u, step)) in points
        if not shorter:
            total += float(np.linalg.norm(d * size))
    return total


def brute_object(lab: np.ndarray, ident: int, size: np.ndarray) -> dict[str, float]:
    """Every column of one object from whole-volume masks and plain formulas."""
    mask = lab == ident
    coords = np.argwhere(mask).astype(float)
    nm = coords * size
    cov = np.cov(nm.T, bias=True) + np.diag(size**2 / 12)
    axes = 2 * np.sqrt(5 * np.sort(np.linalg.eigvalsh(cov))[::-1])
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(float), 0.5, spacing=tuple(size))
    area = mesh_surface_area(verts, faces)
    volume = mask.sum() * size.prod()
    row = {
        "voxels": mask.sum(),
        "volume_nm3": volume,
        "surface_nm2": area,
        "axis_major_nm": axes[0],
        "axis_mid_nm": axes[1],
        "axis_minor_nm": axes[2],
        "elongation": axes[0] / axes[2],
        "sphericity": (math.pi ** (1 / 3)) * (6 * volume) ** (2 / 3) / area,
        "skeleton_length_nm": brute_skeleton_length(skeletonize(np.pad(mask, 1)), size),
        "touches_border": bool(
            mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        )
        or bool(mask[:, :, 0].any() or mask[:, :, -1].any()),
    }
    for axis, a in enumerate("zyx"):
        row[f"bbox_{a}0"] = coords[:, axis].min()
        row[f"bbox_{a}1"] = coords[:, axis].max() + 1
        row[f"centroid_{a}"] = coords[:, axis].mean()
        row[f"centroid_{a}_nm"] = nm[:, axis].mean()
    return row


# --------------------------------------------------------------------------- pass 1


@pytest.mark.parametrize("block", [(1, 48, 56), (3, 5, 7), (16, 48, 56), None])
def test_scan_boxes_match_brute_force_for_any_block(labels: np.ndarray, block) -> None:
    boxes = measure.scan_boxes(labels, block)
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(boxes.ids, ids)
    for k, ident in enumerate(ids):
        coords = np.argwhere(labels == ident)
        assert boxes.voxels[k] == len(coords)
        np.testing.assert_array_equal(boxes.lo[k], coords.min(axis=0))
        np.testing.assert_array_equal(boxes.hi[k], coords.max(axis=0) + 1)


def test_scan_boxes_reads_zarr_chunks(tmp_path: Path, labels: np.ndarray) -> None:
    arr = io.write_volume(tmp_path / "lab.zarr", labels, chunks=(4, 16, 16))
    assert measure.default_block(arr) == (4, 16, 16)
    a, b = measure.scan_boxes(arr), measure.scan_boxes(labels, (16, 48, 56))
    for name in ("ids", "voxels", "lo", "hi"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# --------------------------------------------------------------------------- pass 2


def test_measure_objects_matches_brute_force(labels: np.ndarray) -> None:
    size = np.asarray(VOXEL)
    table = measure.measure_objects(labels, VOXEL)
    ids = np.unique(labels[labels > 0])
    assert list(table) == list(measure.COLUMNS)
    np.testing.assert_array_equal(table["id"], ids)
    assert table["id"].dtype == np.uint64 and table["touches_border"].dtype == bool
    for k, ident in enumerate(ids):
        want = brute_object(labels, int(ident), size)
        for name, value in want.items():
            assert table[name][k] == pytest.approx(value, rel=1e-9, abs=1e-6), (ident, name)


def test_results_do_not_depend_on_block_or_read_budget(tmp_path: Path, labels: np.ndarray) -> None:
    arr = io.write_volume(tmp_path / "lab.zarr", labels, chunks=(4, 16, 16))
    ref = measure.measure_objects(labels, VOXEL)
    runs = [
        measure.measure_objects(labels, VOXEL, block=(1, 48, 56)),
        measure.measure_objects(labels, VOXEL, block=(3, 48, 56), budget_voxels=1),
        measure.measure_objects(arr, VOXEL, budget_voxels=10**9),
    ]
    for table in runs:
        for name in measure.COLUMNS:
            np.testing.assert_array_equal(table[name], ref[name], err_msg=name)


def box_area(n: np.ndarray, s: np.ndarray) -> float:
    """Marching-cubes area of a solid box of n voxels, closed form: flat faces, 12 chamfered
    edges (strips of half-diagonal width) and 8 corner triangles."""
    length = (n - 1) * s
    faces = 2 * (length[0] * length[1] + length[0] * length[2] + length[1] * length[2])
    h = s / 2
    edges = 4 * sum(length[a] * np.hypot(*np.delete(h, a)) for a in range(3))
    corner = 0.5 * np.linalg.norm(np.cross([-h[0], h[1], 0], [-h[0], 0, h[2]]))
    return float(faces + edges + 8 * corner)


@pytest.mark.parametrize("size", [(1.0, 1.0, 1.0), (30.0, 8.0, 8.0), (2.0, 3.0, 5.0)])
def test_box_has_closed_form_volume_area_and_axes(size) -> None:
    lab = np.zeros((9, 10, 12), np.uint32)
    lab[1:7, 2:9, 1:11] = 5
    n, s = np.array([6, 7, 10]), np.asarray(size)
    row = {k: v[0] for k, v in measure.measure_objects(lab, size).items()}
    assert row["volume_nm3"] == pytest.approx(n.prod() * s.prod())
    assert row["surface_nm2"] == pytest.approx(box_area(n, s), rel=1e-6)
    # The voxel boxes form a solid box of side n * s: variance (n s)^2 / 12 on each axis.
    axes = sorted(2 * np.sqrt(5 * (n * s) ** 2 / 12), reverse=True)
    got = [row["axis_major_nm"], row["axis_mid_nm"], row["axis_minor_nm"]]
    np.testing.assert_allclose(got, axes, rtol=1e-9)
    np.testing.assert_allclose(
        [row["centroid_z"], row["centroid_y"], row["centroid_x"]], [3.5, 5, 5.5]
    )
    np.testing.assert_allclose(
        [row["centroid_z_nm"], row["centroid_y_nm"], row["centroid_x_nm"]],
        np.array([3.5, 5, 5.5]) * s,
    )
    assert not row["touches_border"]


def test_ball_is_close_to_the_ideal_sphere() -> None:
    r = 10
    z, y, x = np.mgrid[-13:14, -13:14, -13:14]
    ball = z**2 + y**2 + x**2 <= r**2
    got = measure.shape_measures(ball, (2.0, 2.0, 2.0))
    radius_nm = 2.0 * r
    assert got["volume_nm3"] == pytest.approx(4 / 3 * math.pi * radius_nm**3, rel=0.02)
    assert got["surface_nm2"] == pytest.approx(4 * math.pi * radius_nm**2, rel=0.12)
    for name in ("axis_major_nm", "axis_mid_nm", "axis_minor_nm"):
        assert got[name] == pytest.approx(2 * radius_nm, rel=0.02)
    assert got["elongation"] == pytest.approx(1.0, abs=1e-9)
    assert 0.85 < got["sphericity"] <= 1.0
    assert got["skeleton_length_nm"] <= 2 * 2.0 * math.sqrt(3)


def test_rod_is_elongated_and_its_skeleton_spans_it() -> None:
    z, y, x = np.mgrid[0:9, 0:9, 0:60]
    rod = ((z - 4) ** 2 + (y - 4) ** 2 <= 9) & (x >= 5) & (x < 55)
    got = measure.shape_measures(rod, (1.0, 1.0, 1.0))
    assert got["elongation"] > 5
    assert 40 <= got["skeleton_length_nm"] <= 50
    assert got["sphericity"] < 0.7


def test_units_follow_the_voxel_size() -> None:
    lab = np.zeros((12, 14, 16), np.uint32)
    lab[2:9, 1:4, 4:14] = 1  # a box, apart from the ellipsoid
    z, y, x = np.mgrid[0:12, 0:14, 0:16]
    lab[(z - 6) ** 2 + (y - 9) ** 2 / 2 + (x - 8) ** 2 / 4 <= 9] = 2  # an ellipsoid
    one = measure.measure_objects(lab, (1.0, 1.0, 1.0))
    k = 3.5
    scaled = measure.measure_objects(lab, (k, k, k))
    for name, power in [("volume_nm3", 3), ("surface_nm2", 2), ("axis_major_nm", 1)]:
        np.testing.assert_allclose(scaled[name], one[name] * k**power, rtol=1e-6)
    np.testing.assert_allclose(scaled["skeleton_length_nm"], one["skeleton_length_nm"] * k)
    for name in ("sphericity", "elongation", "centroid_z", "voxels"):
        np.testing.assert_allclose(scaled[name], one[name], rtol=1e-6)
    aniso = measure.measure_objects(lab, (40.0, 5.0, 5.0))
    np.testing.assert_allclose(aniso["volume_nm3"], one["volume_nm3"] * 1000)
    np.testing.assert_allclose(aniso["centroid_z_nm"], one["centroid_z"] * 40)
    np.testing.assert_allclose(aniso["centroid_x_nm"], one["centroid_x"] * 5)
    # The box's long x side (10 voxels = 50 nm) is now shorter than its z side (7 x 40 nm).
    assert aniso["axis_major_nm"][0] == pytest.approx(2 * np.sqrt(5 * 280**2 / 12))


# --------------------------------------------------------------------------- skeleton length


@pytest.mark.parametrize(
    ("points", "size", "want"),
    [
        ([(0, 0, x) for x in range(5)], (1, 1, 1), 4.0),
        ([(z, 0, 0) for z in range(4)], (30, 8, 8), 90.0),
        ([(0, i, i) for i in range(4)], (30, 3, 4), 15.0),
        ([(i, i, i) for i in range(3)], (1, 2, 2), 6.0),
        ([(0, 0, 0), (0, 0, 1), (0, 1, 1)], (1, 1, 1), 2.0),  # corner: the diagonal is skipped
        ([(0, 0, 0)], (1, 1, 1), 0.0),
        ([], (1, 1, 1), 0.0),
    ],
)
def test_skeleton_length_of_hand_made_paths(points, size, want) -> None:
    skel = np.zeros((5, 5, 6), bool)
    for p in points:
        skel[p] = True
    assert measure.skeleton_length_nm(skel, size) == pytest.approx(want)


@pytest.mark.parametrize("seed", range(4))
def test_skeleton_length_matches_brute_force_on_random_voxels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    skel = rng.random((6, 7, 8)) < 0.15
    skel[0, 0, 0] = skel[-1, -1, -1] = True  # voxels on the array edge
    size = np.array([3.0, 2.0, 1.5])
    want = brute_skeleton_length(skel, size)
    assert measure.skeleton_length_nm(skel, size) == pytest.approx(want)


# --------------------------------------------------------------------------- border, filters


def test_touches_border_for_each_face() -> None:
    shape = (8, 9, 10)
    faces = [(0, 4, 4), (7, 4, 4), (4, 0, 4), (4, 8, 4), (4, 4, 0), (4, 4, 9)]
    for face in faces:
        lab = np.zeros(shape, np.uint16)
        lab[3:6, 3:6, 3:6] = 1
        lab[face] = 2
        table = measure.measure_objects(lab, (1, 1, 1))
        assert table["touches_border"].tolist() == [False, True], face


def test_min_voxels_leaves_out_small_objects(labels: np.ndarray) -> None:
    full = measure.measure_objects(labels, VOXEL)
    kept = measure.measure_objects(labels, VOXEL, min_voxels=21)
    np.testing.assert_array_equal(kept["id"], full["id"][full["voxels"] >= 21])
    assert 1 in full["voxels"] and kept["voxels"].min() >= 21


def test_empty_volume_gives_an_empty_table_and_summary() -> None:
    table = measure.measure_objects(np.zeros((4, 5, 6), np.uint32), VOXEL)
    assert all(table[name].size == 0 for name in measure.COLUMNS)
    summary = measure.summarize(table, (4, 5, 6), VOXEL)
    assert summary["count"] == 0 and summary["mean_volume_um3"] is None
    assert summary["histogram"]["counts"] == []


@pytest.mark.parametrize(
    ("lab", "size", "match"),
    [
        (np.zeros((4, 4), np.uint32), VOXEL, "shape"),
        (np.zeros((4, 4, 4), np.float32), VOXEL, "dtype float32"),
        (np.full((4, 4, 4), -3, np.int32), VOXEL, "negative label -3"),
        (np.zeros((4, 4, 4), np.uint32), (1.0, 0.0, 1.0), "voxel_size_nm"),
        (np.zeros((4, 4, 4), np.uint32), (1.0, 1.0), "voxel_size_nm"),
    ],
)
def test_bad_inputs_are_clear_errors(lab, size, match: str) -> None:
    with pytest.raises(measure.MeasureError, match=match):
        measure.measure_objects(lab, size)


# --------------------------------------------------------------------------- summary


def test_summary_matches_the_table(labels: np.ndarray) -> None:
    table = measure.measure_objects(labels, VOXEL)
    s = measure.summarize(table, labels.shape, VOXEL)
    volumes = [(labels == i).sum() * 30 * 8 * 8 / 1e9 for i in table["id"]]
    dataset = 16 * 48 * 56 * 30 * 8 * 8 / 1e9
    assert s["count"] == len(volumes)
    assert s["dataset_volume_um3"] == pytest.approx(dataset)
    assert s["density_per_um3"] == pytest.approx(len(volumes) / dataset)
    assert s["median_volume_um3"] == pytest.approx(np.median(volumes))
    assert s["mean_volume_um3"] == pytest.approx(np.mean(volumes))
    assert s["voxel_fraction"] == pytest.approx((labels > 0).mean())
    assert sum(s["histogram"]["counts"]) == len(volumes)
    json.dumps(s)


def test_volume_histogram_goes_log_for_wide_ranges() -> None:
    counts, edges, log_scale = measure.volume_histogram(np.array([0.001, 0.01, 1.0]), bins=4)
    assert log_scale and counts.tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(edges[[0, -1]], [0.001, 1.0])
    counts, edges, log_scale = measure.volume_histogram(np.array([2.0, 2.0]), bins=3)
    assert not log_scale and counts.sum() == 2


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def instances(tmp_path: Path, labels: np.ndarray) -> Path:
    path = tmp_path / "instances.zarr"
    io.write_volume(path, labels, chunks=(4, 16, 16), attrs={"voxel_size_nm": list(VOXEL)})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_table_summary_and_histogram(
    instances: Path, labels: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    out = instances.parent / "run"
    assert cli.main([str(instances), "--out", str(out)]) == 0
    rows = read_csv(out / "objects.csv")
    table = measure.measure_objects(labels, VOXEL)
    assert list(rows[0]) == list(measure.COLUMNS)
    assert [int(r["id"]) for r in rows] == table["id"].tolist()
    np.testing.assert_array_equal([float(r["surface_nm2"]) for r in rows], table["surface_nm2"])
    assert [r["touches_border"] == "true" for r in rows] == table["touches_border"].tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == len(rows) and summary["voxel_size_nm"] == list(VOXEL)
    assert (out / "volume_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "objects.parquet").exists() == HAS_PYARROW == summary["parquet"]
    # no temporaries; the marker of measure's outputs stays
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [cli.MARKER_NAME]
    assert f"{len(rows)} objects" in capsys.readouterr().out


def test_cli_refuses_to_overwrite_and_replaces_with_overwrite(
    instances: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = instances.parent / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main([str(instances), "--out", str(out)]) == 0  # other files are fine
    (out / "objects.csv").write_text("old")
    (out / "objects.parquet").write_text("stale")
    assert cli.main([str(instances), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "objects.csv").read_text() == "old"
    assert cli.main([str(instances), "--out", str(out), "--overwrite", "--slab", "3"]) == 0
    assert read_csv(out / "objects.csv")[0]["id"] == "1"
    assert (out / "objects.parquet").exists() == HAS_PYARROW  # no stale table left behind
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_slab_does_not_change_the_table(instances: Path) -> None:
    texts = []
    for extra in ([], ["--slab", "1"], ["--slab", "16"]):
        out = instances.parent / f"run{len(texts)}"
        assert cli.main([str(instances), "--out", str(out), *extra]) == 0
        texts.append((out / "objects.csv").read_text())
    assert texts[0] == texts[1] == texts[2]


def test_cli_needs_a_voxel_size(
    tmp_path: Path, labels: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bare.zarr"
    io.write_volume(path, labels, chunks=(8, 48, 56))
    assert cli.main([str(path), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "bare.zarr" in err and "voxel_size_nm" in err and "--voxel-size-nm" in err
    assert not (tmp_path / "a" / "objects.csv").exists()
    assert (
        cli.main([str(path), "--out", str(tmp_path / "b"), "--voxel-size-nm", "40", "4", "4"]) == 0
    )
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["voxel_size_nm"] == [40.0, 4.0, 4.0]


def test_cli_failure_leaves_no_partial_file(
    instances: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(summary, path, title):
        def write(tmp: Path) -> None:
            tmp.write_bytes(b"half")
            raise OSError("disk full")

        cli.write_atomic(path, write)

    monkeypatch.setattr(cli, "write_histogram_png", broken)
    out = instances.parent / "run"
    with pytest.raises(OSError, match="disk full"):
        cli.main([str(instances), "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert "volume_histogram.png" not in names and "summary.json" not in names
    assert not [n for n in names if n.startswith(".") and n != cli.MARKER_NAME]


def test_measure_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys, mitoseg.analyze.measure\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_cli_measures_the_components_of_a_mask(tmp_path) -> None:
    from mitoseg import io as mio
    from mitoseg.cli.measure import main as measure_main

    mask = np.zeros((6, 20, 20), dtype=np.uint8)
    mask[1:4, 2:6, 2:6] = 1
    mask[1:4, 10:15, 10:16] = 1  # a second, separate object with the same value
    path = tmp_path / "mask.zarr"
    mio.write_volume(path, mask, attrs={"voxel_size_nm": [5.0, 5.0, 5.0]})
    assert measure_main([str(path), "--out", str(tmp_path / "m"), "--components"]) == 0
    rows = (tmp_path / "m" / "objects.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + two objects
    voxels = sorted(int(r.split(",")[1]) for r in rows[1:])
    assert voxels == [48, 90]
    import cc3d

    components = mio.open_volume(tmp_path / "m" / "components.zarr")[:]
    np.testing.assert_array_equal(components, cc3d.connected_components(mask, connectivity=26))
    again = [str(path), "--out", str(tmp_path / "m"), "--components", "--dask-workers", "2"]
    assert measure_main(again) == 2  # outputs of the earlier run are refused
    assert measure_main([*again, "--overwrite"]) == 0  # a local Dask cluster, same table
    assert (tmp_path / "m" / "objects.csv").read_text().strip().splitlines() == rows
