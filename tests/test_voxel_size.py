"""Voxel sizes (issue 20, point 4): read from the file, never a silent 1 nm; training derives its
anisotropic choices from them; predict keeps the input's and can resample to the model's."""

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

import mitoseg.cli  # noqa: F401  (registers the resolvers)
from mitoseg import io
from mitoseg.cli.common import resolved
from mitoseg.cli.convert import main as convert_main
from mitoseg.cli.train import fill_voxel_size
from mitoseg.io.voxels import is_isotropic
from tests.helpers import predict_in_process
from tests.test_config import compose_train

LAB = (50.0, 4.6, 4.6)  # the serial sections: 50 nm z, 4.6 nm in-plane
UM = [v / 1000 for v in LAB]


def _raw(shape=(4, 16, 16)) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 250, shape).astype(np.uint8)


def _imagej(path: Path, data: np.ndarray, unit: str = "micron") -> Path:
    scale = 1e-3 if unit == "micron" else 1.0
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / (LAB[2] * scale), 1 / (LAB[1] * scale)),
        metadata={"spacing": LAB[0] * scale, "unit": unit, "axes": "ZYX"},
    )
    return path


def _ome_tiff(path: Path, data: np.ndarray) -> Path:
    meta = {"axes": "ZYX", "PhysicalSizeZ": 0.05, "PhysicalSizeZUnit": "µm"}
    meta |= {f"PhysicalSize{a}": 4.6 for a in "YX"} | {f"PhysicalSize{a}Unit": "nm" for a in "YX"}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    return path


def _hdf5(path: Path, data: np.ndarray, attrs: dict, on_group: bool = False) -> Path:
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("volume/raw", data=data)
        (f["volume"] if on_group else dataset).attrs.update(attrs)
    return path


def _ome_zarr(path: Path, data: np.ndarray) -> Path:
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [v / 1000 for v in LAB]}]
    datasets = [{"path": "s0", "coordinateTransformations": scale}]
    ome = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    group = zarr.create_group(str(path), attributes={"ome": ome})
    group.create_array("s0", data=data, chunks=data.shape)
    return path


def _plain_zarr(path: Path, data: np.ndarray, attrs: dict) -> Path:
    zarr.create_array(str(path), data=data, chunks=data.shape, attributes=attrs)
    return path


