"""The BCD target (foreground, contour, normalised boundary distance), its loss and decoder, and
the experiments that use it: synthetic_bcd, mitoem_bcd and the Lucchi++ instance benchmark
(lucchipp_bc, lucchipp_bcd, lucchipp_a) on its connected components."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from omegaconf import open_dict
from scipy import ndimage

from mitoseg import io
from mitoseg.decode.instances import BCDWatershed
from mitoseg.decode.run import BlockwiseOptions, DaskOptions, run_decoder
from mitoseg.evaluate.instance import instance_scores
from mitoseg.train.losses import BCDLoss, BCEDiceLoss, DistanceLoss
from mitoseg.train.targets import (
    BinaryContourDistance,
    boundary_distance,
    instance_contour,
    touching_others,
)

ANISO = (30.0, 8.0, 8.0)


# --------------------------------------------------------------------------- target


def _brute_distance(labels: np.ndarray, voxel_size: tuple[float, ...]) -> np.ndarray:
    """boundary_distance by its definition: loops over voxel pairs."""
    coords = np.argwhere(np.ones(labels.shape, bool)).astype(float) * np.asarray(voxel_size)
    flat = labels.ravel()
    touching = np.zeros(labels.size, bool)
    for p in np.flatnonzero(flat):
        z, y, x = np.unravel_index(p, labels.shape)
        box = labels[max(z - 1, 0) : z + 2, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        touching[p] = np.any((box != 0) & (box != flat[p]))
    out = np.zeros(labels.size)
    for i in np.unique(flat[flat > 0]):
        mine = np.flatnonzero((flat == i) & ~touching)
        zero = np.flatnonzero((flat != i) | touching)
        if mine.size == 0:
            continue
        if zero.size == 0:
            out[mine] = 1.0
            continue
        d = np.sqrt(((coords[mine, None, :] - coords[None, zero, :]) ** 2).sum(-1)).min(axis=1)
        out[mine] = d / d.max()
    return out.reshape(labels.shape)


def _small_labels(seed: int) -> np.ndarray:
    """Random boxes (some touching, some cut by the border) in (6, 10, 12)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((6, 10, 12), np.uint16)
    for i in range(1, 6):
        lo = rng.integers(0, (5, 8, 10))
        hi = lo + rng.integers(2, 6, size=3)
        labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1000 * i  # ids far from 1..N
    return labels


@pytest.mark.parametrize(("seed", "voxel_size"), [(0, (1, 1, 1)), (1, ANISO), (2, (5, 4, 3))])
def test_distance_matches_its_definition(seed: int, voxel_size) -> None:
    labels = _small_labels(seed)
    np.testing.assert_allclose(
        boundary_distance(labels, voxel_size), _brute_distance(labels, voxel_size), atol=1e-6
    )


def test_distance_values_on_a_touching_pair() -> None:
    """Two boxes sharing a face in z: 0 on background and on the two layers at the shared face,
    1 at each object's innermost voxels, in physical units on anisotropic voxels."""
    labels = np.zeros((8, 9, 9), np.uint32)
    labels[0:4, 1:8, 1:8], labels[4:8, 1:8, 1:8] = 1, 2  # stacked in z, sharing a face
    d = boundary_distance(labels, ANISO)
    assert d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
    assert not d[labels == 0].any()
    assert not d[3].any() and not d[4].any()  # the layers at the shared face
    assert np.all(touching_others(labels)[3:5] == (labels[3:5] > 0))
    for i in (1, 2):
        assert d[labels == i].max() == 1.0
    # Object 1's centre line (y = x = 4) lies 32 nm (4 voxels of 8 nm) from the background in
    # y and x; slice 2 is 30 nm from the face layer (slice 3), slices 0-1 farther (z = 0 is the
    # array border, no boundary): the largest distance is 32 nm.
    assert d[1, 4, 4] == 1.0 and d[2, 4, 4] == pytest.approx(30 / 32)
    assert d[2, 1, 4] == pytest.approx(8 / 32)
    # On isotropic 8 nm voxels slice 2 is 8 nm from the face, and the largest is slice 0's 24 nm.
    iso = boundary_distance(labels, (8.0, 8.0, 8.0))
    assert iso[0, 4, 4] == 1.0 and iso[2, 4, 4] == pytest.approx(1 / 3)


