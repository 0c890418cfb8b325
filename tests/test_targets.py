"""Targets against brute-force loops over voxels, plus channel contracts and input checks."""

from itertools import product

import numpy as np
import pytest

from mitoseg.train.targets import (
    Affinity,
    AffinityContour,
    BinaryContour,
    Semantic,
    affinities,
    instance_contour,
)

SHAPE = (5, 6, 7)
LONG_RANGE = ((-1, 0, 0), (0, -3, 0), (2, -1, 4), (0, 0, 9), (-3, 2, -2), (6, 0, 0))


def random_labels(seed: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint32)


def touching_pair() -> np.ndarray:
    """Two boxes, ids 1 and 2, sharing the face between x = 3 and x = 4, in background."""
    labels = np.zeros((4, 8, 10), dtype=np.uint16)
    labels[1:3, 2:6, 1:4] = 1
    labels[1:3, 2:6, 4:8] = 2
    return labels


def brute_affinities(labels: np.ndarray, offsets) -> np.ndarray:
    out = np.empty((len(offsets), *labels.shape), dtype=np.float32)
    for i, offset in enumerate(offsets):
        for p in product(*(range(n) for n in labels.shape)):
            q = tuple(a + d for a, d in zip(p, offset, strict=True))
            if not all(0 <= a < n for a, n in zip(q, labels.shape, strict=True)):
                out[(i, *p)] = np.nan
            else:
                out[(i, *p)] = float(labels[p] != 0 and labels[p] == labels[q])
    return out


def brute_contour(labels: np.ndarray, width: int, in_plane: bool) -> np.ndarray:
    r = width // 2
    out = np.zeros(labels.shape, dtype=bool)
    for p in product(*(range(n) for n in labels.shape)):
        z_steps = [0] if in_plane else range(-r, r + 1)
        for d in product(z_steps, range(-r, r + 1), range(-r, r + 1)):
            q = tuple(a + s for a, s in zip(p, d, strict=True))
            if all(0 <= a < n for a, n in zip(q, labels.shape, strict=True)):
                out[p] |= bool(labels[q] != labels[p])
        if in_plane:  # plus object-object contacts across z
            for dz in (-1, 1):
                z = p[0] + dz
                if 0 <= z < labels.shape[0]:
                    other = labels[(z, *p[1:])]
                    out[p] |= bool(other != labels[p] and other != 0 and labels[p] != 0)
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("offsets", [((-1, 0, 0), (0, -1, 0), (0, 0, -1)), LONG_RANGE])
def test_affinities_match_brute_force(seed, offsets) -> None:
    labels = random_labels(seed)
    expected = brute_affinities(labels, offsets)
    result = affinities(labels, offsets)
    assert result.dtype == np.float32 and result.shape == (len(offsets), *SHAPE)
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
    np.testing.assert_array_equal(result, expected)  # NaN == NaN for assert_array_equal