SOURCES = {
    "imagej_micron": lambda p, d: _imagej(p / "a.tif", d),
    "imagej_nm": lambda p, d: _imagej(p / "a.tif", d, unit="nm"),
    "ome_tiff": lambda p, d: _ome_tiff(p / "a.ome.tif", d),
    "hdf5_element_size_um": lambda p, d: _hdf5(p / "a.h5", d, {"element_size_um": UM}),
    "hdf5_resolution_on_group": lambda p, d: _hdf5(p / "a.h5", d, {"resolution": LAB}, True),
    "hdf5_voxel_size_unit": lambda p, d: _hdf5(p / "a.h5", d, {"voxel_size": UM, "unit": "um"}),
    "zarr_resolution": lambda p, d: _plain_zarr(p / "a.zarr", d, {"resolution": list(LAB)}),
    "ome_zarr_scale": lambda p, d: _ome_zarr(p / "a.zarr", d),
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_conversion_stores_the_voxel_size_the_file_states(kind: str, tmp_path: Path) -> None:
    src = SOURCES[kind](tmp_path, _raw())
    out = io.convert(src, tmp_path / "out.zarr")
    np.testing.assert_allclose(out.attrs["voxel_size_nm"], LAB, rtol=1e-6)
    # ... and on the NGFF scale that viewers read, in nanometres
    ome = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    np.testing.assert_allclose(ome["datasets"][0]["coordinateTransformations"][0]["scale"], LAB)
    assert ome["axes"][0]["unit"] == "nanometer"


def test_conversion_without_a_voxel_size_says_so_and_stores_none(tmp_path, caplog) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", _raw())  # 8f5406b: stored 1 x 1 x 1 nm silently
    with caplog.at_level(logging.WARNING):
        out = io.convert(tmp_path / "plain.tif", tmp_path / "out.zarr")
    assert "voxel_size_nm" not in out.attrs
    assert "plain.tif carries no voxel size: stored none" in caplog.text
    assert "--voxel-size-nm" in caplog.text


def test_tiff_resolution_tags_alone_give_y_and_x_and_dpi_is_not_a_voxel_size(
    tmp_path, caplog
) -> None:
    per_cm = 1e7 / 4.6
    tifffile.imwrite(tmp_path / "t.tif", _raw(), resolution=(per_cm, per_cm), resolutionunit=3)
    tifffile.imwrite(tmp_path / "dpi.tif", _raw(), resolution=(72, 72), resolutionunit=2)
    stated = io.sources.read_voxel_size(tmp_path / "t.tif")
    assert stated.nm[0] is None and stated.nm[1:] == pytest.approx((4.6, 4.6))
    assert io.sources.read_voxel_size(tmp_path / "dpi.tif") is None
    with caplog.at_level(logging.WARNING):
        out = io.convert(tmp_path / "t.tif", tmp_path / "out.zarr")
    assert "voxel_size_nm" not in out.attrs and "states only z ?, y 4.6, x 4.6 nm" in caplog.text


def test_a_given_voxel_size_overrides_the_file_and_warns_when_far_from_it(tmp_path, caplog) -> None:
    src = _imagej(tmp_path / "a.tif", _raw())
    with caplog.at_level(logging.WARNING):
        near = io.convert(src, tmp_path / "near.zarr", voxel_size_nm=(52, 5, 5))
    assert near.attrs["voxel_size_nm"] == [52, 5, 5] and not caplog.text
    with caplog.at_level(logging.WARNING):
        far = io.convert(src, tmp_path / "far.zarr", voxel_size_nm=(30, 8, 8))
    assert far.attrs["voxel_size_nm"] == [30, 8, 8]
    assert "using the voxel size given, 30 x 8 x 8 nm" in caplog.text
    assert "z 50, y 4.6, x 4.6 nm (ImageJ metadata of" in caplog.text
    assert "more than 20 % on z, y, x" in caplog.text


def test_mitoseg_convert_keeps_the_files_voxel_size_and_labels_take_the_raws(tmp_path) -> None:
    raw = _imagej(tmp_path / "raw.tif", _raw())
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, (_raw() > 128).astype(np.uint8))
    assert convert_main([str(raw), str(tmp_path / "single.zarr")]) == 0
    assert io.open_volume(tmp_path / "single.zarr").attrs["voxel_size_nm"] == pytest.approx(LAB)
    args = ["--raw", str(raw), "--labels-src", str(labels), "--out", str(tmp_path / "pair")]
    assert convert_main(args) == 0
    for name in ("raw.zarr", "labels.zarr"):
        size = io.open_volume(tmp_path / "pair" / name).attrs["voxel_size_nm"]
        assert size == pytest.approx(LAB), name


# ----------------------------------------------------------------------------- training


def _files(raw: Path) -> list[str]:
    return ["data=files", f"data.train.raw={raw}", f"data.train.labels={raw}", "data.test=null"]


def test_training_takes_the_voxel_size_and_anisotropy_from_the_data(tmp_path) -> None:
    # 8f5406b: a 50 x 4.6 x 4.6 nm zarr was recorded as [1, 1, 1] with isotropic: true
    raw = _plain_zarr(tmp_path / "raw.zarr", _raw(), {"voxel_size_nm": list(LAB)})
    cfg = compose_train(_files(raw), tmp_path, keep_hydra=False)
    fill_voxel_size(cfg)
    run = resolved(cfg)  # what the checkpoint records
    assert run["data"]["train"]["voxel_size_nm"] == pytest.approx(LAB)
    assert run["data"]["isotropic"] is False and run["data"]["augment"]["isotropic"] is False
    bc = compose_train([*_files(raw), "target=bc"], tmp_path, keep_hydra=False)
    fill_voxel_size(bc)
    assert resolved(bc)["target"]["transform"]["in_plane"] is True
    # an explicit choice wins; an isotropic voxel size gives isotropic choices
    forced = compose_train([*_files(raw), "data.isotropic=true"], tmp_path, keep_hydra=False)
    fill_voxel_size(forced)
    assert resolved(forced)["data"]["augment"]["isotropic"] is True
    given = compose_train(
        [*_files(raw), "data.train.voxel_size_nm=[5,5,5]"], tmp_path, keep_hydra=False
    )
    fill_voxel_size(given)
    assert resolved(given)["data"]["isotropic"] is True
    assert is_isotropic((5, 5, 5)) and not is_isotropic((30, 8, 8)) and is_isotropic((6, 5, 5))


