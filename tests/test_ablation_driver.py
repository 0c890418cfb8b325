"""The ablation benchmark's arms, as the configs of its Hydra multirun (``+arm=NAME``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lucchipp_ablation as ablation  # noqa: E402


@pytest.mark.parametrize("arm", list(ablation.ARMS))
def test_arm_config_composes_to_the_arms_overrides_and_budget(arm: str, tmp_path: Path) -> None:
    steps = 37
    (tmp_path / "arm").mkdir()
    (tmp_path / "arm" / f"{arm}.yaml").write_text(ablation.arm_config(arm, steps))
    swept = ablation.compose([f"+arm={arm}", f"hydra.searchpath=[file://{tmp_path}]"])
    direct = ablation.compose(ablation.ARMS[arm][2])
    batch = int(direct.data.batch_size)
    direct.trainer.max_steps = steps
    direct.data.samples_per_epoch = steps * batch
    assert swept == direct
    assert swept.trainer.max_steps == steps


def test_probe_keys_tell_apart_what_changes_a_steps_cost() -> None:
    # Seeds, loss and learning rate cost what the reference costs; bf16 and a network do not.
    ref = ablation.cost_keys(ablation.REFERENCE)[:2]
    assert ablation.cost_keys("seed1")[:2] == ref
    assert ablation.cost_keys("lr1e-3")[:2] == ref
    assert ablation.cost_keys("bf16")[0] != ref[0]
    assert ablation.cost_keys("bf16")[1] == ref[1]
    assert ablation.cost_keys("resunet_s2")[0] != ref[0]
    assert ablation.cost_keys("elastic")[1] != ref[1]


def test_probes_warm_up_once_then_time_each_cost_once(monkeypatch, tmp_path: Path) -> None:
    # The first fit timed in a process ran slow (the reference got fewer steps than the arms
    # probed after it): one untimed fit comes first, then each distinct cost is timed once, on
    # the data root given and never on the test volume.
    calls: list[tuple[str, int]] = []

    def fake_fit(cfg, steps: int = 8) -> float:  # type: ignore[no-untyped-def]
        assert cfg.data.root == str(tmp_path) and cfg.data.test is None
        calls.append((str(cfg.model.num_res_units), steps))
        return 0.5 if steps > 1 else 99.0  # a warm-up's time must not be used

    monkeypatch.setattr(ablation, "probe_fit", fake_fit)
    arms = ["reference", "seed1", "unet_res1"]
    assert ablation.probe_step_seconds(arms, {}, tmp_path) == dict.fromkeys(arms, 0.5)
    assert calls == [("2", 1), ("2", 8), ("1", 8)]
    # Stored probes are reused for arms of the same cost, without a fit.
    calls.clear()
    assert ablation.probe_step_seconds(["seed2"], {"reference": 0.7}, tmp_path) == {"seed2": 0.7}
    assert calls == []


def small_fit_config(tmp_path: Path, batch: int):  # type: ignore[no-untyped-def]
    cfg = ablation.compose(
        [
            "model.channels=[4,8]", "model.strides=[2]", "data.patch_shape=[16,32,32]",
            f"data.batch_size={batch}", f"data.cache_dir={tmp_path}", "data.test=null",
        ]
    )  # fmt: skip
    cfg.data.train = {
        "_target_": "mitoseg.datasets.volumes.SyntheticVolumes",
        "shape": [32, 64, 64],
    }
    return cfg


def test_fit_probe_counts_the_loading_of_every_sample_of_a_batch(monkeypatch, tmp_path) -> None:
    # 64^3 x 4 trained 1.27x as long as the reference when loading was a fixed cost per step:
    # the probe is a real fit, so a batch of 4 pays for 4 patches. Each patch is made to cost
    # 0.2 s more (far above the tiny network's step): the step of batch 4 must cost about
    # 3 x 0.2 s more than the step of batch 1; half of that is asked, as a busy host (a parallel
    # test run) was seen to add 0.13 s to a step.
    from mitoseg.train.data import PatchDataset

    delay, draw = 0.2, PatchDataset.__getitem__

    def slow_draw(self, index):  # type: ignore[no-untyped-def]
        time.sleep(delay)
        return draw(self, index)

    monkeypatch.setattr(PatchDataset, "__getitem__", slow_draw)
    one = ablation.probe_fit(small_fit_config(tmp_path, 1), steps=4)
    four = ablation.probe_fit(small_fit_config(tmp_path, 4), steps=4)
    assert one >= delay, (one, four)
    assert four - one >= 3 * delay * 0.5, (one, four)


def test_tables_show_each_arms_training_time_and_minutes_against_the_reference() -> None:
    # An arm whose probe was off trains longer or shorter than the reference: the tables show its
    # training time (steps x step time as trained) over the reference's, and its minutes.
    def row(arm: str, steps: int, run_s: float | None, minutes: float, best: float) -> dict:
        study, change, _ = ablation.ARMS[arm]
        return {
            "arm": arm, "study": study, "change": change, "probe_s_per_step": 0.5, "steps": steps,
            "run_s_per_step": run_s, "fit_minutes": minutes, "val_fg_iou_at_0.5": 0.8,
            "val_fg_iou_best": best, "best_threshold": 0.6,
        }  # fmt: skip

    reference = row("reference", 900, 0.4, 7.3, 0.85)
    rows = [
        reference,
        row("patch64x4", 1350, 0.32, 9.2, 0.8625),
        row("bce_only", 900, None, 7, 0.8),
    ]
    text = ablation.tables(rows)
    lines = [line for line in text.splitlines() if line.startswith(("| patch64x4", "| bce_only"))]
    assert lines == [
        "| bce_only | BCE only (no Dice) | 0.500 | - | 900 | - | 7 | 0.8000 | 0.8000 (0.6) "
        "| -0.0500 |",
        "| patch64x4 | 64^3 x 4 | 0.500 | 0.320 | 1350 | 1.20 | 9.2 | 0.8000 | 0.8625 (0.6) "
        "| +0.0125 |",
    ]
    assert "### patch" in text and "### loss" in text and "### network" not in text


def test_run_step_time_is_read_from_the_logged_training_losses(tmp_path: Path) -> None:
    # Logged every 10 steps from step 9: 2 s per step between the second and the last point.
    from torch.utils.tensorboard import SummaryWriter

    assert ablation.run_step_seconds(tmp_path) is None
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for i, step in enumerate((9, 19, 29, 39)):
        wall = 100.0 + (0 if i == 0 else 50 + 2 * (step - 19))
        writer.add_scalar("train/loss", 1.0, step, walltime=wall)
        writer.add_scalar("val/iou", 0.5, step, walltime=wall + 999)
    writer.close()
    assert ablation.run_step_seconds(tmp_path) == pytest.approx(2.0)


@pytest.mark.parametrize("item", ["patch64x4=abc", "patch64x4=0", "bf16=100", "patch64x4"])
def test_bad_steps_are_refused_before_any_probe(item, monkeypatch, tmp_path, capsys) -> None:
    def no_probe(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("probed before checking --steps")

    monkeypatch.setattr(ablation, "probe_step_seconds", no_probe)
    argv = ["x", "--root", str(tmp_path), "--arms", "patch64x4", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--steps", item])
    with pytest.raises(SystemExit):
        ablation.main()
    assert f"--steps {item}" in capsys.readouterr().err
