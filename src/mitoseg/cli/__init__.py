"""Entry points (``mitoseg-*``). Only this package sees a config."""

from typing import Any

from omegaconf import ListConfig, OmegaConf


def _affinity_channels(offsets: Any, *extra: str) -> list[str]:
    """Affinity channel names for ``offsets`` (then ``extra`` names), as the target names them."""
    from mitoseg.train.targets import Affinity

    if isinstance(offsets, ListConfig):
        offsets = OmegaConf.to_container(offsets)
    return [*Affinity(offsets=offsets).channels, *extra]


# `${len:${target.channels}}` derives model.out_channels from the target instead of copying it.
OmegaConf.register_new_resolver("len", lambda items: len(items), replace=True)
OmegaConf.register_new_resolver("not", lambda value: not value, replace=True)
# `${affinity_channels:${target.offsets},contour}`: the channel names follow the offsets.
OmegaConf.register_new_resolver("affinity_channels", _affinity_channels, replace=True)
