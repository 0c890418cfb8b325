import pytest
import torch
from torch import nn

from mitoseg.train.losses import BCEDiceLoss
from mitoseg.train.module import SegmentationModule, tta_variants, warmup_cosine
from mitoseg.train.nets import ResidualUNet3D


class Logit(nn.Module):
    """Logit of the input: predict_probs of it returns the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x.clamp(1e-4, 1 - 1e-4))


@pytest.mark.parametrize(
    "mode,count", [("none", 1), ("flip_yx", 4), ("flip", 8), ("flip_transpose", 16)]
)
def test_tta_variants_are_distinct(mode: str, count: int) -> None:
    variants = tta_variants(mode)
    assert len(variants) == len(set(variants)) == count


@pytest.mark.parametrize("mode", ["flip", "flip_transpose"])
def test_tta_undoes_its_transforms(mode: str) -> None:
    x = torch.rand(2, 1, 4, 6, 6)
    module = SegmentationModule(Logit(), tta=mode)
    torch.testing.assert_close(module.predict_probs(x), x.clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=0)


def test_warmup_cosine() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110, min_factor=0.0)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0, abs=1e-9)


def test_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    net = ResidualUNet3D(widths=(4, 8), norm="group")
    module = SegmentationModule(net, BCEDiceLoss(), lambda p: torch.optim.Adam(p, lr=1e-2))
    raw = torch.rand(2, 1, 8, 8, 8)
    batch = {"raw": raw, "target": (raw > 0.5).float()}
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module.loss(module(batch["raw"]), batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_training_needs_an_optimizer() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        SegmentationModule(Logit()).configure_optimizers()


def test_validation_panel_shows_the_slice_with_most_foreground() -> None:
    module = SegmentationModule(Logit(), BCEDiceLoss())
    module.on_validation_epoch_start()
    target = torch.zeros(2, 1, 3, 4, 4)
    target[1, 0, 2, :2] = 1.0
    raw = torch.rand(2, 1, 3, 4, 4)
    module._keep_panel({"raw": raw, "target": target}, torch.zeros_like(raw))
    torch.testing.assert_close(module._panel["raw"], raw[1, 0, 2])
    module._keep_panel({"raw": raw, "target": torch.zeros_like(target)}, torch.zeros_like(raw))
    torch.testing.assert_close(module._panel["target"], target[1, 0, 2])


@pytest.mark.slow  # inductor compiles C++ on the CPU: about half a minute
def test_compiled_network_matches_eager_and_keeps_parameter_names() -> None:
    torch.manual_seed(0)
    eager = ResidualUNet3D(widths=(4, 8), norm="batch").eval()
    compiled = ResidualUNet3D(widths=(4, 8), norm="batch").eval()
    compiled.load_state_dict(eager.state_dict())
    module = SegmentationModule(compiled, channels_last=True, compile=True)
    assert list(module.net.state_dict()) == list(eager.state_dict())
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), eager(x), atol=1e-4, rtol=1e-4)
