import h5py
import numpy as np
import pytest

from mitoseg import io
from mitoseg.analyze.export import export_hdf5
from mitoseg.cli.export import main


@pytest.fixture()
def instances(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 70000, size=(7, 20, 24)).astype(np.uint32)
    path = tmp_path / "instances.zarr"
    io.write_volume(path, ids, chunks=(4, 16, 16))
    return path, ids


def test_export_streams_slabs_into_one_hdf5_dataset(instances, tmp_path) -> None:
    path, ids = instances
    out = export_hdf5(io.open_volume(path), tmp_path / "sub" / "rat.h5", slab=3)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["main"][:], ids)
        assert f["main"].dtype == np.uint32
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary left behind


def test_ids_that_do_not_fit_leave_nothing_behind(instances, tmp_path) -> None:
    path, _ = instances
    with pytest.raises(ValueError, match="outside uint16"):
        export_hdf5(io.open_volume(path), tmp_path / "x.h5", dtype="uint16")
    assert list(tmp_path.glob("*.h5")) == [] and not list(tmp_path.glob(".x.h5*"))


def test_cli_refuses_to_overwrite_unless_told(instances, tmp_path, capsys) -> None:
    path, ids = instances
    dst = tmp_path / "human.h5"
    assert main([str(path), str(dst), "--dataset", "seg"]) == 0
    assert main([str(path), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([str(path), str(dst), "--overwrite", "--dtype", "uint64"]) == 0
    with h5py.File(dst) as f:
        assert list(f) == ["main"] and f["main"].dtype == np.uint64
        np.testing.assert_array_equal(f["main"][:], ids)
