import pytest
import torch

from mitoseg.nets import ResidualUNet3D


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