def test_border_is_no_boundary_and_ids_need_not_be_consecutive() -> None:
    labels = np.zeros((4, 6, 6), np.int64)
    labels[:, :, :3] = 7  # fills a half to the border: distance grows towards x = 0
    full = np.full((3, 4, 4), 2**40, np.int64)  # one object, no boundary in the patch
    d = boundary_distance(labels)
    np.testing.assert_allclose(d[0, 0, :3], [1.0, 2 / 3, 1 / 3])
    assert np.all(boundary_distance(full) == 1.0)
    assert not boundary_distance(np.zeros((2, 3, 3), np.uint8)).any()


def test_bcd_target_channels_and_checks() -> None:
    labels = _small_labels(3).astype(np.uint32)
    target = BinaryContourDistance(width=2, in_plane=True, voxel_size_nm=[30, 8, 8])
    assert target.channels == ("foreground", "contour", "distance")
    assert target.voxel_size_nm == ANISO  # a YAML list becomes a tuple
    out = target(labels)
    assert out.shape == (3, *labels.shape) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], labels > 0)
    np.testing.assert_array_equal(out[1], instance_contour(labels, 2, True))
    np.testing.assert_array_equal(out[2], boundary_distance(labels, ANISO))
    for bad in (None, [1, 2], [0, 1, 1], [1, float("nan"), 1]):
        with pytest.raises(ValueError, match="voxel_size_nm"):
            BinaryContourDistance(voxel_size_nm=bad)
    with pytest.raises(ValueError, match="width"):
        BinaryContourDistance(width=3)


# --------------------------------------------------------------------------- loss


def test_distance_loss_is_lowest_at_the_target_and_ignores_nan() -> None:
    target = torch.rand(2, 1, 4, 6, 6)
    target[target < 0.3] = 0.0
    best = torch.logit(target.clamp(1e-4, 1 - 1e-4)).requires_grad_()
    loss = DistanceLoss()
    value = loss(best, target)
    value.backward()
    assert best.grad is not None and float(best.grad.abs().max()) < 1e-3
    assert float(loss(best.detach() + 0.5, target)) > float(value.detach())
    holes = target.clone()
    holes[0, 0, 0] = float("nan")
    assert torch.isfinite(loss(best.detach(), holes))
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))


def test_bcd_loss_is_the_mask_loss_plus_the_distance_loss() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 8, 8), torch.rand(2, 3, 4, 8, 8)
    target[:, :2] = (target[:, :2] > 0.7).float()
    loss = BCDLoss(dice_weight=0.5, class_balance=False, distance_weight=2.0)
    expected = BCEDiceLoss(1.0, 0.5, False)(logits[:, :2], target[:, :2])
    expected = expected + 2.0 * DistanceLoss(False)(logits[:, 2:], target[:, 2:])
    assert torch.allclose(loss(logits, target), expected)
    with pytest.raises(ValueError, match="3 channels"):
        loss(logits[:, :2], target[:, :2])


# --------------------------------------------------------------------------- decoder


@pytest.fixture(scope="module")
def instance_volume() -> np.ndarray:
    """Touching pairs, necked chains and a border object at 30 x 8 x 8 nm, (24, 128, 128)."""
    from mitoseg.datasets.synthetic import make_instance_volume

    return make_instance_volume((24, 128, 128), seed=4, voxel_size_nm=ANISO)[1]


