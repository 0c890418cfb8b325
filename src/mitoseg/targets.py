"""Labels -> training targets (numpy only).

A target is a callable applied per sample: ``target(labels)`` turns instance ids or a binary mask
into a float32 (C, Z, Y, X) array, one channel per name in ``channels``. The instance targets
(affinities, contours) follow the same shape contract.
"""

from __future__ import annotations

import numpy as np


class Semantic:
    """Foreground mask: 1 where labels are non-zero.

    Call with labels: integer (Z, Y, X), 0 = background. Returns float32 (1, Z, Y, X) in {0, 1}.
    """

    channels: tuple[str, ...] = ("foreground",)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        if labels.ndim != 3:
            raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
        return (labels > 0).astype(np.float32)[None]
