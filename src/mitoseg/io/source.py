"""The reader interface: :class:`Source`, a ``(Z, Y, X)`` volume read slab by slab.

The readers are in :mod:`mitoseg.io.slices` (slice files), :mod:`mitoseg.io.containers` (TIFF,
HDF5, zarr) and :mod:`mitoseg.io.listing` (JSON listings); :func:`mitoseg.io.open_source` picks
one for a path.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from mitoseg.io.voxels import VoxelSize


class Source:
    """A ``(Z, Y, X)`` volume read slab by slab; a context manager that closes its file.

    Attributes:
        path: the file or folder read.
        shape: ``(Z, Y, X)``; slices may carry a trailing colour axis on top.
        voxel_size: the voxel size the file states (:mod:`mitoseg.io.voxels`), or None.
    """

    path: Path
    shape: tuple[int, int, int]
    voxel_size: VoxelSize | None = None

    @property
    def dtype(self) -> np.dtype:
        """dtype of the decoded slices."""
        raise NotImplementedError

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``[z0, z1)`` as ``(z1 - z0, Y, X)`` or ``(z1 - z0, Y, X, C)``."""
        raise NotImplementedError

    def describe(self, z: int) -> str:
        """Names slice ``z`` for error messages."""
        return f"slice {z}"

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
