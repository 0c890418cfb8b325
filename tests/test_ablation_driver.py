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
