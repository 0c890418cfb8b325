"""mitoseg-evaluate: any format in, MitoEM scores and a per-object table out; the per-object
classification and the error panel of mitoseg-view --png (issue 19, points 4 and 5)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from mitoseg import io
from mitoseg.analyze import plots
from mitoseg.baselines.metrics import (
    average_precision_bruteforce,
    instances_bruteforce,
    matching_bruteforce,
)
from mitoseg.cli import evaluate, view
from mitoseg.evaluate.contingency import overlaps
from mitoseg.evaluate.counts import count_slabs
from mitoseg.evaluate.instance import AP_THRESHOLDS, instance_scores
from mitoseg.evaluate.objects import OBJECT_COLUMNS, OUTCOMES, classify_objects, object_rows
from mitoseg.evaluate.semantic import Confusion, semantic_scores
from tests.test_instance_metrics import perturb, random_truth


def known_case() -> tuple[np.ndarray, np.ndarray]:
    """One object of every outcome, (4, 20, 40)."""
    t = np.zeros((4, 20, 40), np.uint32)
    p = np.zeros_like(t)
    t[:, 2:8, 2:10], p[:, 2:8, 2:10] = 1, 11  # matched
    t[:, 2:8, 12:30], p[:, 2:8, 12:21], p[:, 2:8, 21:30] = 2, 12, 13  # split in two
    t[:, 10:16, 2:8], t[:, 10:16, 9:14], p[:, 10:16, 2:14] = 3, 4, 14  # merged pair
    t[:, 10:16, 20:26] = 5  # missed
    p[:, 10:16, 30:36] = 16  # false positive
    t[:, 17:20, 2:30], p[:, 17:20, 2:12] = 6, 17  # partial: one prediction, IoU 0.36
    return t, p


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = evaluate.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_scores(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text())


def read_objects(out: Path) -> list[dict[str, str]]:
    with (out / "objects.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------- classification


def test_known_outcomes_and_table() -> None:
    truth, pred = known_case()
    counts = count_slabs(truth, pred, slab=3)
    errors = classify_objects(counts.overlaps)
    rows = {(r["kind"], r["id"]): r for r in object_rows(errors, counts.truth, counts.pred)}
    expected = {
        ("truth", 1): ("matched", ""),
        ("truth", 2): ("split", "12;13"),
        ("truth", 3): ("merged", "4"),
        ("truth", 4): ("merged", "3"),
        ("truth", 5): ("missed", ""),
        ("truth", 6): ("partial", "17"),
        ("pred", 12): ("fragment", "2"),
        ("pred", 13): ("fragment", "2"),
        ("pred", 14): ("merged", "3;4"),
        ("pred", 16): ("false_positive", ""),
        ("pred", 17): ("partial", "6"),
    }
    assert {k: (r["outcome"], r["related"]) for k, r in rows.items()} == expected
    assert ("pred", 11) not in rows  # a matched prediction is its truth's row
    assert rows[("truth", 1)]["match"] == 11 and rows[("truth", 1)]["best_iou"] == 1.0
    box = [rows[("truth", 2)][k] for k in ("z0", "y0", "x0", "z1", "y1", "x1")]
    assert box == [0, 2, 12, 4, 8, 30]
    assert set(rows[("truth", 2)]) == set(OBJECT_COLUMNS)


def classify_bruteforce(truth: np.ndarray, pred: np.ndarray, t: float) -> dict:
    """The rules of mitoseg.evaluate.objects with masks and loops."""
    gt, dt = instances_bruteforce(truth), instances_bruteforce(pred)
    inter = {
        (g, p): int(np.count_nonzero((truth == g) & (pred == p)))
        for g in gt
        for p in dt
        if np.any((truth == g) & (pred == p))
    }
    iou = {k: v / (gt[k[0]] + dt[k[1]] - v) for k, v in inter.items()}
    match: dict[tuple[str, int], int] = {}
    for (g, p), v in sorted(iou.items(), key=lambda kv: (-kv[1], kv[0])):
        if v >= t and ("t", g) not in match and ("p", p) not in match:
            match[("t", g)], match[("p", p)] = p, g
    pred_in = {p: g for (g, p), v in inter.items() if 2 * v > dt[p]}
    truth_in = {g: p for (g, p), v in inter.items() if 2 * v > gt[g]}
    fragments = {g: [p for p in dt if pred_in.get(p) == g] for g in gt}
    inside = {p: [g for g in gt if truth_in.get(g) == p] for p in dt}
    out = {}
    for g in gt:
        if ("t", g) in match:
            out[("truth", g)] = "matched"
        elif g in truth_in and len(inside[truth_in[g]]) >= 2:
            out[("truth", g)] = "merged"
        elif len(fragments[g]) >= 2:
            out[("truth", g)] = "split"
        elif not fragments[g] and g not in truth_in:
            out[("truth", g)] = "missed"
        else:
            out[("truth", g)] = "partial"
    for p in dt:
        home = pred_in.get(p)
        if ("p", p) in match:
            out[("pred", p)] = "matched"
        elif len(inside[p]) >= 2:
            out[("pred", p)] = "merged"
        elif home is not None and (len(fragments[home]) >= 2 or ("t", home) in match):
            out[("pred", p)] = "fragment"
        elif home is not None or len(inside[p]) == 1:
            out[("pred", p)] = "partial"
        else:
            out[("pred", p)] = "false_positive"
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.5, 0.75])
def test_classification_matches_brute_force_and_the_counts(seed: int, t: float) -> None:
    rng = np.random.default_rng(seed)
    truth = random_truth(rng)
    pred = perturb(rng, truth)
    errors = classify_objects(overlaps(truth, pred), t)
    ours = {
        (kind, int(i)): OUTCOMES[code]
        for kind, side in (("truth", errors.truth), ("pred", errors.pred))
        for i, code in zip(side.ids, side.outcome, strict=True)
    }
    assert ours == classify_bruteforce(truth, pred, t)
    tp, fp, fn = matching_bruteforce(truth, pred, t)
    counts = errors.counts()
    assert counts["truth_matched"] == counts["pred_matched"] == tp
    assert sum(v for k, v in counts.items() if k.startswith("pred_")) - tp == fp
    assert sum(v for k, v in counts.items() if k.startswith("truth_")) - tp == fn


# --------------------------------------------------------------------------- the command


def test_any_format_in_scores_and_table_out(tmp_path: Path, cache: Path, capsys) -> None:
    truth, pred = known_case()
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    with h5py.File(tmp_path / "pred.h5", "w") as f:
        f["seg"] = pred
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        [str(tmp_path / "pred.h5"), str(tmp_path / "truth.tif"), "--pred-dataset", "seg"]
        + ["--out", str(out), "--size-ranges", "150", "300"],
        capsys,
    )
    assert code == 0, err
    assert "voxel size" not in err  # scores need none; the conversion's note is dropped
    assert "1 matched, 1 split, 2 merged, 1 partial, 1 missed" in stdout
    result = read_scores(out)
    assert result["mode"] == "instances" and result["ranking"] == "size"
    assert result["size_ranges_voxels"]["medium"] == [150.0, 300.0]
    scores = result["scores"]
    ranges = {"small": (0.0, 150.0), "medium": (150.0, 300.0), "large": (300.0, np.inf)}
    oracle = average_precision_bruteforce(truth, pred, (0.5, 0.75), None, ranges)
    assert {k: scores[k] for k in oracle} == pytest.approx(oracle, abs=1e-12)
    assert min(scores[f"ap75_{k}"] for k in ranges) > -1  # every range populated
    assert (scores["tp75"], scores["fp75"], scores["fn75"]) == matching_bruteforce(truth, pred)
    with (out / "scores.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert {k: float(v) for k, v in row.items()} == scores  # exact round trip
    outcomes = {(r["kind"], r["id"]): r["outcome"] for r in read_objects(out)}
    assert outcomes[("truth", "2")] == "split" and outcomes[("pred", "16")] == "false_positive"
    assert sorted(p.name for p in out.iterdir()) == ["objects.csv", "scores.csv", "scores.json"]


def test_masks_auto_detected_and_components(tmp_path: Path, cache: Path, capsys) -> None:
    truth, pred = known_case()
    mask = (pred > 0).astype(np.uint8)
    io.write_volume(tmp_path / "mask.zarr", mask, chunks=(2, 8, 8))
    io.write_volume(tmp_path / "truth.zarr", truth, chunks=(2, 8, 8))
    code, stdout, _ = run_cli(
        [str(tmp_path / "mask.zarr"), str(tmp_path / "truth.zarr"), "--out", str(tmp_path / "m")],
        capsys,
    )
    assert code == 0 and "(masks)" in stdout
    scores = read_scores(tmp_path / "m")["scores"]
    assert scores == semantic_scores(Confusion.from_masks(mask > 0, truth > 0))
    assert not (tmp_path / "m" / "objects.csv").exists()

    code, stdout, _ = run_cli(
        [str(tmp_path / "mask.zarr"), str(tmp_path / "truth.zarr"), "--components"]
        + ["--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 0 and "(instances)" in stdout
    components, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    expected = instance_scores(truth, components.astype(np.uint32))
    scores = read_scores(tmp_path / "c")["scores"]
    assert {k: scores[k] for k in expected} == expected

    code, stdout, _ = run_cli([str(tmp_path / "truth.zarr")] * 2 + ["--masks"], capsys)
    assert code == 0 and "| 1.0000 | 1.0000 |" in stdout and "nothing written" in stdout


def test_confidence_ranks_predictions(tmp_path: Path, cache: Path, capsys) -> None:
    rng = np.random.default_rng(5)
    truth = random_truth(rng)
    pred = perturb(rng, truth).astype(np.uint32)
    probs = rng.random((2, *truth.shape)).astype(np.float32)
    io.write_volume(tmp_path / "pred.zarr", pred)
    io.write_volume(tmp_path / "truth.zarr", truth)
    io.write_volume(tmp_path / "probs.zarr", probs)
    out = tmp_path / "e"
    args = [str(tmp_path / "pred.zarr"), str(tmp_path / "truth.zarr")]
    code, _, err = run_cli(
        [*args, "--probs", str(tmp_path / "probs.zarr"), "--out", str(out)], capsys
    )
    assert code == 0, err
    mean = {int(i): float(probs[0][pred == i].mean()) for i in np.unique(pred[pred > 0])}
    ranges = {"small": (0.0, 5e3), "medium": (5e3, 1.5e4), "large": (1.5e4, np.inf)}
    oracle = average_precision_bruteforce(truth, pred, AP_THRESHOLDS, mean, ranges)
    scores = read_scores(out)["scores"]
    assert scores["ap75"] == pytest.approx(oracle["ap75"], abs=1e-12)
    mean_ap = np.mean([oracle[f"ap{100 * t:g}"] for t in AP_THRESHOLDS])
    assert scores["ap50_95"] == pytest.approx(mean_ap, abs=1e-12)
    table = [r for r in read_objects(out) if r["kind"] == "pred"]
    assert table and all(
        float(r["confidence"]) == pytest.approx(mean[int(r["id"])], abs=2e-5) for r in table
    )


def test_blockwise_and_automatic_blockwise_are_identical(tmp_path: Path, cache: Path, capsys):
    rng = np.random.default_rng(2)
    truth = random_truth(rng, shape=(12, 20, 24), n=20)
    pred = perturb(rng, truth).astype(np.uint32)
    probs = (rng.random((1, *truth.shape)) * 255).astype(np.uint8)
    for name, data in (("pred", pred), ("truth", truth), ("probs", probs)):
        io.write_volume(tmp_path / f"{name}.zarr", data, chunks=(4, 8, 8))
    base = [str(tmp_path / "pred.zarr"), str(tmp_path / "truth.zarr")]
    base += ["--probs", str(tmp_path / "probs.zarr")]
    runs = {
        "slabs": ["--slab", "5"],
        "blocks": ["--blockwise", "--block-shape", "4", "8", "16"],
        "auto": ["--memory-gb", "1e-9", "--block-shape", "8", "8", "8"],
    }
    results = {}
    for name, extra in runs.items():
        code, _, err = run_cli([*base, *extra, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        results[name] = (read_scores(tmp_path / name), read_objects(tmp_path / name))
    assert [results[n][0]["blockwise"] for n in runs] == [False, True, True]
    for name in ("blocks", "auto"):
        assert results[name][0]["scores"] == results["slabs"][0]["scores"]
        assert results[name][1] == results["slabs"][1]


def test_label_options_and_refusals(tmp_path: Path, cache: Path, capsys) -> None:
    truth, pred = known_case()
    classes = np.where(truth > 0, 191, 64).astype(np.uint8)  # class codes, mitochondria 191
    classes[0, 0, :5] = 128
    tifffile.imwrite(tmp_path / "classes.tif", classes)
    io.write_volume(tmp_path / "pred.zarr", pred)
    args = [str(tmp_path / "pred.zarr"), str(tmp_path / "classes.tif")]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "class codes" in err and "--label-values" in err
    code, stdout, err = run_cli([*args, "--label-values", "191"], capsys)
    assert code == 0 and "(masks)" in stdout, err
    code, stdout, _ = run_cli([*args, "--label-values", "191", "--components"], capsys)
    assert "(instances)" in stdout and "6 ground-truth objects" in stdout  # its components

    out = tmp_path / "e"
    assert run_cli([*args, "--label-values", "191", "--out", str(out)], capsys)[0] == 0
    code, _, err = run_cli([*args, "--label-values", "191", "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    before = (tmp_path / "pred.zarr" / "zarr.json").read_bytes()
    code, _, err = run_cli([*args, "--out", str(tmp_path / "pred.zarr" / "e")], capsys)
    assert code == 2 and "inside the input" in err
    assert (tmp_path / "pred.zarr" / "zarr.json").read_bytes() == before
    assert not (tmp_path / "pred.zarr" / "e").exists()
    code, _, err = run_cli([*args, "--size-ranges", "10", "5"], capsys)
    assert code == 2 and "small < medium" in err


# --------------------------------------------------------------------------- error picture


def test_view_png_colours_every_outcome_with_a_legend(tmp_path: Path, capsys) -> None:
    truth, pred = known_case()
    raw = np.full(truth.shape, 100, np.uint8)
    for name, data in (("raw", raw), ("truth", truth), ("pred", pred)):
        io.write_volume(tmp_path / f"{name}.zarr", data)
    png = tmp_path / "errors.png"
    code = view.main(
        [str(tmp_path / "raw.zarr"), "--labels", str(tmp_path / "truth.zarr")]
        + ["--instances", str(tmp_path / "pred.zarr"), "--png", str(png), "--slices", "1"]
    )
    assert code == 0
    image = np.asarray(Image.open(png).convert("RGB"))
    h, w = truth.shape[1:]
    width = 4 * w + 5 * plots.GAP  # raw, ground truth, instances, errors
    assert image.shape == (plots.HEADER + h + 2 * plots.GAP + plots.legend_height(width), width, 3)
    left, top = plots.GAP + 3 * (w + plots.GAP), plots.GAP + plots.HEADER
    panel = image[top : top + h, left : left + w]

    def colour(outcome: str) -> list[int]:
        return [round(0.5 * 100 + 0.5 * c) for c in plots.ERROR_COLOURS[outcome]]

    inside = {
        "matched": (4, 5), "split": (4, 14), "merged": (12, 4), "missed": (12, 22),
        "false_positive": (12, 33), "partial": (18, 20),
    }  # fmt: skip
    for outcome, (y, x) in inside.items():
        assert list(panel[y, x]) == colour(outcome), outcome
    assert list(panel[4, 20]) == list(plots.BORDER_COLOUR)  # where the split cuts
    assert list(panel[0, 0]) == [100, 100, 100]
