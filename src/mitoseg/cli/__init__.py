"""Entry points (``mitoseg-*``). Only this package sees a config."""

from omegaconf import OmegaConf

# `${len:${target.channels}}` derives model.out_channels from the target instead of copying it.
OmegaConf.register_new_resolver("len", lambda items: len(items), replace=True)
