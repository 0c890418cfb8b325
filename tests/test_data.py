import numpy as np
import pytest
import torch

from mitoseg import io
from mitoseg.datasets.volumes import FileVolumes, SyntheticVolumes, VolumePaths
from mitoseg.geometry import Box
from mitoseg.train.augment import Augmenter
from mitoseg.train.data import PatchDataset, TileDataset, VolumeDataModule
from mitoseg.train.sampling import EpochSampler
from mitoseg.train.targets import Semantic


def patch_dataset(paths, **kwargs) -> PatchDataset:
    region = Box((0, 0, 0), (24, 48, 40))
    options = dict(augment=Augmenter(), seed=5, length=6)
    options.update(kwargs)
    return PatchDataset(VolumePaths(*paths), region, (8, 16, 16), Semantic(), **options)


def test_patches_depend_only_on_seed_and_index(small_zarr) -> None:
    a, b = patch_dataset(small_zarr), patch_dataset(small_zarr)
    for index in (0, 3, 1000):
        torch.testing.assert_close(a[index]["raw"], b[index]["raw"])
    assert not torch.equal(a[0]["raw"], a[1]["raw"])
    assert not torch.equal(a[0]["raw"], patch_dataset(small_zarr, seed=6)[0]["raw"])
    item = a[2]
    assert item["raw"].shape == (1, 8, 16, 16) and item["target"].shape == (1, 8, 16, 16)
    assert item["raw"].dtype == torch.float32 and 0 <= item["raw"].min() <= item["raw"].max() <= 1


def test_patches_stay_inside_the_training_region(small_zarr) -> None:
    raw_path, _ = small_zarr
    marked = np.minimum(io.open_volume(raw_path)[:], 254)
    marked[:, :, 40:] = 255  # the held-out x-range; region x < 40 never holds 255
    io.write_volume(raw_path, marked, overwrite=True)
    dataset = patch_dataset(small_zarr, augment=None, length=50)
    maxima = [float(dataset[i]["raw"].max()) for i in range(50)]
    assert max(maxima) < 1.0
    assert max(maxima) == pytest.approx(254 / 255)


def test_patch_larger_than_region_is_refused(small_zarr) -> None:
    with pytest.raises(ValueError, match=r"patch_shape \(32, 16, 16\).*\(24, 48, 40\)"):
        PatchDataset(
            VolumePaths(*small_zarr), Box((0, 0, 0), (24, 48, 40)), (32, 16, 16), Semantic()
        )


def test_epoch_sampler_gives_each_epoch_new_indices() -> None:
    sampler = EpochSampler(4)
    first = list(sampler)
    sampler.set_epoch(3)
    assert first == [0, 1, 2, 3] and list(sampler) == [12, 13, 14, 15] and len(sampler) == 4


def test_tile_dataset_pads_small_volumes(small_zarr) -> None:
    dataset = TileDataset(VolumePaths(small_zarr[0]), (32, 32, 32), 0.5)
    item = dataset[0]
    assert item["raw"].shape == (1, 32, 32, 32)
    assert item["box"].tolist()[3:] == [24, 32, 32]


def test_file_volumes_resolve_root_and_refuse_mismatch(tmp_path, small_volume) -> None:
    raw, labels = small_volume
    io.write_volume(tmp_path / "raw.zarr", raw)
    io.write_volume(tmp_path / "labels.zarr", labels[:-1])
    volumes = FileVolumes("raw.zarr", "labels.zarr")
    with pytest.raises(
        io.VolumeError, match=r"raw.zarr.*\(24, 48, 56\).*labels.zarr.*\(23, 48, 56\)"
    ):
        volumes.prepare(tmp_path / "cache", root=tmp_path)
    with pytest.raises(io.VolumeError, match="not found"):
        FileVolumes("missing.tif").prepare(tmp_path / "cache", root=tmp_path)


def test_tiff_input_is_converted_once(tmp_path, small_volume) -> None:
    import tifffile

    raw, labels = small_volume
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "labels.tif", ((labels > 0) * 255).astype(np.uint8))
    volumes = FileVolumes(str(tmp_path / "raw.tif"), str(tmp_path / "labels.tif"))
    paths = volumes.prepare(tmp_path / "cache")
    np.testing.assert_array_equal(io.open_volume(paths.raw)[:], raw)
    assert set(np.unique(io.open_volume(paths.labels)[:])) == {0, 1}
    mtime = (paths.raw / "zarr.json").stat().st_mtime_ns
    assert volumes.prepare(tmp_path / "cache") == paths
    assert (paths.raw / "zarr.json").stat().st_mtime_ns == mtime


