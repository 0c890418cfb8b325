"""The pretrained model shipped in the package (``src/mitoseg/pretrained/lucchipp``, issue 21.1):
its weights match the manifest's sha256 and load weights-only into the network its config
describes, its card states the manifest's scores, and it segments a Lucchi++ crop with the
foreground IoU that its card states (within 0.01).

Every test here is skipped, saying why, while the entry's ``manifest.json`` / ``weights.pt`` are
not there (``python -m mitoseg.cli.pretrained make CKPT --name lucchipp ...`` writes them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mitoseg import pretrained
from tests.conftest import LUCCHI

NAME = "lucchipp"
SHIPPED = pretrained.PACKAGE_DIR / NAME


@pytest.fixture()
def shipped(monkeypatch) -> pretrained.Pretrained:
    """The package's own entry (a ``$MITOSEG_PRETRAINED`` of the user's could shadow it)."""
    missing = [f for f in (pretrained.MANIFEST, pretrained.WEIGHTS) if not (SHIPPED / f).is_file()]
    if missing:
        pytest.skip(
            f"the pretrained model '{NAME}' is not shipped yet: {SHIPPED} lacks "
            f"{' and '.join(missing)} (python -m mitoseg.cli.pretrained make CKPT --name {NAME} "
            "writes them)"
        )
    monkeypatch.delenv(pretrained.ENV, raising=False)
    entry = pretrained.find(NAME)
    assert entry.folder == SHIPPED
    return entry


def test_shipped_weights_match_their_sha256_and_load_weights_only(
    shipped: pretrained.Pretrained,
) -> None:
    assert pretrained.sha256_of(shipped.weights_path) == shipped.sha256
    weights = torch.load(shipped.weights_path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    net = instantiate(shipped.config["model"])
    net.load_state_dict(pretrained.load_weights(shipped), strict=True)
    assert shipped.weights_path.stat().st_size < 50e6  # "a few MB"


def _card_figure(card: str, label: str) -> float:
    found = re.search(rf"{label} (\d\.\d+)", card)
    assert found, f"the model card has no '{label} <number>'"
    return float(found.group(1))


def test_shipped_card_states_the_manifest_scores(shipped: pretrained.Pretrained) -> None:
    card = shipped.card_path.read_text()
    assert "{{" not in card
    scores = shipped.manifest["scores"]
    assert f"{scores['test']['fg_iou']:.4f}" in card and f"{scores['val']['fg_iou']:.4f}" in card
    assert shipped.sha256 in card
    assert _card_figure(card, "foreground IoU") == pytest.approx(
        shipped.manifest["check"]["fg_iou"], abs=1e-4
    )
    assert shipped.config["data"]["voxel_size_nm"] == [5.0, 5.0, 5.0]


@pytest.mark.realdata
def test_shipped_model_segments_a_lucchipp_crop_as_its_card_states(
    shipped: pretrained.Pretrained, tmp_path: Path
) -> None:
    """``mitoseg-predict pretrained=lucchipp`` (fp32) and the manifest's decoder on the card's
    check crop of the Lucchi++ test volume: foreground IoU within 0.01 of the card's figure."""
    from mitoseg.cli.pretrained import score_crop

    check = shipped.manifest["check"]
    figure = _card_figure(shipped.card_path.read_text(), "foreground IoU")
    found = score_crop(
        NAME, LUCCHI / check["raw"], LUCCHI / check["labels"], check["box"], tmp_path
    )
    assert abs(found["fg_iou"] - figure) <= 0.01, (found, figure)
    assert figure > 0.5  # a model that segments, not an empty mask that matches an empty card
