import numpy as np
import pytest

from mitoseg.decode.masks import BinarizeMedian
from mitoseg.evaluate.semantic import (
    Confusion,
    best_threshold,
    evaluate_thresholds,
    format_table,
    semantic_scores,
)


def brute_force(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    counts = [0, 0, 0, 0]
    for p, t in zip(pred.ravel(), truth.ravel(), strict=True):
        counts[0 if p and t else 1 if p else 2 if t else 3] += 1
    return tuple(counts)  # type: ignore[return-value]


def test_confusion_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pred, truth = rng.random((5, 6, 7)) > 0.6, rng.random((5, 6, 7)) > 0.7
    c = Confusion.from_masks(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == brute_force(pred, truth)
    assert c + c == Confusion(2 * c.tp, 2 * c.fp, 2 * c.fn, 2 * c.tn)


def test_scores_by_hand() -> None:
    s = semantic_scores(Confusion(tp=6, fp=2, fn=2, tn=90))
    assert s["fg_iou"] == pytest.approx(0.6)
    assert s["bg_iou"] == pytest.approx(90 / 94)
    assert s["mean_iou"] == pytest.approx((0.6 + 90 / 94) / 2)
    assert s["precision"] == s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)


def test_empty_prediction_and_empty_truth() -> None:
    assert semantic_scores(Confusion(tn=10))["fg_iou"] == 1.0
    assert semantic_scores(Confusion(fn=5, tn=5))["fg_iou"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        Confusion.from_masks(np.zeros((2, 2)), np.zeros((2, 3)))


def test_streamed_thresholds_equal_whole_volume_scores() -> None:
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (1, 30, 16, 16), dtype=np.uint8)
    labels = (rng.random((30, 16, 16)) > 0.5).astype(np.uint32) * 4
    scores = evaluate_thresholds(probs, labels, [0.3, 0.6], median_size=3, slab=7)
    for t in (0.3, 0.6):
        pred = BinarizeMedian(t, 3)(probs)
        assert scores[t] == semantic_scores(Confusion.from_masks(pred, labels > 0))
    with pytest.raises(ValueError, match="differ"):
        evaluate_thresholds(probs, labels[:-1], [0.5])


def test_best_threshold_and_table() -> None:
    scores = {0.4: {"fg_iou": 0.5}, 0.6: {"fg_iou": 0.7}, 0.8: {"fg_iou": 0.7}}
    assert best_threshold(scores) == 0.6
    table = format_table([{"a": 1, "b": 0.5}])
    assert table.splitlines()[2] == "| 1 | 0.5000 |"
