"""Config and input errors of the Hydra entry points (mitoseg-train, -predict, -segment) end in
one line naming the key, file or value, exit status 2, and leave no run folder; MITOSEG_DEBUG=1
shows the traceback instead. Mostly in-process (the console scripts' ``main``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoseg import io
from mitoseg.cli import predict, segment, train
from mitoseg.cli.common import CheckpointError
from mitoseg.train.checkpoints import UnsafeCheckpointError, load_weights_only
from mitoseg.train.module import TTA
from tests.test_cli import BIN

# Hydra would otherwise point the test process's root logger at the run folder and stdout.
NO_LOGGING = "hydra/job_logging=none"


def _refused(
    main: Callable[[], None], prog: str, args: list[str], cwd: Path, monkeypatch, capsys
) -> str:
    """Run ``main`` as ``prog args`` in ``cwd``; assert exit 2 with one line; return the line."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", [prog, *args, NO_LOGGING])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and "MITOSEG_DEBUG=1" in lines[0]
    assert "Traceback" not in lines[0]
    return lines[0]


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path


def test_random_bytes_checkpoint_is_one_line_that_names_it_and_leaves_no_run_folder(
    tmp_path: Path,
) -> None:
    """As a user runs it: 47 lines advising weights_only=False at 8f5406b, exit 1."""
    _random_bytes(tmp_path / "random.ckpt")
    result = subprocess.run(
        [str(BIN / "mitoseg-predict"), "ckpt=random.ckpt", "input=in.zarr", "output=out.zarr"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("MITOSEG_DEBUG", "HYDRA_FULL_ERROR")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mitoseg-predict: error: random.ckpt is not a mitoseg / PyTorch checkpoint (not the zip "
        "archive that torch.save writes: another kind of file, or a truncated copy) "
        "(MITOSEG_DEBUG=1 shows the traceback)"
    ]
    assert "weights_only" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.ckpt"]  # no outputs/


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        (predict, ["input=in.zarr", "output=out.zarr"], "missing value for 'ckpt': pass ckpt="),
        (predict, ["ckpt=nope.ckpt", "input=in.zarr", "output=o.zarr"], "checkpoint not found: "),
        (predict, ["ckpt=a", "input=b", "output=c", "overwrit=true"], "override 'overwrit'"),
        (train, ["seeed=1"], "Could not override 'seeed'"),
        (train, ["model=resunett"], "Could not find 'model/resunett'"),
        (train, ["ckpt=random.ckpt"], "random.ckpt is not a mitoseg / PyTorch checkpoint"),
        (train, ["ckpt=last"], "ckpt=last: there is no "),
        (segment, ["probs=nope.zarr"], "nope.zarr does not exist"),
        (segment, ["probs=raw.zarr"], "raw.zarr: expected (C, Z, Y, X) probabilities"),
    ],
)
def test_refused_command_is_one_line_with_exit_2_and_no_run_folder(
    tool, args: list[str], expected: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    _random_bytes(tmp_path / "random.ckpt")
    io.write_volume(tmp_path / "raw.zarr", np.zeros((4, 8, 8), np.uint8))
    monkeypatch.delenv("MITOSEG_DEBUG", raising=False)
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    prog = f"mitoseg-{tool.__name__.rsplit('.', 1)[-1]}"
    line = _refused(tool.main, prog, args, tmp_path, monkeypatch, capsys)
    assert expected in line
    assert "full_key" not in line and "Config search path" not in line
    assert not (tmp_path / "outputs").exists()


def test_debug_flag_shows_the_error_itself(tmp_path: Path, monkeypatch) -> None:
    _random_bytes(tmp_path / "random.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MITOSEG_DEBUG", "1")
    argv = ["mitoseg-predict", "ckpt=random.ckpt", "input=i", "output=o", NO_LOGGING]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(CheckpointError, match=r"random\.ckpt is not a mitoseg"):
        predict.main()
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # set for Hydra's call only


def test_a_run_folder_that_holds_more_than_hydra_wrote_is_kept(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Refused in a folder the user gave (hydra.run.dir): nothing of it is removed."""
    _random_bytes(tmp_path / "random.ckpt")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    args = ["ckpt=random.ckpt", "input=i", "output=o", "hydra.run.dir=keep"]
    _refused(predict.main, "mitoseg-predict", args, tmp_path, monkeypatch, capsys)
    assert (tmp_path / "keep" / "mine.txt").read_text() == "mine"
    assert (tmp_path / "keep" / ".hydra" / "config.yaml").is_file()


def test_checkpoint_that_would_run_code_names_the_call_not_torch_advice(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "call": os.getcwd}, path)  # a global outside the allowlist
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_weights_only(path)
    message = str(refused.value)
    assert "evil.ckpt cannot be loaded safely" in message and "it would run" in message
    assert "weights_only" not in message and "\n" not in message


def test_an_unknown_tta_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tta='flipp' is not one of none, flip_yx, flip"):
        TTA("flipp")
