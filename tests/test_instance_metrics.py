import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

from mitoseg.baselines.metrics import (
    average_precision_bruteforce,
    instance_scores_whole,
    instances_bruteforce,
    interpolated_ap_bruteforce,
    matching_bruteforce,
    overlaps_whole,
    pair_ious_bruteforce,
    rand_voi_skimage,
)
from mitoseg.evaluate.instance import (
    INSTANCE_SCORE_COLUMNS,
    SIZE_RANGES,
    Overlaps,
    average_precision,
    instance_scores,
    matching_accuracy,
    overlaps,
    rand_voi,
)

THRESHOLDS = (0.3, 0.5, 0.55, 0.75, 0.9)
SEEDS = range(6)


def random_truth(rng: np.random.Generator, shape=(10, 14, 16), n=14) -> np.ndarray:
    """Overlapping random boxes of ids 1..n (later boxes overwrite earlier ones)."""
    truth = np.zeros(shape, dtype=np.uint32)
    for i in range(1, n + 1):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        hi = [a + int(rng.integers(1, max(2, s // 2))) for a, s in zip(lo, shape, strict=True)]
        truth[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = i
    return truth


def perturb(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Shifted, renumbered, with drops, merges, a split and a false box."""
    n = int(truth.max())
    lut = np.concatenate([[0], rng.permutation(np.arange(101, 101 + n))]).astype(np.int64)
    lut[rng.integers(1, n + 1)] = 0
    lut[rng.integers(1, n + 1)] = lut[rng.integers(1, n + 1)]
    pred = lut[np.roll(truth, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))]
    split = int(rng.integers(1, n + 1))
    pred[(truth == split) & (np.arange(truth.shape[2]) % 2 == 0)] = 999
    pred[:2, :3, :4] = 7
    return pred


@pytest.fixture(params=list(SEEDS))
def pair(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    truth = random_truth(rng)
    return truth, perturb(rng, truth)


@pytest.fixture()
def tiny_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    # Size ranges scaled to the tiny test volumes, so that all three are populated.
    # Several test objects have exactly 12 voxels, which exercises the lo < size <= hi rule.
    monkeypatch.setitem(SIZE_RANGES, "small", (0.0, 12.0))
    monkeypatch.setitem(SIZE_RANGES, "medium", (12.0, 40.0))
    monkeypatch.setitem(SIZE_RANGES, "large", (40.0, np.inf))


def pair_dict(ov: Overlaps) -> dict[tuple[int, int], int]:
    keys = zip(ov.pair_truth.tolist(), ov.pair_pred.tolist(), strict=True)
    return dict(zip(keys, ov.pair_counts.tolist(), strict=True))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


# --------------------------------------------------------------------------- contingency


def test_overlaps_match_voxel_counter(pair) -> None:
    truth, pred = pair
    ov = overlaps(truth, pred, slab=3)
    counter = Counter(zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True))
    background = counter.pop((0, 0), 0)
    assert pair_dict(ov) == dict(counter)
    assert ov.background == background and ov.n_voxels == truth.size
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    assert np.array_equal(ov.truth_ids, ids) and np.array_equal(ov.truth_sizes, sizes)
    ids, sizes = np.unique(pred[pred > 0], return_counts=True)
    assert np.array_equal(ov.pred_ids, ids) and np.array_equal(ov.pred_sizes, sizes)
    assert ov == overlaps_whole(truth, pred)


@pytest.mark.parametrize("slab", [1, 4, 7, 100])
def test_slab_size_does_not_change_the_result(pair, slab: int) -> None:
    truth, pred = pair
    assert overlaps(truth, pred, slab=slab) == overlaps(truth, pred, slab=32)


def test_sum_of_z_halves_equals_whole(pair) -> None:
    truth, pred = pair
    half = truth.shape[0] // 2
    top, bottom = overlaps(truth[:half], pred[:half]), overlaps(truth[half:], pred[half:])
    whole = overlaps(truth, pred)
    assert top + bottom == whole
    assert sum([top, bottom]) == whole
    assert pickle.loads(pickle.dumps(top)) + bottom == whole  # blocks travel between workers
    assert top + bottom != top


@pytest.mark.parametrize(
    "offset",
    [0, 5_000, 2**20, 2**62],  # dense bincount, uint32 keys, uint64 keys, compacted ids
)
def test_every_key_packing_gives_the_same_pairs(pair, offset: int) -> None:
    truth, pred = (np.where(a > 0, a.astype(np.uint64) + np.uint64(offset), 0) for a in pair)
    ov = overlaps(truth, pred)
    counter = Counter(zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True))
    counter.pop((0, 0), None)
    assert ov.pair_truth.dtype == np.uint64
    assert pair_dict(ov) == dict(counter)


def test_mixed_integer_dtypes(pair) -> None:
    truth, pred = pair
    small = overlaps(truth.astype(np.uint16), pred.astype(np.int64))
    assert small == overlaps(truth, pred)


def test_zarr_input(tmp_path: Path, pair) -> None:
    truth, pred = pair
    arrays = []
    for name, data in (("truth", truth), ("pred", pred.astype(np.uint32))):
        z = zarr.create_array(
            tmp_path / f"{name}.zarr", shape=data.shape, dtype=data.dtype, chunks=(3, 8, 8)
        )
        z[...] = data
        arrays.append(zarr.open_array(tmp_path / f"{name}.zarr", mode="r"))
    assert overlaps(*arrays, slab=4) == overlaps(truth, pred)
    assert instance_scores(*arrays, slab=5) == instance_scores(truth, pred)


def test_bad_input_is_refused() -> None:
    a = np.zeros((2, 3, 4), np.uint32)
    with pytest.raises(ValueError, match="one shape"):
        overlaps(a, np.zeros((2, 3, 5), np.uint32))
    with pytest.raises(ValueError, match="one shape"):
        overlaps(a[0], a[0])
    with pytest.raises(ValueError, match="integer"):
        overlaps(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="slab"):
        overlaps(a, a, slab=0)
    with pytest.raises(ValueError, match="negative"):
        overlaps(a, np.full((2, 3, 4), -1, np.int32))
    with pytest.raises(ValueError, match="n_voxels"):
        Overlaps(np.array([1]), np.array([0]), np.array([5]), 4)
    ov = overlaps(a, a + 1)
    with pytest.raises(ValueError, match="scores lacks"):
        average_precision(ov, scores={})
    with pytest.raises(ValueError, match="iou_thresholds"):
        average_precision(ov, iou_thresholds=(0.0,))
    with pytest.raises(ValueError, match="iou_threshold"):
        matching_accuracy(ov, 1.5)


# --------------------------------------------------------------------------- metrics


@pytest.mark.usefixtures("tiny_ranges")
def test_average_precision_matches_brute_force(pair) -> None:
    truth, pred = pair
    ours = average_precision(overlaps(truth, pred), THRESHOLDS)
    assert_same(ours, average_precision_bruteforce(truth, pred, THRESHOLDS))
    assert {ours[f"ap50_{k}"] > -1 for k in ("small", "medium", "large")} == {True}


@pytest.mark.usefixtures("tiny_ranges")
def test_average_precision_with_scores_matches_brute_force(pair) -> None:
    truth, pred = pair
    rng = np.random.default_rng(1)
    scores = {int(i): float(rng.integers(0, 4)) for i in np.unique(pred[pred > 0])}
    ours = average_precision(overlaps(truth, pred), THRESHOLDS, scores={**scores, 12345: 1.0})
    assert_same(ours, average_precision_bruteforce(truth, pred, THRESHOLDS, scores))


def reference_rule_ap(truth, pred, t: float, lo: float, hi: float) -> float:
    """The MitoEM reference's rules: best in-range IoU, matched or not; else best overall."""
    gt, dt = instances_bruteforce(truth), instances_bruteforce(pred)
    ious = pair_ious_bruteforce(truth, pred)
    n_gt = sum(lo < s <= hi for s in gt.values())
    if not n_gt:
        return -1.0
    outcome = []
    for p in sorted(dt, key=lambda i: (-dt[i], i)):
        best = max(((v, -g) for g, v in ious[p].items() if lo < gt[g] <= hi), default=None)
        best = best or max(((v, -g) for g, v in ious[p].items()), default=(0.0, 0))
        if best[0] >= t:
            outcome.append("tp" if lo < gt[-best[1]] <= hi else "ignore")
        else:
            outcome.append("fp" if lo < dt[p] <= hi else "ignore")
    return interpolated_ap_bruteforce(outcome, n_gt)


@pytest.mark.usefixtures("tiny_ranges")
@pytest.mark.parametrize("t", [0.55, 0.75, 0.9])
def test_average_precision_equals_reference_rules_above_half(pair, t: float) -> None:
    truth, pred = pair
    ours = average_precision(overlaps(truth, pred), (t,))
    name = f"ap{100 * t:g}"
    ranges = {name: (0.0, np.inf)} | {f"{name}_{k}": v for k, v in SIZE_RANGES.items()}
    for key, (lo, hi) in ranges.items():
        assert ours[key] == pytest.approx(reference_rule_ap(truth, pred, t, lo, hi), abs=1e-12)


def test_average_precision_with_real_size_ranges() -> None:
    truth = np.zeros((20, 60, 60), np.uint32)
    boxes = [
        (slice(0, 2), slice(0, 10), slice(0, 10)),  # 200 voxels: small
        (slice(0, 6), slice(10, 40), slice(0, 30)),  # 5400: medium
        (slice(6, 20), slice(0, 40), slice(0, 40)),  # 22400: large
        (slice(0, 20), slice(40, 60), slice(0, 20)),  # 8000: medium
        (slice(0, 5), slice(45, 60), slice(30, 60)),  # 2250: small
    ]
    for i, box in enumerate(boxes):
        truth[box] = i + 1
    pred = perturb(np.random.default_rng(7), truth)
    ours = average_precision(overlaps(truth, pred), THRESHOLDS)
    assert_same(ours, average_precision_bruteforce(truth, pred, THRESHOLDS))
    assert min(ours["ap50_small"], ours["ap50_medium"], ours["ap50_large"]) > -1


def test_low_threshold_takes_the_best_free_match() -> None:
    truth = np.zeros((1, 1, 20), np.uint32)
    truth[..., 0:7], truth[..., 7:16] = 1, 2
    pred = np.zeros_like(truth)
    pred[..., 2:12], pred[..., 12:16] = 1, 2
    # IoU: pred 1 with truth 1 5/12, with truth 2 5/14; pred 2 with truth 2 4/9.
    ov = overlaps(truth, pred)
    m = matching_accuracy(ov, 0.3)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0) == matching_bruteforce(truth, pred, 0.3)
    ap = average_precision(ov, (0.3,))
    assert ap["ap30"] == pytest.approx(1.0, abs=1e-15)
    assert_same(ap, average_precision_bruteforce(truth, pred, (0.3,)))


@pytest.mark.parametrize("t", [0.2, 0.5, 0.75])
def test_matching_accuracy_matches_brute_force(pair, t: float) -> None:
    truth, pred = pair
    m = matching_accuracy(overlaps(truth, pred), t)
    tp, fp, fn = matching_bruteforce(truth, pred, t)
    assert (m["tp"], m["fp"], m["fn"]) == (tp, fp, fn)
    assert m["accuracy"] == pytest.approx(tp / (tp + fp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_rand_voi_match_skimage(pair) -> None:
    truth, pred = pair
    ours = rand_voi(overlaps(truth, pred))
    theirs = rand_voi_skimage(truth, pred)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-10, abs=1e-12), key


def test_instance_scores_match_whole_volume_baseline(pair) -> None:
    truth, pred = pair
    ours = instance_scores(truth, pred, slab=3)
    assert set(INSTANCE_SCORE_COLUMNS) <= ours.keys()
    assert all(isinstance(v, float) for v in ours.values())
    assert_same(ours, instance_scores_whole(truth, pred))
    assert ours["n_truth"] == len(np.unique(truth)) - 1


def test_identical_prediction_is_perfect(pair) -> None:
    truth, _ = pair
    s = instance_scores(truth, truth.astype(np.int32))
    assert s["ap50"] == s["ap75"] == s["accuracy75"] == 1.0
    assert s["are"] == 0.0 and s["voi_split"] == 0.0 and s["voi_merge"] == 0.0
    assert s["ap75_small"] == 1.0 and s["ap75_large"] == -1.0  # no truth that large


def test_split_object_known_values() -> None:
    n = 40
    truth = np.zeros((2, 4, 20), np.uint16)
    truth[:, :2] = 3
    pred = truth.astype(np.uint32)
    pred[:, :, 10:] *= 2  # two halves, ids 3 and 6, IoU 0.5 each
    s = instance_scores(truth, pred)
    # Equal sizes: id 3 ranks first and matches at IoU 0.5; id 6 finds the truth taken.
    # (Precision is tp / (tp + fp + eps) as in the reference, hence approx.)
    assert s["ap50"] == pytest.approx(1.0, abs=1e-15) and s["ap75"] == 0.0
    assert (s["tp75"], s["fp75"], s["fn75"], s["accuracy75"]) == (0, 2, 1, 0.0)
    assert matching_accuracy(overlaps(truth, pred), 0.5)["accuracy"] == pytest.approx(1 / 2)
    assert s["voi_split"] == pytest.approx(1.0) and s["voi_merge"] == 0.0
    assert s["are_precision"] == 1.0
    assert s["are_recall"] == pytest.approx((n - 1) / (2 * n - 1))
    assert s["are"] == pytest.approx(n / (3 * n - 2))


def test_merged_pair_known_values() -> None:
    n = 40
    truth = np.zeros((2, 4, 20), np.uint32)
    truth[:, :2, :10], truth[:, :2, 10:] = 1, 2
    pred = (truth > 0).astype(np.uint8) * 5
    s = instance_scores(truth, pred)
    assert s["ap75"] == 0.0
    # Recall 0.5 at precision 1: the 51 recall points 0.00 ... 0.50 score 1.
    assert s["ap50"] == pytest.approx(51 / 101)
    assert s["voi_merge"] == pytest.approx(1.0) and s["voi_split"] == 0.0
    assert s["are_recall"] == 1.0
    assert s["are_precision"] == pytest.approx((n - 1) / (2 * n - 1))


def test_empty_volumes() -> None:
    shape = (3, 4, 5)
    objects = np.zeros(shape, np.uint32)
    objects[:, :2, :2] = 4
    empty = np.zeros(shape, np.uint32)

    no_pred = instance_scores(objects, empty)  # truth, nothing predicted
    assert no_pred["ap50"] == no_pred["ap75"] == no_pred["ap75_small"] == 0.0
    assert no_pred["ap75_medium"] == -1.0  # no truth in that range
    assert (no_pred["accuracy75"], no_pred["recall75"], no_pred["precision75"]) == (0, 0, 1)
    assert no_pred["voi_split"] == 0.0 and no_pred["are_recall"] == 1.0

    no_truth = instance_scores(empty, objects)  # only false positives
    assert no_truth["ap50"] == no_truth["ap75_small"] == -1.0
    assert (no_truth["accuracy75"], no_truth["precision75"], no_truth["fp75"]) == (0, 0, 1)
    assert no_truth["are"] == 0.0 and no_truth["voi_merge"] == 0.0  # no truth voxel to score

    both = instance_scores(empty, empty)
    assert both["ap50"] == both["ap75"] == -1.0
    assert both["accuracy75"] == 1.0 and both["n_truth"] == both["n_pred"] == 0.0
    assert both["are"] == 0.0 and both["voi_split"] == both["voi_merge"] == 0.0


# --------------------------------------------------------------------------- mitoseg-evaluate


@pytest.mark.usefixtures("tiny_ranges")
def test_mitoseg_evaluate_equals_the_oracles(pair, tmp_path: Path, monkeypatch) -> None:
    """The command on files: AP (and AP .5:.95) with the size breakdown as the brute-force
    MitoEM rules, matching as the brute-force loop, Rand / VOI as skimage, voxel scores."""
    import json

    import tifffile

    from mitoseg.cli import evaluate
    from mitoseg.evaluate.instance import AP_THRESHOLDS
    from mitoseg.evaluate.semantic import Confusion, semantic_scores

    truth, pred = pair
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    tifffile.imwrite(tmp_path / "pred.tif", pred.astype(np.uint32))
    z = zarr.create_array(tmp_path / "truth.zarr", shape=truth.shape, dtype=truth.dtype)
    z[...] = truth
    args = [str(tmp_path / "pred.tif"), str(tmp_path / "truth.zarr"), "--out", str(tmp_path / "e")]
    assert evaluate.main([*args, "--size-ranges", "12", "40", "--slab", "3"]) == 0
    ours = json.loads((tmp_path / "e" / "scores.json").read_text())["scores"]

    aps = average_precision_bruteforce(truth, pred, AP_THRESHOLDS)
    for suffix in ("", *(f"_{k}" for k in SIZE_RANGES)):
        assert ours[f"ap50{suffix}"] == pytest.approx(aps[f"ap50{suffix}"], abs=1e-12)
        assert ours[f"ap75{suffix}"] == pytest.approx(aps[f"ap75{suffix}"], abs=1e-12)
        mean = np.mean([aps[f"ap{100 * t:g}{suffix}"] for t in AP_THRESHOLDS])
        assert ours[f"ap50_95{suffix}"] == pytest.approx(mean, abs=1e-12)
    assert (ours["tp75"], ours["fp75"], ours["fn75"]) == matching_bruteforce(truth, pred, 0.75)
    for key, value in rand_voi_skimage(truth, pred).items():
        assert ours[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    voxels = semantic_scores(Confusion.from_masks(pred > 0, truth > 0))
    assert {k: ours[k] for k in voxels} == voxels
    assert ours["n_truth"] == len(instances_bruteforce(truth))
