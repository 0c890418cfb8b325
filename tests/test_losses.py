import numpy as np
import pytest
import torch

from mitoseg.train.losses import BCEDiceLoss, class_balanced_weight
from mitoseg.train.targets import Semantic


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


def test_nan_target_voxels_are_ignored() -> None:
    torch.manual_seed(0)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.7).float()
    logits = torch.randn(2, 3, 6, 6, 6)
    with_nan = target.clone()
    with_nan[:, :, 0] = float("nan")  # first slice undefined
    with_garbage = logits.clone()
    with_garbage[:, :, 0] = 1000.0  # what the net says there must not matter
    loss = BCEDiceLoss(class_balance=True)
    a = loss(logits, with_nan)
    b = loss(with_garbage, with_nan)
    assert torch.isfinite(a) and torch.allclose(a, b)
    # ... and equals the loss on the defined part alone
    assert torch.allclose(a, loss(logits[:, :, 1:], target[:, :, 1:]), atol=1e-6)


def test_class_balance_uses_defined_voxels_only() -> None:
    target = torch.zeros(1, 1, 2, 10, 10)
    target[0, 0, 0] = float("nan")
    target[0, 0, 1, :5] = 1.0  # half of the defined voxels are positive -> weights 1
    clean = torch.nan_to_num(target)
    weights = class_balanced_weight(clean, ~torch.isnan(target))
    assert torch.all(weights[0, 0, 1] == 1.0) and torch.all(weights[0, 0, 0] == 0.0)


def test_channel_group_loss_sums_the_group_losses() -> None:
    from mitoseg.train.losses import ChannelGroupLoss

    torch.manual_seed(1)
    target = (torch.rand(2, 4, 4, 8, 8) > 0.5).float()
    logits = torch.randn(2, 4, 4, 8, 8)
    aff, contour = BCEDiceLoss(dice_weight=0.0), BCEDiceLoss(dice_weight=0.5)
    grouped = ChannelGroupLoss([aff, contour], sizes=[3, 1])
    expected = aff(logits[:, :3], target[:, :3]) + contour(logits[:, 3:], target[:, 3:])
    assert torch.allclose(grouped(logits, target), expected)
    with pytest.raises(ValueError, match="4 channels"):
        grouped(logits[:, :3], target[:, :3])
    with pytest.raises(ValueError, match="one positive size per loss"):
        ChannelGroupLoss([aff], sizes=[3, 1])
