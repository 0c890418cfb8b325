"""Instance segmentation end to end through the console scripts: a fake MitoEM release in its
exact layout, the synthetic instance experiments, decoder sweeps on cached probabilities."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mitoseg import io
from tests.fake_mitoem import write_fake_release
from tests.test_cli import run

TINY_ANISO = [
    "model.widths=[4,8,8]",
    "model.kernel_sizes=[[1,3,3],3,3]",
    "model.pool_sizes=[[1,2,2],2]",
    "data.patch_shape=[4,32,32]",
    "predict.tile_shape=[4,32,32]",
    "trainer.max_steps=4",
    "data.samples_per_epoch=4",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false",
    "postprocess.min_seed_size=2",
    "postprocess.min_size=10",
    "hydra.run.dir=run",
]


@pytest.fixture(scope="module")
def mitoem_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("mitoem")
    write_fake_release(cwd / "MitoEM-R", depth=(8, 4, 8), size=64, seed=0)
    run(
        "mitoseg-train",
        "experiment=mitoem_bc",
        "data.root=MitoEM-R",
        "data.train.raw_z_range=[0,8]",
        "data.val.raw_z_range=[8,12]",
        "data.test={_target_:mitoseg.datasets.volumes.FileVolumes,raw:im,raw_z_range:[12,20],voxel_size_nm:[30,8,8]}",
        "evaluate.sweep.seed_threshold=[0.5,0.7]",
        "evaluate.sweep.contour_threshold=[0.6]",
        "evaluate.sweep.mask_threshold=[0.3]",
        # Block by block as the recipe says, in this process: starting a local Dask cluster
        # costs more than the rest of this run; the README walkthrough (tests/test_readme.py)
        # trains the same recipe with its Dask cluster.
        "evaluate.blockwise.dask.workers=0",
        *TINY_ANISO,
        cwd=cwd,
    )
    return cwd


def test_mitoem_bc_trains_on_the_release_layout_and_decodes(mitoem_run: Path) -> None:
    out = mitoem_run / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["decoder"] == "BCWatershed" and metrics["selected_on"] == "val/ap75"
    assert metrics["blockwise"]["blocks"] >= 1  # the MitoEM recipes decode block by block
    assert [row["seed_threshold"] for row in metrics["val"]] == [0.5, 0.7]
    assert all("ap75" in row and "accuracy75" in row for row in metrics["val"])
    # The test slices have hidden labels: predicted and decoded, not scored.
    assert metrics["final"]["set"] == "test" and "ap75" not in metrics["final"]
    probs = io.open_volume(out / "test_probs.zarr")
    assert probs.shape == (2, 8, 64, 64) and probs.attrs["channels"] == ["foreground", "contour"]
    instances = io.open_volume(out / "test_instances.zarr")
    assert instances.shape == (8, 64, 64) and instances.dtype == np.uint32
    stored = io.open_volume(out / "val_labels.zarr")[:]
    assert stored.shape == (4, 64, 64) and stored.max() > 255  # ids > 8 bits survived


def test_segment_sweep_over_bc_thresholds_marks_the_best(mitoem_run: Path) -> None:
    out = mitoem_run / "run"
    result = run(
        "mitoseg-segment",
        "-m",
        f"probs={out / 'val_probs.zarr'}",
        f"labels={out / 'val_labels.zarr'}",
        "postprocess=bc_watershed",
        "postprocess.seed_threshold=0.5,0.7",
        "postprocess.mask_threshold=0.3,0.5",
        "postprocess.min_seed_size=2",
        "postprocess.min_size=10",
        "hydra.sweep.dir=sweep",
        cwd=mitoem_run,
    )
    assert "sweep summary" in result.stdout and "ap75" in result.stdout
    rows = list(csv.DictReader((mitoem_run / "sweep" / "sweep_summary.csv").open()))
    assert len(rows) == 4 and sum(r["best"] == "*" for r in rows) == 1
    assert {(r["seed_threshold"], r["mask_threshold"]) for r in rows} == {
        ("0.5", "0.3"),
        ("0.5", "0.5"),
        ("0.7", "0.3"),
        ("0.7", "0.5"),
    }
    # The training run scored the same combination on the same cached probabilities.
    metrics = json.loads((out / "metrics.json").read_text())
    trained = next(r for r in metrics["val"] if r["seed_threshold"] == 0.5)
    row = next(r for r in rows if (r["seed_threshold"], r["mask_threshold"]) == ("0.5", "0.3"))
    assert float(row["ap75"]) == pytest.approx(trained["ap75"], nan_ok=True)
    assert io.open_volume(mitoem_run / "sweep" / "0" / "instances.zarr").dtype == np.uint32


def test_decoder_of_another_target_is_a_clear_error(mitoem_run: Path) -> None:
    probs = mitoem_run / "run" / "val_probs.zarr"
    result = run(
        "mitoseg-segment", f"probs={probs}", "postprocess=ac_watershed", cwd=mitoem_run, ok=False
    )
    message = result.stderr + result.stdout
    assert result.returncode != 0 and "has 2 channels" in message and "needs 4" in message


def test_resuming_with_another_target_is_refused(mitoem_run: Path) -> None:
    ckpt = mitoem_run / "run" / "checkpoints" / "last.ckpt"
    result = run(
        "mitoseg-train",
        "experiment=mitoem_a",
        "data.root=MitoEM-R",
        f"ckpt={ckpt}",
        *TINY_ANISO[:-1],
        "hydra.run.dir=resumed",
        cwd=mitoem_run,
        ok=False,
    )
    message = result.stderr + result.stdout
    assert result.returncode != 0 and "trained for target 'bc'" in message


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory) -> dict[str, Path]:
    """The synthetic instance experiment trained for each target, as one ``mitoseg-train -m``
    (one process: the three runs cost about one interpreter start-up instead of three).
    ``experiment=synthetic_instance target=T`` composes to exactly ``experiment=synthetic_T``
    (tests/test_config.py, test_experiment_alias_is_the_base_experiment_with_its_target)."""
    cwd = tmp_path_factory.mktemp("synthetic")
    run(
        "mitoseg-train",
        "-m",
        "experiment=synthetic_instance",
        "target=a,ac,bc",
        # no sweep table: the three decoders' parameters are not one set of columns
        "~hydra.callbacks.sweep_summary",
        "data.train.shape=[8,64,64]",
        "data.val.shape=[4,64,64]",
        "data.test.shape=[4,64,64]",
        "evaluate.sweep={seed_threshold:[0.5],mask_threshold:[0.3]}",
        *TINY_ANISO[:-1],
        "hydra.sweep.dir=sweep",
        cwd=cwd,
    )
    runs = {}
    for job in (cwd / "sweep").iterdir():
        if (job / ".hydra" / "overrides.yaml").is_file():
            overrides = (job / ".hydra" / "overrides.yaml").read_text()
            runs[next(t for t in ("a", "ac", "bc") if f"- target={t}\n" in overrides)] = job
    return runs


@pytest.mark.parametrize("target", ["a", "ac", "bc"])
def test_synthetic_instance_experiments_train_and_score_ap(
    target: str, synthetic_runs: dict[str, Path]
) -> None:
    out = synthetic_runs[target]
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["set"] == "test" and {"ap75", "ap50", "accuracy75", "are"} <= set(final)
    assert io.open_volume(out / "test_instances.zarr").shape == (4, 64, 64)


def test_predict_with_an_instance_checkpoint_gives_the_test_probabilities(
    mitoem_run: Path,
) -> None:
    ckpt = next((mitoem_run / "run" / "checkpoints").glob("step*.ckpt"))  # the one tested
    listing = mitoem_run / "MitoEM-R" / "im"
    raw = mitoem_run / "test_raw.zarr"
    run("mitoseg-convert", str(listing), str(raw), "--z-range", "12", "20", cwd=mitoem_run)
    run(
        "mitoseg-predict",
        f"ckpt={ckpt}",
        f"input={raw}",
        "output=probs.zarr",
        "trainer.enable_progress_bar=false",
        cwd=mitoem_run,
    )
    probs = io.open_volume(mitoem_run / "probs.zarr")
    assert probs.attrs["channels"] == ["foreground", "contour"]
    expected = io.open_volume(mitoem_run / "run" / "test_probs.zarr")[:]
    np.testing.assert_array_equal(probs[:], expected)


def test_outputs_carry_the_voxel_size_and_open_as_ome_zarr(mitoem_run: Path) -> None:
    out = mitoem_run / "run"
    for name in ("val_probs.zarr", "test_probs.zarr", "test_instances.zarr"):
        assert io.open_volume(out / name).attrs["voxel_size_nm"] == [30.0, 8.0, 8.0]
        assert (out / name / "0").is_dir()  # NGFF group, full resolution at "0"
