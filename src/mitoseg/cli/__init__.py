"""Entry points (``mitoseg-*``). Only this package sees a config."""

from typing import Any

from omegaconf import ListConfig, OmegaConf

from mitoseg.files import cache_dir


def _affinity_channels(offsets: Any, *extra: str) -> list[str]:
    """Affinity channel names for ``offsets`` (then ``extra`` names), as the target names them."""
    from mitoseg.train.targets import Affinity

    if isinstance(offsets, ListConfig):
        offsets = OmegaConf.to_container(offsets)
    return [*Affinity(offsets=offsets).channels, *extra]


def _isotropic(voxel_size_nm: Any) -> bool | None:
    """Whether a (z, y, x) voxel size is about isotropic; None when it is None."""
    from mitoseg.io.voxels import is_isotropic

    return None if voxel_size_nm is None else is_isotropic(list(voxel_size_nm))


# `${len:${target.channels}}` derives model.out_channels from the target instead of copying it.
OmegaConf.register_new_resolver("len", lambda items: len(items), replace=True)
OmegaConf.register_new_resolver("not", lambda value: not value, replace=True)
# `${isotropic:${data.train.voxel_size_nm}}`: anisotropic choices follow the data's voxel size
# (None while it is unknown; mitoseg-train fills it from the file before anything uses it).
OmegaConf.register_new_resolver("isotropic", _isotropic, replace=True)
# `${affinity_channels:${target.offsets},contour}`: the channel names follow the offsets.
OmegaConf.register_new_resolver("affinity_channels", _affinity_channels, replace=True)
# `${mitoseg_cache:}`: $MITOSEG_CACHE, else the user's cache folder (mitoseg.files.cache_dir).
OmegaConf.register_new_resolver("mitoseg_cache", lambda: str(cache_dir()), replace=True)