def test_affinity_nan_only_where_edge_leaves_patch() -> None:
    result = affinities(random_labels(2), [(-1, 0, 0), (0, 2, 0), (0, 0, 7)])
    assert np.isnan(result[0, 0]).all() and not np.isnan(result[0, 1:]).any()
    assert np.isnan(result[1, :, -2:]).all() and not np.isnan(result[1, :, :-2]).any()
    assert np.isnan(result[2]).all()  # offset as long as the x axis: no edge stays inside


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("in_plane", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_instance_contour_matches_brute_force(width, in_plane, seed) -> None:
    labels = random_labels(seed)
    labels[:, :3, :4] = 0  # a region of background so the band is not everywhere
    result = instance_contour(labels, width, in_plane)
    assert result.dtype == np.bool_ and result.shape == labels.shape
    np.testing.assert_array_equal(result, brute_contour(labels, width, in_plane))


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("in_plane", [False, True])
def test_instance_contour_touching_pair_matches_brute_force(width, in_plane) -> None:
    labels = touching_pair()
    result = instance_contour(labels, width, in_plane)
    np.testing.assert_array_equal(result, brute_contour(labels, width, in_plane))
    assert (result & (labels == 0)).any()  # the band includes background next to objects


def test_touching_objects_are_separated() -> None:
    labels = touching_pair()
    aff = Affinity()(labels)
    # x-affinity at x = 4 links to x = 3: across the face between ids 2 and 1.
    assert (aff[2, 1:3, 2:6, 4] == 0).all()
    assert (aff[2, 1:3, 2:6, 5] == 1).all() and (aff[2, 1:3, 2:6, 3] == 1).all()
    contour = BinaryContour(width=2, in_plane=True)(labels)[1]
    # r = 1: the voxels on both sides of the face are contour, the next ones inward are not.
    assert (contour[1:3, 3:5, 3] == 1).all() and (contour[1:3, 3:5, 4] == 1).all()
    assert (contour[1:3, 3:5, 2] == 0).all() and (contour[1:3, 3:5, 5] == 0).all()


def test_affinity_channels_and_lists_from_yaml() -> None:
    assert Affinity().channels == ("aff_z", "aff_y", "aff_x")
    target = Affinity(offsets=[[0, -3, 9], [-1, 0, 0], [2, 0, -1]])
    assert target.offsets == ((0, -3, 9), (-1, 0, 0), (2, 0, -1))
    assert target.channels == ("aff_0_m3_9", "aff_z", "aff_2_0_m1")
    labels = random_labels(4)
    result = target(labels)
    assert result.dtype == np.float32 and result.shape == (3, *SHAPE)
    np.testing.assert_array_equal(result[1], brute_affinities(labels, [(-1, 0, 0)])[0])


def test_binary_contour_channels() -> None:
    labels = touching_pair()
    target = BinaryContour(width=4, in_plane=True)
    assert target.channels == ("foreground", "contour")
    result = target(labels)
    assert result.dtype == np.float32 and result.shape == (2, *labels.shape)
    np.testing.assert_array_equal(result[0], labels > 0)
    np.testing.assert_array_equal(result[1], brute_contour(labels, 4, True))


def test_affinity_contour_channels() -> None:
    labels = random_labels(5)
    target = AffinityContour(offsets=LONG_RANGE, width=2)
    assert target.channels == (
        "aff_z",
        "aff_0_m3_0",
        "aff_2_m1_4",
        "aff_0_0_9",
        "aff_m3_2_m2",
        "aff_6_0_0",
        "contour",
    )
    result = target(labels)
    assert result.dtype == np.float32 and result.shape == (len(LONG_RANGE) + 1, *SHAPE)
    np.testing.assert_array_equal(result[:-1], brute_affinities(labels, LONG_RANGE))
    np.testing.assert_array_equal(result[-1], brute_contour(labels, 2, False))
    assert AffinityContour().channels == ("aff_z", "aff_y", "aff_x", "contour")


def test_semantic_unchanged() -> None:
    labels = random_labels(6)
    assert Semantic().channels == ("foreground",)
    np.testing.assert_array_equal(Semantic()(labels), (labels > 0)[None].astype(np.float32))


@pytest.mark.parametrize("width", [0, 1, 3, -2, 2.0, True, "4"])
def test_bad_width_raises(width) -> None:
    with pytest.raises(ValueError, match="width"):
        instance_contour(random_labels(0), width)
    with pytest.raises(ValueError, match="width"):
        BinaryContour(width=width)
    with pytest.raises(ValueError, match="width"):
        AffinityContour(width=width)


@pytest.mark.parametrize(
    "offsets",
    [(), [(0, 0, 0)], [(1, 0)], [(1, 0, 0, 0)], [(1.0, 0, 0)], [(-1, 0, 0), [-1, 0, 0]], "abc"],
)
def test_bad_offsets_raise(offsets) -> None:
    with pytest.raises(ValueError, match="offset"):
        affinities(random_labels(0), offsets)
    with pytest.raises(ValueError, match="offset"):
        Affinity(offsets=offsets)
    with pytest.raises(ValueError, match="offset"):
        AffinityContour(offsets=offsets)


def test_bad_labels_raise() -> None:
    with pytest.raises(ValueError, match=r"\(6, 7\)"):
        Affinity()(np.zeros((6, 7), dtype=np.int32))
    with pytest.raises(ValueError, match="dtype"):
        BinaryContour()(np.zeros(SHAPE, dtype=np.float32))


def test_in_plane_contour_separates_objects_stacked_in_z() -> None:
    labels = np.zeros((4, 9, 9), dtype=np.uint32)
    labels[:2, 2:7, 2:7], labels[2:, 2:7, 2:7] = 1, 2  # object 2 sits on top of object 1
    contour = instance_contour(labels, width=2, in_plane=True)
    assert contour[1, 4, 4] and contour[2, 4, 4]  # both sides of the z-contact
    assert not contour[0, 4, 4] and not contour[3, 4, 4]  # the background above/below is not
