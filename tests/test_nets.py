import pytest
import torch

from mitoseg.train.nets import ResidualUNet3D


@pytest.mark.parametrize("se", [True, False])
def test_output_shape_follows_input(se: bool) -> None:
    net = ResidualUNet3D(out_channels=2, widths=(4, 8, 16), se=se).eval()
    x = torch.randn(1, 1, 8, 24, 40)
    assert net(x).shape == (1, 2, 8, 24, 40)


def test_anisotropic_levels_pool_only_in_plane_at_the_top() -> None:
    net = ResidualUNet3D(
        widths=(4, 8, 16), kernel_sizes=[[1, 3, 3], 3, 3], pool_sizes=[[1, 2, 2], 2]
    )
    assert net.divisor == (2, 4, 4)
    assert net.encoders[0].body[0].kernel_size == (1, 3, 3)
    assert net(torch.randn(1, 1, 6, 16, 16)).shape == (1, 1, 6, 16, 16)


def test_indivisible_input_names_the_shape() -> None:
    net = ResidualUNet3D(widths=(4, 8, 16))
    with pytest.raises(ValueError, match=r"\(9, 16, 16\).*divisible by \(4, 4, 4\)"):
        net(torch.randn(1, 1, 9, 16, 16))


def test_bad_per_level_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="kernel_sizes"):
        ResidualUNet3D(widths=(4, 8, 16), kernel_sizes=[3, 3])


def test_gradients_reach_every_parameter() -> None:
    net = ResidualUNet3D(widths=(4, 8))
    net(torch.randn(2, 1, 8, 8, 8)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_stem_stride_runs_every_level_on_a_coarser_grid() -> None:
    net = ResidualUNet3D(widths=(4, 8, 16), stem_stride=[1, 2, 2], se=False).eval()
    assert net.divisor == (4, 8, 8)
    seen = []
    net.encoders[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    assert net(torch.randn(1, 1, 8, 16, 24)).shape == (1, 1, 8, 16, 24)
    assert seen == [(8, 8, 12)]
    with pytest.raises(ValueError, match=r"\(8, 12, 24\).*divisible by \(4, 8, 8\)"):
        net(torch.randn(1, 1, 8, 12, 24))


def test_without_a_stem_the_parameters_are_unchanged() -> None:
    """stem_stride=1 adds no parameters, so checkpoints from before the option still load."""
    names = ResidualUNet3D(widths=(4, 8)).state_dict().keys()
    assert not [n for n in names if "stem" in n]
    assert any("stem" in n for n in ResidualUNet3D(widths=(4, 8), stem_stride=2).state_dict())
    with pytest.raises(ValueError, match="stem_stride"):
        ResidualUNet3D(widths=(4, 8), stem_stride=0)
