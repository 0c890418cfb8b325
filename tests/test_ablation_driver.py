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
    cfg.data.train = {"_target_": "mitoseg.data.SyntheticVolumes", "shape": [32, 64, 64]}
    return cfg


def test_fit_probe_counts_the_loading_of_every_sample_of_a_batch(monkeypatch, tmp_path) -> None:
    # 64^3 x 4 trained on 1.5x the reference's compute when loading was a fixed cost per step:
    # the probe is a real fit, so a batch of 4 pays for 4 patches. Each patch is made to cost
    # 30 ms more: the step of batch 4 must cost about 3 x 30 ms more than the step of batch 1.
    from mitoseg.data import PatchDataset

    draw = PatchDataset.__getitem__

    def slow_draw(self, index):  # type: ignore[no-untyped-def]
        time.sleep(0.03)
        return draw(self, index)

    monkeypatch.setattr(PatchDataset, "__getitem__", slow_draw)
    one = ablation.probe_fit(small_fit_config(tmp_path, 1), steps=6)
    four = ablation.probe_fit(small_fit_config(tmp_path, 4), steps=6)
    assert one >= 0.03
    assert four - one >= 3 * 0.03 * 0.8


def test_tables_show_each_arms_training_minutes_and_its_difference_to_the_reference() -> None:
    def row(arm: str, minutes: float, best: float) -> dict:
        study, change, _ = ablation.ARMS[arm]
        return {
            "arm": arm, "study": study, "change": change, "probe_s_per_step": 0.5, "steps": 840,
            "fit_minutes": minutes, "val_fg_iou_at_0.5": 0.8, "val_fg_iou_best": best,
            "best_threshold": 0.6,
        }  # fmt: skip

    text = ablation.tables([row("reference", 7.3, 0.85), row("patch64x4", 9.2, 0.8625)])
    lines = [line for line in text.splitlines() if line.startswith("| patch64x4")]
    expected = "| patch64x4 | 64^3 x 4 | 0.50 | 840 | 9.2 | 0.8000 | 0.8625 (0.6) | +0.0125 |"
    assert lines == [expected]
    assert "### patch" in text and "### loss" not in text