def _noisy(probs: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blurred = ndimage.gaussian_filter(probs, (0, 0.5, 1.0, 1.0))
    noise = ndimage.gaussian_filter(rng.standard_normal(probs.shape), (0, 1, 2, 2))
    return np.clip(blurred + 0.3 * noise, 0, 1).astype(np.float32)


def test_perfect_bcd_targets_decode_to_the_ground_truth(instance_volume: np.ndarray) -> None:
    """At the default settings: no object above the size floor lost or split, AP-75 >= 0.97;
    touching pairs stay apart and necked chains whole."""
    labels = instance_volume
    probs = BinaryContourDistance(in_plane=True, voxel_size_nm=ANISO)(labels)
    decoder = BCDWatershed(voxel_size_nm=ANISO)
    out = decoder(probs)
    floor = decoder.sizes[1]
    assert instance_scores(labels, out)["ap75"] >= 0.97
    for i in np.unique(labels[labels > 0]):
        inside = labels == i
        if np.count_nonzero(inside) < floor:
            continue
        ids, counts = np.unique(out[inside], return_counts=True)
        best = int(ids[np.argmax(np.where(ids > 0, counts, 0))])
        iou = np.count_nonzero(inside & (out == best)) / np.count_nonzero(inside | (out == best))
        assert best > 0 and iou >= 0.75, f"object {i} lost or split (best IoU {iou:.2f})"


def test_uint8_decodes_as_the_same_values_in_float(instance_volume: np.ndarray) -> None:
    """Probabilities stored as p x 255 and the same values as floats decode identically."""
    probs = _noisy(BinaryContourDistance(in_plane=True, voxel_size_nm=ANISO)(instance_volume), 0)
    as_uint8 = np.rint(probs * 255).astype(np.uint8)
    for settings in (dict(), dict(seed_threshold=0.35, contour_threshold=0.6)):
        decoder = BCDWatershed(voxel_size_nm=ANISO, **settings)
        out = decoder(as_uint8)
        assert out.max() >= 10
        np.testing.assert_array_equal(out, decoder(as_uint8.astype(np.float32) / 255))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_blockwise_is_identical_to_in_memory(
    dtype: str, instance_volume: np.ndarray, tmp_path: Path
) -> None:
    """Blocks of (12, 64, 64) with a halo holding every multi-seed component; the decoder's
    voxel size comes from the probabilities, in memory and blockwise alike."""
    probs = _noisy(BinaryContourDistance(in_plane=True, voxel_size_nm=ANISO)(instance_volume), 1)
    if dtype == "uint8":
        probs = np.rint(probs * 255).astype(np.uint8)
    path = tmp_path / "probs.zarr"
    io.write_volume(path, probs, chunks=(3, 12, 64, 64), attrs={"voxel_size_nm": list(ANISO)})
    decoder = BCDWatershed(seed_threshold=0.35, contour_threshold=0.6)
    whole = BCDWatershed(seed_threshold=0.35, contour_threshold=0.6, voxel_size_nm=ANISO)(probs)
    assert whole.max() >= 10
    in_memory = run_decoder(decoder, path, tmp_path / "memory.zarr")
    np.testing.assert_array_equal(io.open_volume(in_memory.output)[:], whole)
    blocks = BlockwiseOptions((12, 64, 64), (12, 64, 64), DaskOptions(workers=0))
    run = run_decoder(decoder, path, tmp_path / "blocks.zarr", blockwise=blocks)
    assert run.summary["blocks"] == 8
    np.testing.assert_array_equal(io.open_volume(tmp_path / "blocks.zarr")[:], whole)


def test_decoder_checks() -> None:
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\)"):
        BCDWatershed(min_size=1, min_seed_size=1)(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="seed_threshold"):
        BCDWatershed(seed_threshold=1.5)
    with pytest.raises(ValueError, match="contour_threshold"):
        BCDWatershed(contour_threshold=-0.1)
    assert BCDWatershed().n_channels == 3 and BCDWatershed().contour_cut is None
    empty = BCDWatershed(voxel_size_nm=ANISO)(np.zeros((3, 4, 8, 8), np.uint8))
    assert empty.dtype == np.uint32 and not empty.any()


# --------------------------------------------------------------------------- configs


def _resolved(overrides: list[str], tmp_path: Path) -> dict:
    from tests.test_config import resolved

    return resolved(overrides, tmp_path)


@pytest.mark.parametrize(("alias", "base"), [("synthetic_bcd", "synthetic_instance"),
                                             ("mitoem_bcd", "mitoem")])  # fmt: skip
def test_bcd_experiments_are_their_base_with_target_bcd(
    alias: str, base: str, tmp_path: Path
) -> None:
    needs = ["data.root=/data"] if base == "mitoem" else []
    cfg = _resolved([f"experiment={alias}", *needs], tmp_path)
    assert cfg == _resolved([f"experiment={base}", "target=bcd", *needs], tmp_path)
    assert cfg["target"]["channels"] == ["foreground", "contour", "distance"]
    assert cfg["model"]["out_channels"] == 3
    assert cfg["target"]["transform"]["voxel_size_nm"] == cfg["data"]["train"]["voxel_size_nm"]
    assert cfg["target"]["transform"]["in_plane"] is True  # anisotropic data
    assert cfg["postprocess"]["_target_"].endswith(".BCDWatershed")
    assert set(cfg["evaluate"]["sweep"]) <= set(cfg["postprocess"]) | {"min_size_nm3"}


LUCCHI_TARGETS = {"bc": "BCWatershed", "bcd": "BCDWatershed", "a": "AffinityWatershed"}


