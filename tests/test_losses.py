import numpy as np
import pytest
import torch

from mitoseg.losses import BCEDiceLoss, class_balanced_weight
from mitoseg.targets import Semantic


def test_class_balanced_weight_matches_definition() -> None:
    target = torch.zeros(1, 1, 4, 10, 10)
    target[..., :2, :, :] = 1.0  # p = 0.5 -> weights 1
    target2 = torch.zeros(1, 1, 4, 10, 10)
    target2[..., 0, 0, :4] = 1.0  # p = 0.01 -> clipped to 0.05 -> minority weight 19
    weights = class_balanced_weight(torch.cat([target, target2]))
    assert torch.all(weights[0] == 1.0)
    assert torch.allclose(weights[1][target2[0] > 0], torch.tensor(19.0))
    assert torch.all(weights[1][target2[0] == 0] == 1.0)


def test_loss_is_small_for_confident_correct_logits_and_large_for_wrong() -> None:
    target = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    loss = BCEDiceLoss()
    good = loss(target * 40 - 20, target)
    bad = loss(20 - target * 40, target)
    assert good < 1e-3 < 1.0 < bad


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4, 4\).*\(1, 1, 4, 4, 4\)"):
        BCEDiceLoss()(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))


def test_semantic_target() -> None:
    labels = np.array([[[0, 3], [7, 0]]], dtype=np.uint32)
    target = Semantic()(labels)
    assert target.dtype == np.float32 and target.shape == (1, 1, 2, 2)
    assert target[0].tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    with pytest.raises(ValueError, match="shape"):
        Semantic()(labels[0])
