"""Networks: plain ``nn.Module`` classes, no Lightning and no config."""

from mitoseg.train.nets.unet import ResidualBlock3d, ResidualUNet3D, SqueezeExcitation3d

__all__ = ["ResidualBlock3d", "ResidualUNet3D", "SqueezeExcitation3d"]