@pytest.mark.parametrize("target", sorted(LUCCHI_TARGETS))
def test_lucchipp_instance_experiments_keep_the_cpu_budget(target: str, tmp_path: Path) -> None:
    """lucchipp_T is lucchipp_cpu (network, patches, schedule, step budget, time) with target T,
    its own loss, decoder and sweep, on the connected components of the masks."""
    cpu = _resolved(["experiment=lucchipp_cpu", "data.root=/data"], tmp_path)
    cfg = _resolved([f"experiment=lucchipp_{target}", "data.root=/data"], tmp_path)
    for key in ("trainer", "predict"):
        assert cfg[key] == cpu[key], key
    assert cfg["callbacks"]["step_budget"] == cpu["callbacks"]["step_budget"]
    assert cfg["module"]["optimizer"] == cpu["module"]["optimizer"]
    channels = len(cfg["target"]["channels"])
    assert cfg["model"] == cpu["model"] | {"out_channels": channels}
    assert {k: v for k, v in cfg["data"].items() if k not in ("train", "test")} == {
        k: v for k, v in cpu["data"].items() if k not in ("train", "test")
    }
    assert cfg["data"]["train"]["label_components"] and cfg["data"]["test"]["label_components"]
    assert cfg["target"]["name"] == target and cfg["target"]["loss"]["class_balance"] is True
    assert cfg["postprocess"]["_target_"].endswith("." + LUCCHI_TARGETS[target])
    assert cfg["evaluate"]["select_metric"] == "ap75"


def _fake_lucchi(root: Path) -> None:
    """The four Lucchi++ TIFFs, tiny: 0/255 masks of a few boxes, two of them touching (one
    component), raw darker inside."""
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        mask = np.zeros((16, 48, 64), np.uint8)
        for z, y, x in itertools.product((2, 9), (4, 26), (4, 24, 44)):
            mask[z : z + 6, y : y + 16, x : x + 14] = 255
        mask[2:8, 20:26, 4:18] = 255  # joins two boxes into one component
        raw = np.where(mask > 0, 90, 170) + rng.integers(-20, 20, mask.shape)
        tifffile.imwrite(root / f"{name}_im.tif", raw.astype(np.uint8))
        tifffile.imwrite(root / f"{name}_label.tif", mask)


TINY_TRAINING = [
    "~callbacks.step_budget",
    "trainer.max_steps=2",
    "trainer.max_time=null",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false",
    "data.samples_per_epoch=2",
    "data.batch_size=1",
    "data.patch_shape=[8,32,32]",
    "predict.tile_shape=[8,32,32]",
    "predict.tta=none",
    "logger=none",
]


@pytest.mark.parametrize("target", ["bcd", "bc", "a"])
def test_lucchipp_instance_experiment_trains_two_steps_and_scores_components(
    target: str, tmp_path: Path
) -> None:
    """Two steps of experiment=lucchipp_T on fake Lucchi++ TIFFs; the labels become their 3D
    components (11 per volume). For BCD also the test time: validation chooses the decoder, the
    test volume is scored as instances (for BC and A tests/test_cli_instance.py covers it)."""
    from mitoseg.cli.train import train
    from tests.test_config import compose_train

    _fake_lucchi(tmp_path)
    cfg = compose_train(
        [
            f"experiment=lucchipp_{target}",
            f"data.root={tmp_path}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *TINY_TRAINING,
            "++postprocess.min_size=50",
            "++postprocess.min_seed_size=4",
            f"test={target == 'bcd'}",
        ],
        tmp_path / "run",
    )
    with open_dict(cfg):
        del cfg["hydra"]  # as in the entry point, which never sees the hydra section
    metrics = train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    components = io.open_volume(next((tmp_path / "cache").glob("train_label-*-components-*")))
    assert components.dtype == np.uint32 and int(components[:].max()) == 11
    if target != "bcd":
        return
    final = metrics["final"]
    assert final["set"] == "test" and {"ap75", "ap50", "accuracy75", "are"} <= set(final)
    assert final["n_truth"] == 11 and final["n_pred"] > 0  # scored against the components
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"] == final
    instances = io.open_volume(tmp_path / "run" / "test_instances.zarr")
    assert instances.shape == (16, 48, 64) and instances.dtype == np.uint32


def test_synthetic_bcd_trains_two_steps(tmp_path: Path) -> None:
    """experiment=synthetic_bcd: anisotropic synthetic instances, the distance in nm."""
    from mitoseg.cli.train import train
    from tests.test_cli_instance import TINY_ANISO
    from tests.test_config import compose_train

    overrides = [o for o in TINY_ANISO if not o.startswith(("hydra.", "postprocess."))]
    cfg = compose_train(
        [
            "experiment=synthetic_bcd",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.train.shape=[8,64,64]",
            "data.val.shape=[4,64,64]",
            "data.test.shape=[4,64,64]",
            "trainer.max_steps=2",
            "logger=none",
            "test=false",
            *overrides,
        ],
        tmp_path / "run",
    )
    with open_dict(cfg):
        del cfg["hydra"]
    assert train(cfg) == {}
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
