"""Sparse labels (issue 21.2): only a few z slices labelled (``labelled_slices``). The loss and the
validation scores skip unlabelled voxels, every training patch holds a labelled slice, bad slice
lists are refused, and a 20-section anisotropic stack fine-tunes with ``init=``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from omegaconf import open_dict

from mitoseg import io
from mitoseg.datasets.synthetic import make_volume
from mitoseg.datasets.volumes import FileVolumes, VolumePaths
from mitoseg.geometry import Box
from mitoseg.train.augment import Augmenter
from mitoseg.train.data import PatchDataset, TileDataset, VolumeDataModule
from mitoseg.train.losses import BCEDiceLoss
from mitoseg.train.module import confusion_counts
from mitoseg.train.sparse import IGNORE_LABEL, SparseTarget, mark_unlabelled
from mitoseg.train.targets import (
    Affinity,
    BinaryContour,
    BinaryContourDistance,
    Semantic,
)

LABELLED = (3, 10, 17)
VOXEL_NM = [30.0, 5.0, 5.0]


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    """A synthetic 20-section stack at 30 x 5 x 5 nm: raw uint8, labels uint32 (20, 64, 64)."""
    return make_volume((20, 64, 64), seed=5, voxel_size_nm=tuple(VOXEL_NM))


@pytest.fixture()
def stack_zarr(tmp_path: Path, stack: tuple[np.ndarray, np.ndarray]) -> VolumePaths:
    raw, labels = stack
    attrs = {"axes": list(io.AXES), "voxel_size_nm": VOXEL_NM}
    raw_path, label_path = tmp_path / "raw.zarr", tmp_path / "labels.zarr"
    io.write_volume(raw_path, raw, chunks=(8, 32, 32), attrs={**attrs, "kind": "raw"})
    io.write_volume(label_path, labels, chunks=(8, 32, 32), attrs={**attrs, "kind": "labels"})
    return VolumePaths(raw_path, label_path, LABELLED)


def _labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 16, 16), np.uint32)
    labels[:, 3:9, 4:12] = 1
    labels[:, 10:14, 2:7] = 2
    labels[rng.random(labels.shape) < 0.05] = 3
    return labels


def test_loss_gradient_is_zero_on_unlabelled_voxels() -> None:
    """Volume slices 10..15, of which 11 and 13 are labelled: the loss has no gradient on the
    other slices, and what the labels hold there does not change it."""
    labels = _labels()
    marked = mark_unlabelled(labels, 10, [11, 13])
    assert marked.dtype == np.int64 and (marked[[0, 2, 4, 5]] == IGNORE_LABEL).all()
    target = SparseTarget(Semantic())(marked)
    labelled = np.array([False, True, False, True, False, False])
    assert np.isnan(target[0, ~labelled]).all() and not np.isnan(target[0, labelled]).any()
    np.testing.assert_array_equal(target[0, labelled], labels[labelled] > 0)

    scribbled = labels.copy()
    scribbled[~labelled] = 7  # whatever unlabelled slices hold
    other = SparseTarget(Semantic())(mark_unlabelled(scribbled, 10, [11, 13]))
    logits = torch.randn(1, 1, *labels.shape, generator=torch.Generator().manual_seed(0))
    for loss in (BCEDiceLoss(), BCEDiceLoss(class_balance=False)):
        x = logits.clone().requires_grad_(True)
        value = loss(x, torch.from_numpy(target)[None])
        value.backward()
        grad = x.grad[0, 0].abs().flatten(1).sum(1).numpy()
        assert (grad[~labelled] == 0).all() and (grad[labelled] > 0).all()
        assert float(loss(logits, torch.from_numpy(other)[None])) == pytest.approx(float(value))


def test_target_reach_marks_neighbours_of_unlabelled_voxels() -> None:
    """A contour band or an affinity edge that reaches an unlabelled slice is unknown too."""
    marked = mark_unlabelled(_labels(), 0, [2])  # slice 2 of 6 labelled
    bc3d = SparseTarget(BinaryContour(width=2))(marked)  # reach 1 in z
    assert not np.isnan(bc3d[0, 2]).any() and np.isnan(bc3d[1, 2]).all()
    flat = SparseTarget(BinaryContour(width=2, in_plane=True))(marked)
    assert not np.isnan(flat[:, 2]).any() and np.isnan(flat[:, [0, 1, 3, 4, 5]]).all()
    aff = SparseTarget(Affinity())(marked)  # aff_z, aff_y, aff_x
    assert np.isnan(aff[0, 2]).all() and not np.isnan(aff[1:, 2, 1:, 1:]).any()
    with pytest.raises(ValueError, match="BCD target's distance"):
        SparseTarget(BinaryContourDistance())


@pytest.mark.parametrize("foreground_prob", [0.0, 1.0])
def test_every_patch_holds_a_labelled_slice(
    stack_zarr: VolumePaths, foreground_prob: float
) -> None:
    """Random and foreground-seeking draws alike: each patch's target is defined exactly on the
    labelled slices it holds (at least one), NaN elsewhere."""
    region = Box((0, 0, 0), (20, 64, 51))
    dataset = PatchDataset(
        stack_zarr, region, (4, 32, 32), Semantic(), foreground_prob=foreground_prob, length=40
    )
    labels = io.open_volume(stack_zarr.labels)
    seen = set()
    for i in range(len(dataset)):
        box = dataset._draw_box(np.random.default_rng([0, i]), labels)
        z = set(range(box.offset[0], box.stop[0]))
        assert z & set(LABELLED)
        target = dataset[i]["target"].numpy()[0]
        defined = [k for k in range(4) if not np.isnan(target[k]).any()]
        assert [box.offset[0] + k for k in defined] == sorted(z & set(LABELLED))
        assert all(np.isnan(target[k]).all() for k in range(4) if k not in defined)
        seen |= z & set(LABELLED)
    assert seen == set(LABELLED)


def test_augmented_patches_keep_unlabelled_voxels_apart(stack_zarr: VolumePaths) -> None:
    """Flips, elastic deformation and misalignment move the unlabelled marks with the labels."""
    augment = Augmenter(isotropic=False, elastic_prob=1.0, misalignment_prob=1.0)
    region = Box((0, 0, 0), (20, 64, 51))
    dataset = PatchDataset(stack_zarr, region, (6, 32, 32), Semantic(), augment, length=12)
    for i in range(len(dataset)):
        target = dataset[i]["target"].numpy()[0]
        assert np.isnan(target).any() and not np.isnan(target).all()


def test_validation_counts_labelled_voxels_only(stack_zarr: VolumePaths) -> None:
    """Validation tiles: NaN on unlabelled slices; a prediction wrong only there scores 1."""
    dataset = TileDataset(stack_zarr, (8, 32, 32), 0.0, Box((0, 0, 51), (20, 64, 13)), Semantic())
    tp_total = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        target, box = item["target"][None], item["box"].tolist()
        z = np.arange(box[0], box[0] + 8)
        nan = np.isnan(target[0, 0, :, 0, 0].numpy())
        assert (nan[: box[3]] == ~np.isin(z[: box[3]], LABELLED)).all()
        logits = torch.where(target > 0.5, 10.0, -10.0)
        logits[torch.isnan(target)] = 10.0  # all foreground where nothing is known
        tp, fp, fn, _ = confusion_counts(logits, target, 0.5)[0].tolist()
        assert fp == 0 and fn == 0
        tp_total += tp
    assert tp_total > 0


def test_refusals_name_the_slices(stack_zarr: VolumePaths, tmp_path: Path) -> None:
    raw, labels = str(stack_zarr.raw), str(stack_zarr.labels)
    with pytest.raises(ValueError, match="is empty: nothing is labelled"):
        FileVolumes(raw, labels, labelled_slices=[])
    with pytest.raises(ValueError, match=r"lists z \[3\] more than once"):
        FileVolumes(raw, labels, labelled_slices=[3, 3])
    with pytest.raises(io.VolumeError, match=r"z \[25\] outside the volume's slices \(0..19"):
        FileVolumes(raw, labels, labelled_slices=[3, 25]).prepare(tmp_path)

    def setup(slices: list[int], target: object = None, **kwargs: int) -> None:
        train = FileVolumes(raw, labels, labelled_slices=slices)
        module = VolumeDataModule(
            train,
            target=target or Semantic(),
            cache_dir=str(tmp_path),
            patch_shape=(4, 32, 32),
            **kwargs,
        )
        module.setup("fit")

    with pytest.raises(io.VolumeError, match=r"none lies in the training region \(z 0..15\)"):
        setup([17, 18], val_axis=0)
    with pytest.raises(io.VolumeError, match=r"none lies in the validation region"):
        setup([2, 5], val_axis=0)
    with pytest.raises(ValueError, match="BCD target's distance"):
        setup(list(LABELLED), target=BinaryContourDistance())
    setup(list(LABELLED))  # fine


def test_no_foreground_on_labelled_slices_is_refused(tmp_path: Path) -> None:
    raw, labels = make_volume((12, 48, 48), seed=1)
    labels[4] = 0
    io.write_volume(tmp_path / "r.zarr", raw)
    io.write_volume(tmp_path / "l.zarr", labels)
    train = FileVolumes(str(tmp_path / "r.zarr"), str(tmp_path / "l.zarr"), labelled_slices=[4])
    module = VolumeDataModule(
        train, target=Semantic(), cache_dir=str(tmp_path), patch_shape=(4, 32, 32)
    )
    with pytest.raises(io.VolumeError, match=r"no foreground on the labelled slices \[4\]"):
        module.setup("fit")


def test_ignore_label_marks_unlabelled_voxels(stack_zarr: VolumePaths, tmp_path: Path) -> None:
    """ignore_label=255 in an 8-bit label TIFF (0 background, 1 mitochondria): its voxels are
    unlabelled (NaN targets), the other non-zero values the foreground."""
    ids = io.open_volume(stack_zarr.labels)[:]
    labels = (ids > 0).astype(np.uint8)
    labels[:, :, 40:] = 255  # a partly labelled stack
    labels[5, 10:20, 10:20] = 255
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    volumes = FileVolumes(str(stack_zarr.raw), str(tmp_path / "labels.tif"), ignore_label=255)
    paths = volumes.prepare(tmp_path / "cache")
    assert paths.unlabelled is not None and paths.labelled_slices is None
    np.testing.assert_array_equal(io.open_volume(paths.unlabelled)[:] > 0, labels == 255)
    np.testing.assert_array_equal(io.open_volume(paths.labels)[:] > 0, labels == 1)
    dataset = PatchDataset(paths, Box((0, 0, 0), (20, 64, 64)), (4, 32, 32), Semantic(), length=8)
    array = io.open_volume(paths.labels)
    for i in range(len(dataset)):
        box = dataset._draw_box(np.random.default_rng([0, i]), array)
        target = dataset[i]["target"].numpy()[0]
        np.testing.assert_array_equal(np.isnan(target), labels[box.slices] == 255)
    raw, tif = str(stack_zarr.raw), str(tmp_path / "labels.tif")
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="must be a positive label value"):
            FileVolumes(raw, tif, ignore_label=bad)
    with pytest.raises(ValueError, match="255 is also selected as foreground"):
        FileVolumes(raw, tif, ignore_label=255, label_values="1,200-255")


def _compose(overrides: list[str], run: Path):  # type: ignore[no-untyped-def]
    from tests.test_config import compose_train

    cfg = compose_train(overrides, run)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _finetune_overrides(paths: VolumePaths, tmp_path: Path) -> list[str]:
    return [
        "experiment=finetune_sparse",
        f"data.train.raw={paths.raw}",
        f"data.train.labels={paths.labels}",
        f"data.train.labelled_slices=[{','.join(map(str, LABELLED))}]",
        "data.test=null",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.patch_shape=[8,32,32]",
        "data.samples_per_epoch=2",
        "data.batch_size=1",
        "model.channels=[4,8,16,32]",
        "model.num_res_units=1",
        "~callbacks.step_budget",
        "trainer.max_steps=2",
        "trainer.max_time=null",
        "trainer.enable_progress_bar=false",
        "+trainer.num_sanity_val_steps=0",
        "+trainer.limit_val_batches=2",
        "logger=none",
    ]


def test_test_time_evaluation_is_refused_with_sparse_validation(
    stack_zarr: VolumePaths, tmp_path: Path
) -> None:
    from mitoseg.cli.train import check_sparse_test

    cfg = _compose([*_finetune_overrides(stack_zarr, tmp_path), "test=true"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"data.train.labelled_slices=\[3, 10, 17\].*test=false"):
        check_sparse_test(cfg)
    cfg.data.train.labelled_slices = None
    cfg.data.train.ignore_label = 255
    with pytest.raises(ValueError, match=r"data.train.ignore_label=255: .*sparse"):
        check_sparse_test(cfg)
    cfg.test = False
    check_sparse_test(cfg)


def _fake_pretrained(folder: Path, cfg) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """A registry entry ``lucchipp`` in ``folder`` with the network of ``cfg`` (seeded weights)."""
    from hydra.utils import instantiate

    from mitoseg.cli.common import resolved
    from mitoseg.pretrained import sha256_of

    torch.manual_seed(123)
    weights = instantiate(cfg.model).state_dict()
    entry = folder / "lucchipp"
    entry.mkdir(parents=True)
    torch.save(weights, entry / "weights.pt")
    run = resolved(cfg)
    config = {k: run[k] for k in ("model", "target", "postprocess", "predict", "evaluate", "seed")}
    config["data"] = {"voxel_size_nm": [5.0, 5.0, 5.0], "isotropic": True}
    manifest = {"name": "lucchipp", "sha256": sha256_of(entry / "weights.pt"), "config": config}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return weights


def test_finetune_a_20_section_anisotropic_stack_with_init(
    stack_zarr: VolumePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiment=finetune_sparse as the recipe runs it (init=lucchipp, here a stand-in entry
    trained at 5 nm): 2 steps on 3 labelled slices of 20 at 30 x 5 x 5 nm start from the
    entry's weights, and the checkpoint is for 30 x 5 x 5 nm, anisotropic."""
    from mitoseg.cli.common import load_checkpoint
    from mitoseg.cli.train import train

    cfg = _compose(_finetune_overrides(stack_zarr, tmp_path), tmp_path / "tuned")
    assert cfg.init == "lucchipp"
    monkeypatch.setenv("MITOSEG_PRETRAINED", str(tmp_path / "registry"))
    weights = _fake_pretrained(tmp_path / "registry", cfg)
    assert train(cfg) == {}
    stored, tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")
    assert list(stored.data.voxel_size_nm) == VOXEL_NM and stored.data.isotropic is False
    # two small steps from the entry's weights stay close to them; a fresh start would not
    convs = [k for k in weights if k.endswith("conv.weight") and weights[k].ndim == 5]
    assert convs and all(torch.allclose(tuned[k], weights[k], atol=0.02) for k in convs)
