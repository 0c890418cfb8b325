"""The ablation benchmark's arms, as the configs of its Hydra multirun (``+arm=NAME``)."""

from __future__ import annotations

import sys
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


def test_probes_warm_up_once_then_time_each_network_once(monkeypatch) -> None:
    # The first network timed in a process ran slow (the reference got fewer steps than the
    # arms probed after it): one untimed run comes first, then each distinct network is timed once.
    calls: list[tuple[str, int]] = []

    def fake_network(cfg, steps: int = 5) -> float:  # type: ignore[no-untyped-def]
        calls.append((str(cfg.model._target_), steps))
        return 0.5 if steps > 1 else 99.0  # a warm-up's time must not be used

    monkeypatch.setattr(ablation, "probe_network", fake_network)
    monkeypatch.setattr(ablation, "probe_augment", lambda cfg: 0.0)
    probes = ablation.probe_step_seconds(["reference", "seed1", "unet_res1"], {})
    assert [steps for _, steps in calls] == [1, 5, 5]
    assert calls[0][0] == calls[1][0]
    assert probes == {arm: 0.5 + ablation.OVERHEAD_S for arm in ("reference", "seed1", "unet_res1")}


def test_network_probe_is_the_median_of_single_steps(monkeypatch) -> None:
    # One stalled step (the host's speed drifts) does not move an arm's step count.
    import step_time

    times = iter([0.4, 9.0, 0.5, 0.45, 0.42])
    monkeypatch.setattr(step_time, "time_training_steps", lambda *args, **kwargs: next(times))
    cfg = ablation.compose(["model.channels=[4,8]", "model.strides=[2]"])
    assert ablation.probe_network(cfg, steps=5) == 0.45


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
