"""Small things users notice (issue 21, point 6): progress inside a block, every command says
where it wrote, the conversion cache in the user's cache folder, x / y sections at the voxel
aspect ratio, and ``--help`` that describes the keys users set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import tifffile
import torch
from torch import nn

from mitoseg import io
from mitoseg.geometry import Box
from mitoseg.predict.blocks import BlockPlan
from mitoseg.predict.tiles import BlockBlender
from mitoseg.predict.writer import BlockPredictData, BlockWriter, PredictJob
from mitoseg.train.module import SegmentationModule

# --- (a) progress inside a block ---------------------------------------------------------------


def test_blender_reports_tiles_done_after_each_batch() -> None:
    tile = (4, 8, 8)
    tiles = [Box((z, y, x), tile) for z in (0, 4) for y in (0, 8) for x in (0, 8)]
    seen: list[tuple[int, int]] = []
    blender = BlockBlender(torch.ones(tile), batch_size=3, progress=lambda *d: seen.append(d))
    raw = torch.rand(8, 16, 16)
    item = {
        "raw": raw, "origin": (0, 0, 0), "index": 0, "stride": tile, "job": "one",
        "tiles": torch.tensor([[*t.offset, *t.shape] for t in tiles]),
        "run": torch.ones(len(tiles), dtype=torch.bool),
        "write": torch.tensor([0, 0, 0, 8, 16, 16]),
        "sweep": ((8, 16, 16), (8, 16, 16), (0, 1, 2)),
    }  # fmt: skip
    probs = blender(lambda x: x, item)
    assert seen == [(3, 8), (6, 8), (8, 8)]
    torch.testing.assert_close(probs[0], raw)  # progress changes nothing


def test_a_one_block_prediction_shows_its_tiles(tmp_path, capfd, monkeypatch) -> None:
    shape = (8, 32, 32)
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", data)
    plan = BlockPlan(
        raw=str(tmp_path / "raw.zarr"), shape=shape, channels=("fg",), dtype="uint8",
        block_shape=shape, tile_shape=(8, 16, 16), overlap=0.5, blend="gaussian", tta="none",
        checkpoint="test", chunk_shape=shape,
    )  # fmt: skip
    assert len(plan.blocks()) == 1
    job = PredictJob(plan, tmp_path / "probs.zarr")
    seen: list[tuple[int, int]] = []
    tiles_done = BlockWriter._tiles_done

    def record(self, done: int, total: int) -> None:
        seen.append((done, total))
        tiles_done(self, done, total)

    monkeypatch.setattr(BlockWriter, "_tiles_done", record)
    torch.manual_seed(0)
    module = SegmentationModule(nn.Conv3d(1, 1, 3, padding=1), channels=("fg",), tile_batch=4)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        use_distributed_sampler=False, callbacks=[BlockWriter([job], progress=True)],
    )  # fmt: skip
    trainer.predict(module, datamodule=BlockPredictData(job), return_predictions=False)
    # 3 x 3 tiles in y-x, one in z: three batches of at most 4, before the block is written
    assert seen == [(4, 9), (8, 9), (9, 9)]
    assert "tiles of block" in capfd.readouterr().err
    assert io.open_volume(tmp_path / "probs.zarr").shape == (1, *shape)


# --- (b) every command says where it wrote ------------------------------------------------------


def _run_hydra_cli(main, argv: list[str], monkeypatch, capsys) -> list[str]:  # type: ignore[no-untyped-def]
    """Run a Hydra console script in this process; its stdout lines."""
    monkeypatch.setattr("sys.argv", [*argv, "hydra/job_logging=none"])
    main()
    return capsys.readouterr().out.strip().splitlines()


@pytest.fixture
def segment_inputs(tmp_path, small_volume) -> tuple[Path, Path]:
    """Probabilities (zarr) and their labels as a TIFF (converted into the cache when used)."""
    _, labels = small_volume
    fg = ((labels > 0) * 255).astype(np.uint8)[None]
    attrs = {"axes": ["c", "z", "y", "x"], "kind": "probabilities", "channels": ["foreground"]}
    io.write_volume(tmp_path / "probs.zarr", fg, attrs={**attrs, "scale": 255})
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint16))
    return tmp_path / "probs.zarr", tmp_path / "labels.tif"


def test_segment_says_where_it_wrote_and_converts_into_the_users_cache(
    tmp_path, segment_inputs, monkeypatch, capsys
) -> None:
    from mitoseg.cli import segment

    probs, labels = segment_inputs
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MITOSEG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "seg"
    argv = ["mitoseg-segment", f"probs={probs}", f"labels={labels}", f"hydra.run.dir={out}"]
    lines = _run_hydra_cli(segment.main, [*argv, "progress=false"], monkeypatch, capsys)
    assert lines[-1] == f"wrote {out}" and (out / "mask.zarr").is_dir()
    # the TIFF labels were converted once into $XDG_CACHE_HOME/mitoseg, not ./data_cache
    assert [p.suffix for p in (tmp_path / "xdg" / "mitoseg").iterdir()] == [".zarr"]
    assert not (tmp_path / "data_cache").exists()


def test_convert_and_download_say_where_they_wrote(tmp_path, monkeypatch, capsys) -> None:
    from mitoseg.cli import convert, download
    from mitoseg.datasets.registry import Result

    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((2, 8, 8), np.uint8))
    assert convert.main([str(tmp_path / "raw.tif"), str(tmp_path / "raw.zarr")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {tmp_path / 'raw.zarr'}: ")

    root = tmp_path / "d" / "lucchipp"
    for done, last in ((False, f"wrote {root}"), (True, f"{root} was complete already")):
        result = Result(root, root / "lucchi_pp.zip", (), {}, already_done=done)
        monkeypatch.setattr(download, "download_dataset", lambda *a, r=result, **k: r)
        assert download.main(["lucchipp", "--dest", str(tmp_path / "d"), "--no-progress"]) == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(last)


# --- (c) the conversion cache -------------------------------------------------------------------


def test_cache_folder_is_the_users_unless_overridden(tmp_path, monkeypatch) -> None:
    from mitoseg.files import cache_dir

    home = Path.home()
    assert cache_dir({}) == home / ".cache" / "mitoseg"
    assert cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/mitoseg")
    assert cache_dir({"XDG_CACHE_HOME": "relative"}) == home / ".cache" / "mitoseg"  # XDG spec
    both = {"XDG_CACHE_HOME": "/x/cache", "MITOSEG_CACHE": "/y/mine"}
    assert cache_dir(both) == Path("/y/mine")
    # every command's config takes it (and cache_dir= / data.cache_dir= still override it)
    from mitoseg.cli.common import compose_config

    monkeypatch.delenv("MITOSEG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    found = [compose_config(name).cache_dir for name in ("predict", "segment")]
    found.append(compose_config("train").data.cache_dir)
    overridden = compose_config("predict", ["cache_dir=/z"]).cache_dir
    assert found == [str(tmp_path / "mitoseg")] * 3 and overridden == "/z"
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "env"))
    from mitoseg.datasets.volumes import SyntheticVolumes
    from mitoseg.train.data import VolumeDataModule

    data = VolumeDataModule(SyntheticVolumes(shape=(8, 16, 16)), target=lambda x: x)
    assert data.cache_dir == tmp_path / "env"


# --- (d) x / y sections at the voxel aspect ratio ------------------------------------------------


def test_x_and_y_sections_are_stretched_to_the_voxel_aspect(tmp_path) -> None:
    from PIL import Image

    from mitoseg.analyze.plots import GAP, HEADER, to_voxel_aspect
    from mitoseg.cli import view

    # one pixel per 8 nm: a 30 nm section becomes 3.75 pixels, rounded over the whole height
    image = np.arange(4 * 5).reshape(4, 5)
    stretched = to_voxel_aspect(image, (30.0, 8.0))
    assert stretched.shape == (15, 5)
    np.testing.assert_array_equal(stretched[:, 0], [0] * 4 + [5] * 4 + [10] * 4 + [15] * 3)
    assert to_voxel_aspect(image, (8.0, 8.0)) is image and to_voxel_aspect(image, None) is image

    raw = np.random.default_rng(0).integers(0, 256, (4, 24, 32), dtype=np.uint8)
    io.write_volume(tmp_path / "raw.zarr", raw, attrs={"voxel_size_nm": [30.0, 8.0, 8.0]})
    sizes = {}
    for axis in "zyx":
        png = tmp_path / f"{axis}.png"
        args = [str(tmp_path / "raw.zarr"), "--png", str(png), "--axis", axis, "--slices", "1"]
        assert view.main(args) == 0
        sizes[axis] = Image.open(png).size  # (width, height)
    panel_height = {a: h - HEADER - 2 * GAP for a, (_, h) in sizes.items()}
    assert panel_height == {"z": 24, "y": 15, "x": 15}  # 4 sections x 3.75
    assert [w - 2 * GAP for w, _ in sizes.values()] == [32, 32, 24]


# --- (e) --help describes the keys users set -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("predict", ["input=", "output=", "ckpt=", "tile_shape=", "overlap=", "overwrite=",
                     "block_shape=", "cache_dir="]),
        ("segment", ["probs=", "labels=", "postprocess=", "hydra.run.dir=", "cache_dir="]),
        ("train", ["experiment=", "data.train.raw=", "ckpt=", "init=", "overwrite=",
                   "predict.tile_shape=", "Config groups"]),
    ],
)  # fmt: skip
def test_help_describes_the_keys_users_set(name, keys, monkeypatch, capsys) -> None:
    import importlib

    module = importlib.import_module(f"mitoseg.cli.{name}")
    monkeypatch.setattr("sys.argv", [f"mitoseg-{name}", "--help"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith(f"mitoseg-{name}: ")
    missing = [key for key in keys if key not in text]
    assert not missing, missing
    assert "~/.cache/mitoseg" in text and "$MITOSEG_CACHE" in text


def test_settings_text_prints_every_kind_of_chosen_setting() -> None:
    """The decoder settings chosen on validation, as ``mitoseg-train`` prints them: a sweep may
    choose an unset threshold (BCD without its contour) or a flag, which ``:g`` could not format."""
    from mitoseg.analyze.report import settings_text

    final = {"seed_threshold": 0.05, "contour_threshold": None, "merge_necks": True,
             "min_size": 4000, "set": "test"}  # fmt: skip
    keys = ["seed_threshold", "contour_threshold", "merge_necks", "min_size"]
    assert settings_text(final, keys) == (
        "seed_threshold=0.05, contour_threshold=null, merge_necks=true, min_size=4000"
    )


def test_model_card_gives_the_chosen_settings_as_overrides() -> None:
    """The exported model card lists the chosen decoder settings as a user types them back."""
    from mitoseg.bioimage.card import model_card

    metrics = {"final": {"set": "test", "ap75": 0.83},
               "selected": {"seed_threshold": 0.05, "contour_threshold": None,
                            "merge_necks": True}}  # fmt: skip
    card = model_card("bcd", {"target": {"name": "bcd"}}, metrics=metrics)
    assert "seed_threshold=0.05, contour_threshold=null, merge_necks=true." in card
