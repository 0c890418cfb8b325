"""The fast blockwise paths of issue 22.1 give the in-memory decoder's output exactly: per-block
label scratch in small dtypes, the flood's score kept by the label pass (float as uint16
levels), floods of only the multi-seed components on their region, per-component neck
statistics, one write pass that also drops small floods, and Dask workers without Dask's malloc
setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from mitoseg import io
from mitoseg.datasets.shape_families import shape_family
from mitoseg.decode.base import with_voxel_size
from mitoseg.decode.blockwise import cluster, connected_components, decode_blockwise
from mitoseg.decode.blockwise.labels import stack_labels
from mitoseg.decode.watershed import float_levels, flood_height
from mitoseg.evaluate.roundtrip import perfect_probs, target_decoders

VOXEL_SIZE_NM = (30.0, 8.0, 8.0)
BLOCK, CHUNKS = (6, 40, 144), (6, 40, 48)  # 2 x 2 x 2 blocks
HALO = (12, 80, 150)  # holds every component: blockwise must equal in memory


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Touching pairs, a necked chain and a branched one side by side, (12, 80, 285)."""
    parts = [shape_family(f, VOXEL_SIZE_NM, seed=1) for f in ("touching", "necked", "branched")]
    out = np.zeros((12, 80, sum(p.shape[2] for p in parts)), np.uint32)
    x = 0
    for part in parts:
        z, y, w = part.shape
        out[:z, :y, x : x + w] = np.where(part > 0, part + out.max(), 0)
        x += w
    return out


def _noisy(target: object, labels: np.ndarray, dtype: str) -> np.ndarray:
    """Blurred, noisy perfect probabilities: several seeds per component, ties in uint8."""
    rng = np.random.default_rng(0)
    probs = ndimage.gaussian_filter(perfect_probs(target, labels, "float32"), (0, 0.5, 1, 1))  # type: ignore[arg-type]
    probs = np.clip(probs + 0.08 * rng.standard_normal(probs.shape, np.float32), 0.0, 1.0)
    return np.rint(probs * 255).astype(np.uint8) if dtype == "uint8" else probs


def _both(
    decoder, probs: np.ndarray, tmp_path: Path, **kwargs
) -> tuple[np.ndarray, np.ndarray, dict]:
    path = tmp_path / "probs.zarr"
    attrs = {"voxel_size_nm": list(VOXEL_SIZE_NM)}
    io.write_volume(path, probs, chunks=(probs.shape[0], *CHUNKS), attrs=attrs)
    decoder = with_voxel_size(decoder, VOXEL_SIZE_NM, "test")
    run = decode_blockwise(
        decoder, path, tmp_path / "out.zarr", block_shape=BLOCK, halo=HALO, progress=False,
        **kwargs,
    )  # fmt: skip
    return io.open_volume(tmp_path / "out.zarr")[:], decoder(probs), run.summary


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("target", ["bc", "a", "ac", "bcd"])
def test_blockwise_equals_in_memory(target: str, dtype: str, labels, tmp_path: Path) -> None:
    transform, decoder = target_decoders(VOXEL_SIZE_NM)[target]
    if target == "bcd":  # its neck merge joins the blurred touching pairs here (BC's does not)
        decoder = dataclasses.replace(decoder, merge_necks=False)
    probs = _noisy(transform, labels, dtype)
    out, whole, summary = _both(decoder, probs, tmp_path)
    np.testing.assert_array_equal(out, whole)
    assert summary["blocks"] == 8 and whole.max() >= 6
    # touching instances: some component held several seeds, so blocks flooded
    assert whole.max() > cc3d.connected_components(whole > 0, connectivity=26).max()


def test_dropped_instances_and_blocks_without_floods(labels, tmp_path: Path, monkeypatch) -> None:
    """Flooded instances under min_size are dropped and ids renumbered in the one write pass;
    blocks without multi-seed components are not flooded; the output equals in memory."""
    from mitoseg.decode.blockwise import watershed as bw

    transform, decoder = target_decoders(VOXEL_SIZE_NM)["bc"]
    probs = _noisy(transform, labels, "uint8")
    probs[:, :, :, 140:] = 0  # the blocks of the last x column: nothing to flood
    calls: dict[str, int] = {}
    run_blocks = bw.run_blocks

    def counting(client, stage, fn, blocks, *args, **kwargs):
        calls[stage] = len(blocks)
        return run_blocks(client, stage, fn, blocks, *args, **kwargs)

    monkeypatch.setattr(bw, "run_blocks", counting)
    decoder = decoder.__class__(min_size=900, merge_necks=False)
    out, whole, summary = _both(decoder, probs, tmp_path)
    np.testing.assert_array_equal(out, whole)
    assert calls == {"flood": 4, "write": 8}
    assert summary["instances"] == out.max() == len(np.unique(out)) - 1  # renumbered 1..n


def test_labels_take_the_smallest_dtype_and_stay_exact(tmp_path: Path) -> None:
    """More than 255 pieces in one block go to uint16; the components equal cc3d's."""
    assert stack_labels([np.zeros((1, 1, 2), np.uint32)], [255]).dtype == np.uint8
    many = np.zeros((4, 40, 40), np.uint32)
    many[::2, ::2, ::2] = np.arange(1, 801, dtype=np.uint32).reshape(2, 20, 20)
    stacked = stack_labels([many, many > 0], [800, 1])
    assert stacked.dtype == np.uint16 and np.array_equal(stacked[0], many)
    source = tmp_path / "mask.zarr"
    io.write_volume(source, (many > 0).astype(np.uint8), chunks=(4, 20, 20))
    n = connected_components(source, tmp_path / "cc.zarr", block_shape=(4, 20, 20), progress=False)
    expected = cc3d.connected_components(many > 0, connectivity=26)
    assert n == 800 and np.array_equal(io.open_volume(tmp_path / "cc.zarr")[:], expected)


def test_float_scores_kept_as_levels_flood_the_same() -> None:
    rng = np.random.default_rng(0)
    score = rng.random((6, 7, 8), np.float32)
    score[0, 0, :3] = [0.0, 1.0, 0.5 / 65535]  # ends and a value on a level's rounding edge
    seeds = (rng.random(score.shape) > 0.9).astype(np.uint32)
    kept = float_levels(score)
    assert kept.dtype == np.uint16
    np.testing.assert_array_equal(flood_height(kept, seeds), flood_height(score, seeds))


def test_workers_start_without_dasks_malloc_trim_setting() -> None:
    import dask
    from distributed.nanny import _get_env_variables

    assert "MALLOC_TRIM_THRESHOLD_" in _get_env_variables("distributed.nanny.pre-spawn-environ")
    with dask.config.set(cluster.WORKER_CONFIG):
        environ = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in environ


def test_face_pairs_deduplicate_like_unique_rows() -> None:
    from mitoseg.decode.blockwise.faces import _distinct

    pairs = np.random.default_rng(0).integers(0, 40, (500, 2))
    np.testing.assert_array_equal(_distinct(pairs), np.unique(pairs, axis=0))
    pairs[0] = [2**33, 5]  # beyond one int64 key: the row-wise unique
    np.testing.assert_array_equal(_distinct(pairs), np.unique(pairs, axis=0))
