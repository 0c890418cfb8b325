"""The one exception type raised for bad input volumes."""

from __future__ import annotations


class VolumeError(ValueError):
    """Bad input volume; the message names the file, key or shape at fault."""