def test_training_refuses_data_without_a_voxel_size_naming_file_and_key(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", _raw())
    cfg = compose_train(_files(tmp_path / "plain.tif"), tmp_path, keep_hydra=False)
    with pytest.raises(io.VolumeError) as caught:
        fill_voxel_size(cfg)
    message = str(caught.value)
    assert "plain.tif states no voxel size" in message and "data.train.voxel_size_nm" in message
    assert "\n" not in message


def test_packaged_data_configs_know_their_voxel_sizes(tmp_path) -> None:
    for data, size, isotropic in (
        ("synthetic", [5.0, 5.0, 5.0], True),
        ("synthetic_instance", [30.0, 8.0, 8.0], False),
        ("lucchipp", [5.0, 5.0, 5.0], True),
        ("mitoem_r", [30.0, 8.0, 8.0], False),
    ):
        cfg = compose_train([f"data={data}", "data.root=/data"], tmp_path, keep_hydra=False)
        fill_voxel_size(cfg)  # reads no file: the configs give the size
        run = resolved(cfg)
        assert (run["data"]["train"]["voxel_size_nm"], run["data"]["isotropic"]) == (
            size,
            isotropic,
        ), data


# ----------------------------------------------------------------------------- predict

MODEL_NM = [10.0, 10.0, 10.0]


class Logit1(nn.Module):
    """One channel, identity in probability space: sigmoid(net(x)) == x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x.clamp(1e-6, 1 - 1e-6))


class GradientX(nn.Module):
    """Probability 0.5 + 4 x the central difference along x: a response that depends on the
    voxel size, as a trained net's does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, (1, 1, 0, 0, 0, 0), mode="replicate")
        prob = 0.5 + 4 * (padded[..., 2:] - padded[..., :-2])
        return torch.logit(prob.clamp(1e-6, 1 - 1e-6))


def _checkpoint(path: Path, net: str = "Logit1") -> Path:
    config = {
        "model": {"_target_": f"{__name__}.{net}"},
        "target": {"name": "semantic", "channels": ["foreground"]},
        "predict": {
            "tile_shape": [8, 16, 16],
            "overlap": 0.25,
            "blend": "gaussian",
            "tta": "none",
            "dtype": "float32",
            "batch_size": 4,
            "channels_last": False,
        },
        "data": {"voxel_size_nm": MODEL_NM, "isotropic": True},
    }
    torch.save({"mitoseg": {"config": config}, "state_dict": {}}, path)
    return path


def _predict(
    tmp_path: Path, src: Path, output: str, *extra: str, net: str = "Logit1"
) -> zarr.Array:
    predict_in_process(
        tmp_path,
        f"ckpt={_checkpoint(tmp_path / f'{net}.ckpt', net)}",
        f"input={src}",
        f"output={tmp_path / output}",
        "block_shape=[8,32,32]",
        "chunk_shape=[8,16,16]",
        *extra,
    )
    return io.open_volume(tmp_path / output)


def _smooth(shape=(8, 48, 48)) -> np.ndarray:
    """A smooth blob (Gaussian, sigma 8 voxels in-plane), uint8 in 20..230."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    d2 = ((y - 20) / 8) ** 2 + ((x - 26) / 8) ** 2 + ((z - 4) / 3) ** 2
    return (20 + 210 * np.exp(-d2 / 2)).astype(np.uint8)


def test_predict_keeps_the_inputs_voxel_size_and_warns_when_not_the_models(
    tmp_path, caplog
) -> None:
    data = _smooth()
    tif = tmp_path / "in.tif"  # 10 x 5 x 5 nm: 2x finer in-plane than the model's 10 nm
    tifffile.imwrite(
        tif, data, imagej=True, resolution=(0.2, 0.2), metadata={"spacing": 10, "unit": "nm"}
    )
    with caplog.at_level(logging.WARNING):
        probs = _predict(tmp_path, tif, "probs.zarr")
    # 8f5406b: stamped the model's [10, 10, 10] onto the output, without a word
    assert probs.attrs["voxel_size_nm"] == [10.0, 5.0, 5.0] and probs.shape == (1, *data.shape)
    assert (
        "has voxel size 10 x 5 x 5 nm but the model was trained at 10 x 10 x 10 nm" in caplog.text
    )
    assert "more than 20 % on y, x; pass resample=true" in caplog.text

    # resample=true: predicted at 10 nm, resampled back onto the input's 10 x 5 x 5 nm grid
    caplog.clear()
    resampled = _predict(tmp_path, tif, "resampled.zarr", "resample=true")
    assert resampled.shape == probs.shape and resampled.attrs["voxel_size_nm"] == [10.0, 5.0, 5.0]
    # the identity net: what it saw on the coarser grid, back on the input's grid
    assert np.abs(resampled[:] - probs[:]).max() < 0.03
    assert np.corrcoef(resampled[:].ravel(), probs[:].ravel())[0, 1] > 0.999
    cache = tmp_path / "cache"
    (model_raw,) = cache.glob("*-at-10x10x10nm-*.zarr")
    assert io.open_volume(model_raw).shape == (8, 24, 24)
    assert not list(cache.glob("*model-grid*"))  # the work output is removed once resampled back
    assert "resample=true" not in caplog.text


def test_predict_input_without_a_voxel_size_gets_the_models_with_a_warning(
    tmp_path, caplog
) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", _smooth((8, 16, 16)))
    with caplog.at_level(logging.WARNING):
        probs = _predict(tmp_path, tmp_path / "plain.tif", "probs.zarr")
    assert probs.attrs["voxel_size_nm"] == MODEL_NM
    assert "states no voxel size: the output gets the model's, 10 x 10 x 10 nm" in caplog.text
    given = _predict(tmp_path, tmp_path / "plain.tif", "given.zarr", "voxel_size_nm=[10,9,9]")
    assert given.attrs["voxel_size_nm"] == [10.0, 9.0, 9.0]


def test_resampled_prediction_sees_the_models_voxel_size(tmp_path) -> None:
    """A net whose response depends on the voxel size (a difference over 2 voxels) answers on
    the input's grid as on the model's: twice its response on the 2x finer input grid."""
    tif = tmp_path / "in.tif"  # 10 x 5 x 5 nm; the model's is 10 x 10 x 10 nm
    tifffile.imwrite(
        tif, _smooth(), imagej=True, resolution=(0.2, 0.2), metadata={"spacing": 10, "unit": "nm"}
    )
    direct = _predict(tmp_path, tif, "direct.zarr", net="GradientX")[0] - 0.5
    resampled = _predict(tmp_path, tif, "resampled.zarr", "resample=true", net="GradientX")[0]
    strong = np.abs(direct) > 0.05
    assert strong.sum() > 500
    ratio = np.median((resampled - 0.5)[strong] / direct[strong])
    assert 1.8 < ratio < 2.2, ratio


def test_resampled_prediction_killed_while_resampling_back_finishes_on_rerun(
    tmp_path, monkeypatch, capsys
) -> None:
    import mitoseg.cli.predict_grid as grid_module

    tif = tmp_path / "in.tif"
    tifffile.imwrite(
        tif, _smooth((8, 32, 32)), imagej=True, resolution=(0.2, 0.2), metadata={"spacing": 10}
    )
    real = grid_module.resample_volume

    def killed_writing_back(source, out, block_shape) -> None:
        if out.shape[0] == 1:  # the probabilities (C, Z, Y, X), not the raw
            raise KeyboardInterrupt
        real(source, out, block_shape)

    monkeypatch.setattr(grid_module, "resample_volume", killed_writing_back)
    with pytest.raises(KeyboardInterrupt):
        _predict(tmp_path, tif, "probs.zarr", "resample=true", "voxel_size_nm=[10,5,5]")
    assert not (tmp_path / "probs.zarr").exists()
    (work,) = (tmp_path / "cache").glob("*model-grid*.zarr")  # finished on the model's grid
    monkeypatch.setattr(grid_module, "resample_volume", real)
    probs = _predict(tmp_path, tif, "probs.zarr", "resample=true", "voxel_size_nm=[10,5,5]")
    assert probs.shape == (1, 8, 32, 32) and not work.exists()
    assert "resampled back" in capsys.readouterr().out
