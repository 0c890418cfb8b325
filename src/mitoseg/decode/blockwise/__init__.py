"""Blockwise decoding, connected components and evaluation on Dask, for volumes larger than
memory (numpy, dask, zarr; no torch).

A volume is cut into blocks aligned with its zarr chunks (:mod:`.blocks`); each block is a task
that reads and writes zarr by path on a local Dask cluster or an existing one
(:mod:`.cluster`), and only small summaries come back. Connected components are joined across
block faces exactly (:mod:`.labels`, :mod:`.graph`); the watershed decoders are exact but for
floods that leave a block's halo (:mod:`.watershed`); scores come from contingency counts summed
over blocks and equal the in-memory ones (:mod:`.evaluate`).
"""

from mitoseg.decode.blockwise.blocks import Block, BlockGrid, block_grid
from mitoseg.decode.blockwise.cluster import dask_client, run_blocks
from mitoseg.decode.blockwise.decode import BlockwiseResult, decode_blockwise, sweep_blockwise
from mitoseg.decode.blockwise.graph import affinity_components
from mitoseg.decode.blockwise.labels import connected_components
from mitoseg.evaluate.blockwise import (
    adjusted_rand_index,
    blockwise_confusion,
    blockwise_instance_scores,
    blockwise_overlaps,
)

__all__ = [
    "Block",
    "BlockGrid",
    "BlockwiseResult",
    "adjusted_rand_index",
    "affinity_components",
    "block_grid",
    "blockwise_confusion",
    "blockwise_instance_scores",
    "blockwise_overlaps",
    "connected_components",
    "dask_client",
    "decode_blockwise",
    "run_blocks",
    "sweep_blockwise",
]
