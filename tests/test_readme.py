"""The README walk-throughs run as written, on small data.

Each ``<!-- walkthrough: NAME -->`` bash block is executed command by command: variable
assignments set the environment, ``$VARS`` are expanded, ``mitoseg-train`` gets tiny-run
overrides appended (the only change), and ``mitoseg-download`` runs against a local HTTP server
holding a small archive of the release's layout (with that archive's checksums).
"""

import io as bytes_io
import json
import os
import re
import shlex
import zipfile
from pathlib import Path

import h5py
import numpy as np
import tifffile

from mitoseg import io
from mitoseg.cli.download import main as download_main
from mitoseg.datasets.synthetic import make_volume
from tests.fake_mitoem import write_fake_release
from tests.test_cli import run
from tests.test_cli_instance import TINY_ANISO
from tests.test_download import _patch, _sha, server  # noqa: F401  (fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough(name: str) -> list[str]:
    """The commands of the bash block after ``<!-- walkthrough: name``, continuations joined."""
    text = README.read_text()
    start = text.index(f"<!-- walkthrough: {name}")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no bash block after walkthrough {name}"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def execute(commands: list[str], cwd: Path, train_extra: list[str], download=None) -> dict:
    env: dict[str, str] = {}
    for command in commands:
        words = shlex.split(command)
        if all(re.fullmatch(r"[A-Z_]+=\S+", w) for w in words):
            env.update(w.split("=", 1) for w in words)
            continue
        words = [re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], w) for w in words]
        tool, args = words[0], words[1:]
        if tool == "mitoseg-download":
            assert download is not None and download(args) == 0
            continue
        if tool == "mitoseg-train":
            args += train_extra
        run(tool, *args, cwd=cwd)
    return env


def lucchi_like_zip(server) -> dict[str, str]:  # noqa: F811
    """lucchi_pp.zip on the server: the four TIFFs of a small synthetic volume."""
    members = {}
    with zipfile.ZipFile(server.root / "lucchi_pp.zip", "w") as zf:
        for split, seed in (("train", 0), ("test", 1)):
            raw, labels = make_volume((16, 48, 48), seed=seed)
            for name, volume in ((f"{split}_im.tif", raw), (f"{split}_label.tif", labels > 0)):
                buffer = bytes_io.BytesIO()
                tifffile.imwrite(
                    buffer, (volume * (255 if volume.dtype == bool else 1)).astype(np.uint8)
                )
                zf.writestr(f"lucchi++/{name}", buffer.getvalue())
                members[name] = _sha(buffer.getvalue())
    return members


def test_lucchipp_walkthrough(server, monkeypatch, tmp_path) -> None:  # noqa: F811
    members = lucchi_like_zip(server)
    _patch(monkeypatch, "lucchipp", server, members_sha256=members)
    monkeypatch.chdir(tmp_path)

    def download(args: list[str]) -> int:
        return download_main([*args, "--base-url", server.url + "/", "--no-progress"])

    tiny = [
        "data.patch_shape=[8,16,16]",
        "model.channels=[4,8,16,32]",
        "trainer.max_steps=2",
        "data.samples_per_epoch=2",
        "trainer.enable_progress_bar=false",
    ]
    env = execute(walkthrough("lucchipp"), tmp_path, tiny, download)
    out = tmp_path / env["OUT"]
    assert json.loads((out / "metrics.json").read_text())["final"]["set"] == "test"
    assert (out / "sweep" / "sweep_summary.csv").read_text().count("\n") == 5  # header + 4 runs
    assert json.loads((out / "final" / "metrics.json").read_text())["scores"]["fg_iou"] >= 0
    summary = json.loads((out / "measure" / "summary.json").read_text())
    assert summary["voxel_size_nm"] == [5.0, 5.0, 5.0]
    assert (out / "measure" / "objects.csv").exists() and (out / "overlay.png").exists()


def test_mitoem_walkthrough(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = walkthrough("mitoem")
    release = next(c for c in commands if c.startswith("RELEASE=")).split()[0].split("=")[1]
    # the official split as written: 400 train, 100 validation, 500 test slices (32 x 32 here)
    write_fake_release(tmp_path / release, depth=(400, 100, 500), size=32, with_json=False)
    # TINY_ANISO but hydra.run.dir, and a single decoder setting to choose on validation
    one_setting = [
        "evaluate.sweep.seed_threshold=[0.75]",
        "evaluate.sweep.contour_threshold=[0.6]",
        "evaluate.sweep.mask_threshold=[0.5]",
    ]
    env = execute(commands, tmp_path, [*TINY_ANISO[:-1], *one_setting])
    out = tmp_path / env["OUT"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_on"] == "val/ap75"
    # The recipe decodes validation block by block on a local Dask cluster (the one training run
    # that does: tests/test_cli_instance.py decodes the blocks in its own process).
    assert metrics["blockwise"]["blocks"] >= 1
    assert "dask: local cluster of 2 worker processes" in (out / "train.log").read_text()
    rows = (out / "sweep" / "sweep_summary.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and "ap75" in rows[0]
    with h5py.File(out / "mitoem_r_test.h5") as f:
        assert f["main"].shape == (500, 32, 32)
    assert io.open_volume(out / "test" / "instances.zarr").attrs["voxel_size_nm"] == [30, 8, 8]
    assert (out / "measure" / "summary.json").exists()
    assert os.path.exists(out / "sweep" / "sweep_plot.png")
