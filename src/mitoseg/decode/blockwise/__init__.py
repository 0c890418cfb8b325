"""The blockwise engine on Dask, for volumes larger than memory (numpy, dask, zarr; no torch).

A volume is cut into blocks aligned with its zarr chunks (:class:`mitoseg.geometry.BlockGrid`);
each block is a task that reads and writes zarr by path (:mod:`.store`) on a local Dask cluster
or an existing one (:mod:`.cluster`), and only small summaries come back. Connected components
are joined across block faces exactly (:mod:`.labels`, :mod:`.graph`, :mod:`.faces`); the
watershed decoders are exact but for floods that leave a block's halo (:mod:`.watershed`);
:mod:`.decode` runs a decoder over the blocks. Users call :func:`mitoseg.decode.run.run_decoder`
with ``blockwise=...``; scores summed over blocks are in :mod:`mitoseg.evaluate.blockwise`.
"""

from mitoseg.decode.blockwise.cluster import dask_client, run_blocks
from mitoseg.decode.blockwise.decode import decode_blockwise
from mitoseg.decode.blockwise.graph import affinity_components
from mitoseg.decode.blockwise.labels import connected_components

__all__ = [
    "affinity_components",
    "connected_components",
    "dask_client",
    "decode_blockwise",
    "run_blocks",
]