def test_datamodule_holds_out_validation(tmp_path) -> None:
    dm = VolumeDataModule(
        SyntheticVolumes((16, 32, 40), seed=1),
        SyntheticVolumes((16, 32, 40), seed=2),
        target=Semantic(),
        cache_dir=str(tmp_path),
        patch_shape=(8, 16, 16),
        val_fraction=0.25,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_region == Box((0, 0, 0), (16, 32, 30))
    assert dm.val_region == Box((0, 0, 30), (16, 32, 10))
    assert [s.name for s in dm.eval_sets] == ["val", "test"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["raw"].shape == (2, 1, 8, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"raw", "box", "target"}


def test_worker_processes_draw_the_same_patches(small_zarr) -> None:
    dataset = patch_dataset(small_zarr, length=4)
    loaders = [
        torch.utils.data.DataLoader(dataset, batch_size=2, sampler=EpochSampler(4), num_workers=n)
        for n in (0, 2)
    ]
    serial, parallel = (torch.cat([b["raw"] for b in loader]) for loader in loaders)
    torch.testing.assert_close(serial, parallel)


def test_foreground_patches_always_show_foreground(tmp_path) -> None:
    labels = np.zeros((24, 48, 56), np.uint32)
    labels[20:22, 3:5, 30:33] = 7  # one tiny object
    raw = np.zeros(labels.shape, np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw, chunks=(8, 16, 16))
    io.write_volume(tmp_path / "labels.zarr", labels, chunks=(8, 16, 16))
    paths = (tmp_path / "raw.zarr", tmp_path / "labels.zarr")
    dataset = patch_dataset(paths, augment=None, foreground_prob=1.0, length=30)
    assert all(dataset[i]["target"].sum() > 0 for i in range(30))
    assert [b.offset for b in dataset._blocks] == [(16, 0, 16), (16, 0, 32)]
    uniform = patch_dataset(paths, augment=None, foreground_prob=0.0, length=30)
    assert sum(uniform[i]["target"].sum() > 0 for i in range(30)) < 15


def test_separate_validation_volume_and_unlabelled_test_volume(tmp_path, small_volume) -> None:
    raw, labels = small_volume
    for name, part in (("train", slice(0, 16)), ("val", slice(16, 24))):
        io.write_volume(tmp_path / f"{name}_raw.zarr", raw[part], chunks=(8, 32, 32))
        io.write_volume(tmp_path / f"{name}_labels.zarr", labels[part], chunks=(8, 32, 32))
    io.write_volume(tmp_path / "test_raw.zarr", raw, chunks=(8, 32, 32))
    module = VolumeDataModule(
        FileVolumes("train_raw.zarr", "train_labels.zarr"),
        test=FileVolumes("test_raw.zarr"),
        val=FileVolumes("val_raw.zarr", "val_labels.zarr"),
        target=Semantic(),
        root=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        patch_shape=(8, 16, 16),
    )
    module.setup("fit")
    # The whole training volume trains; validation is the other volume, test has no labels.
    assert module.train_region == Box((0, 0, 0), (16, 48, 56))
    assert [s.name for s in module.eval_sets] == ["val", "test"]
    assert module.eval_sets[0].region.shape == (8, 48, 56)
    assert module.eval_sets[1].paths.labels is None
    batch = next(iter(module.val_dataloader()))
    assert batch["target"].shape[1:] == (1, 8, 16, 16)


def test_file_volumes_select_z_ranges_of_raw_and_labels(tmp_path, small_volume) -> None:
    raw, labels = small_volume
    io.write_volume(tmp_path / "raw.zarr", raw, chunks=(8, 32, 32))
    io.write_volume(tmp_path / "part_labels.zarr", labels[4:12], chunks=(8, 32, 32))
    volumes = FileVolumes("raw.zarr", "part_labels.zarr", raw_z_range=[4, 12])
    paths = volumes.prepare(tmp_path / "cache", root=tmp_path)
    np.testing.assert_array_equal(io.open_volume(paths.raw)[:], raw[4:12])
    np.testing.assert_array_equal(io.open_volume(paths.labels)[:], labels[4:12])
    with pytest.raises(ValueError, match=r"raw_z_range must be \[start, stop\)"):
        FileVolumes("raw.zarr", raw_z_range=[5, 5])
    mismatch = FileVolumes("raw.zarr", "part_labels.zarr", raw_z_range=[0, 10])
    with pytest.raises(io.VolumeError, match=r"\(10, 48, 56\).*\(8, 48, 56\)"):
        mismatch.prepare(tmp_path / "cache", root=tmp_path)
