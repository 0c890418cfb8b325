"""Report figures: slice overlays of raw, ground truth, prediction and instances, and threshold
sweep plots (matplotlib Agg without pyplot; numpy only, no torch).

Figures are written under a temporary name and renamed, so a report never holds half a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from mitoseg.decode.base import INSTANCE_COLUMNS, SEMANTIC_COLUMNS
from mitoseg.evaluate.objects import OUTCOMES, ObjectErrors
from mitoseg.files import write_atomic

# Panel layout of the overlay, in pixels; dpi 64 makes figure inches exact binary fractions,
# so the PNG has exactly the computed pixel size.
GAP = 4
HEADER = 18
_DPI = 64
TRUTH_COLOUR = (255, 255, 0)
TP_COLOUR, FP_COLOUR, FN_COLOUR = (0, 200, 0), (255, 0, 0), (0, 128, 255)
ALPHA = 0.5
# The error overlay: ground-truth objects by outcome, unmatched predictions outside them by theirs.
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "matched": TP_COLOUR,
    "split": (255, 140, 0),
    "fragment": (255, 140, 0),
    "merged": (220, 0, 220),
    "partial": (255, 220, 0),
    "missed": FN_COLOUR,
    "false_positive": FP_COLOUR,
}
ERROR_LEGEND = (
    ("matched", "matched"),
    ("split", "split / fragment"),
    ("merged", "merged"),
    ("partial", "partial"),
    ("missed", "missed"),
    ("false_positive", "false positive"),
)
BORDER_COLOUR = (255, 255, 255)  # borders of predicted objects in the error panel
_LEGEND_ENTRY = 120  # pixels per legend entry
# Scores in [0, 1] that share one axis in a sweep plot; counts and VOI are left out.
UNIT_SCORES = (*SEMANTIC_COLUMNS, "ap75", "ap50", "accuracy75", "are")
_NOT_PARAMETERS = frozenset(
    {"run", "overrides", "best", "set", *SEMANTIC_COLUMNS, *INSTANCE_COLUMNS}
)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


# --- overlay ------------------------------------------------------------------------------


def grey(image: np.ndarray) -> np.ndarray:
    """A raw slice for display: uint8 (H, W). uint8 is kept; others stretch the 1-99 percentiles."""
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float32)
    lo, hi = np.percentile(values, (1, 99)) if values.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def outline(labels: np.ndarray) -> np.ndarray:
    """bool (H, W): labelled pixels with a 4-neighbour of another value (instance borders too)."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (labels != 0)


def instance_colours(ids: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): a bright colour per id from a hash of the id (stable across slices)."""
    h = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    channels = [(h >> np.uint64(shift)) & np.uint64(0xFF) for shift in (40, 48, 56)]
    return (64 + np.stack(channels, axis=-1) % 192).astype(np.uint8)


def _blend(rgb: np.ndarray, where: np.ndarray, colour: Any) -> None:
    rgb[where] = np.rint((1 - ALPHA) * rgb[where] + ALPHA * np.asarray(colour)).astype(np.uint8)


def to_voxel_aspect(image: np.ndarray, pixel_nm: Sequence[float] | None) -> np.ndarray:
    """``image`` (H, W, ...) repeated to square physical pixels: the axis with the larger pixel
    size (e.g. z of a 30 x 8 x 8 nm x section) is stretched by the ratio, nearest neighbour,
    to ``round(n * ratio)`` pixels; the finer axis keeps its pixels. Unchanged without a size.

    Args:
        pixel_nm: physical size of a pixel along H and W, or None.
    """
    if pixel_nm is None:
        return image
    finest = min(float(p) for p in pixel_nm)
    for axis, size in enumerate(pixel_nm):
        ratio = float(size) / finest
        n = image.shape[axis]
        if round(n * ratio) != n:
            index = np.minimum((np.arange(round(n * ratio)) / ratio).astype(np.intp), n - 1)
            image = np.take(image, index, axis=axis)
    return image


def _slice(volume: Any, index: int, axis: int) -> np.ndarray:
    key: list[Any] = [slice(None)] * 3
    key[axis] = index
    return np.asarray(volume[tuple(key)])


def error_panel(
    base: np.ndarray, truth: np.ndarray, instances: np.ndarray, errors: ObjectErrors
) -> np.ndarray:
    """uint8 (H, W, 3): each ground-truth object filled with the colour of its outcome
    (:data:`ERROR_COLOURS`), predicted objects outside the ground truth with theirs (false
    positives red), borders of predicted objects white (they show where a split cuts).

    Args:
        base: uint8 (H, W, 3) grey raw slice.
        truth, instances: (H, W) ground-truth and predicted ids of the slice.
        errors: :func:`mitoseg.evaluate.objects.classify_objects` of the whole volumes.
    """
    rgb = base.copy()
    truth_codes = errors.truth.codes_of(truth)
    codes = np.where(truth != 0, truth_codes, errors.pred.codes_of(instances))
    for code, name in enumerate(OUTCOMES):
        _blend(rgb, codes == code, ERROR_COLOURS[name])
    rgb[outline(instances)] = BORDER_COLOUR
    return rgb


def overlay_panels(
    raw: np.ndarray,
    truth: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    instances: np.ndarray | None = None,
    errors: ObjectErrors | None = None,
) -> list[tuple[str, np.ndarray]]:
    """The panels of one slice: (title, uint8 (H, W, 3)).

    Args:
        raw: (H, W) intensities.
        truth: (H, W) ground truth, mask or instance ids (non-zero is foreground): outlined.
        prediction: (H, W) predicted mask (non-zero is foreground): TP / FP / FN in colour
            when ``truth`` is given, else filled.
        instances: (H, W) instance ids: a colour per id.
        errors: the outcome of every object of ``truth`` and ``instances`` (both needed): one
            more panel, :func:`error_panel`.

    Returns:
        raw, then raw + each given overlay, in the order of the arguments.
    """
    base = np.repeat(grey(raw)[..., None], 3, axis=-1)
    panels = [("raw", base)]
    if truth is not None:
        rgb = base.copy()
        rgb[outline(truth)] = TRUTH_COLOUR
        panels.append(("ground truth", rgb))
    if prediction is not None:
        rgb, pred = base.copy(), prediction != 0
        if truth is None:
            _blend(rgb, pred, TP_COLOUR)
            panels.append(("prediction", rgb))
        else:
            fg = truth != 0
            _blend(rgb, pred & fg, TP_COLOUR)
            _blend(rgb, pred & ~fg, FP_COLOUR)
            _blend(rgb, ~pred & fg, FN_COLOUR)
            panels.append(("prediction: TP green, FP red, FN blue", rgb))
    if instances is not None:
        rgb, fg = base.copy(), instances != 0
        rgb[fg] = np.rint((1 - ALPHA) * rgb[fg] + ALPHA * instance_colours(instances[fg]))
        panels.append(("instances", rgb))
    if errors is not None and truth is not None and instances is not None:
        title = f"errors at IoU {errors.iou_threshold:g}"
        panels.append((title, error_panel(base, truth, instances, errors)))
    return panels


def _legend(fig: Figure, total_w: int, total_h: int, top: int) -> None:
    """The colours of the error panel, from ``top`` pixels down, wrapped to the width."""
    per_line = max(1, (total_w - GAP) // _LEGEND_ENTRY)
    for k, (outcome, label) in enumerate(ERROR_LEGEND):
        left = GAP + (k % per_line) * _LEGEND_ENTRY
        y = 1 - (top + (k // per_line) * HEADER + HEADER / 2) / total_h
        colour = tuple(c / 255 for c in ERROR_COLOURS[outcome])
        fig.text(left / total_w, y, "\u25a0", color=colour, fontsize=14, va="center")
        fig.text((left + 16) / total_w, y, label, fontsize=11, va="center", ha="left")


def legend_height(width: int) -> int:
    """Pixels of the error legend below panels ``width`` pixels wide in all."""
    per_line = max(1, (width - GAP) // _LEGEND_ENTRY)
    return -(-len(ERROR_LEGEND) // per_line) * HEADER + GAP


def overlay_png(
    path: str | Path,
    raw: Any,
    slices: Sequence[int],
    truth: Any | None = None,
    prediction: Any | None = None,
    instances: Any | None = None,
    axis: int = 0,
    errors: ObjectErrors | None = None,
    voxel_size_nm: Sequence[float] | None = None,
) -> Path:
    """Write a PNG with one row of panels per chosen slice (see :func:`overlay_panels`).

    Only the chosen slices are read. Panels are at full resolution: the PNG is
    ``n * W + (n + 1) * GAP`` pixels wide and ``rows * (HEADER + H + GAP) + GAP`` high, for
    ``n`` panels of ``H x W`` (the slice's shape, stretched to the voxel aspect ratio, see
    :func:`to_voxel_aspect`), plus the legend of the error panel (:func:`legend_height`) when
    there is one.

    Args:
        path: the PNG to write (atomically).
        raw: (Z, Y, X) array-like (numpy or zarr) of intensities.
        slices: indices along ``axis``.
        truth, prediction, instances: (Z, Y, X) array-likes shaped like ``raw``, or None.
        axis: 0 (z: y-x slices), 1 (y) or 2 (x).
        errors: the classification of ``truth`` and ``instances``: adds the error panel.
        voxel_size_nm: (z, y, x) nm of a voxel: x and y sections of anisotropic volumes are
            shown at their physical aspect ratio (30 x 8 x 8 nm: z stretched 3.75x); None:
            one pixel per voxel.

    Raises:
        ValueError: no slice, a slice out of range, a bad axis or a shape mismatch.
    """
    if axis not in (0, 1, 2) or len(raw.shape) != 3:
        raise ValueError(f"overlays need (Z, Y, X) raw and axis 0-2, got {raw.shape}, {axis}")
    others = {"truth": truth, "prediction": prediction, "instances": instances}
    for name, volume in others.items():
        if volume is not None and tuple(volume.shape) != tuple(raw.shape):
            raise ValueError(f"{name} has shape {tuple(volume.shape)}, raw {tuple(raw.shape)}")
    bad = [s for s in slices if not 0 <= s < raw.shape[axis]]
    if not slices or bad:
        raise ValueError(f"slices {list(slices)} must lie in [0, {raw.shape[axis]}) along {axis}")
    pixel_nm = None
    if voxel_size_nm is not None:
        pixel_nm = [float(v) for i, v in enumerate(voxel_size_nm) if i != axis]
    rows = []
    for index in slices:
        parts = {k: None if v is None else _slice(v, index, axis) for k, v in others.items()}
        panels = overlay_panels(_slice(raw, index, axis), **parts, errors=errors)
        rows.append([(title, to_voxel_aspect(rgb, pixel_nm)) for title, rgb in panels])
    height, width = rows[0][0][1].shape[:2]
    n = len(rows[0])
    total_w, panels_h = n * width + (n + 1) * GAP, len(rows) * (HEADER + height + GAP) + GAP
    legend = errors is not None and truth is not None and instances is not None
    total_h = panels_h + (legend_height(total_w) if legend else 0)
    fig = Figure(figsize=(total_w / _DPI, total_h / _DPI), dpi=_DPI, facecolor="white")
    name = "zyx"[axis]
    for r, (index, panels) in enumerate(zip(slices, rows, strict=True)):
        top = GAP + r * (HEADER + height + GAP)
        for c, (title, rgb) in enumerate(panels):
            left = GAP + c * (width + GAP)
            fig.figimage(rgb, xo=left, yo=total_h - top - HEADER - height, origin="upper")
            label = f"{title}  {name}={index}" if c == 0 else title
            y = 1 - (top + HEADER / 2) / total_h
            # Clipped to its own panel: narrow slices must not have titles run into the next.
            box = Bbox.from_bounds(left, total_h - top - HEADER, width, HEADER)
            text = fig.text(left / total_w, y, label, fontsize=11, va="center", ha="left")
            text.set_clip_box(box)
            text.set_clip_on(True)
    if legend:
        _legend(fig, total_w, total_h, panels_h)
    return _save(fig, path, dpi=_DPI)


# --- sweeps -------------------------------------------------------------------------------


def unit_score_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scores in [0, 1] (fg_iou ... or ap75 ...) with a value in some row, in display order;
    empty for runs without labels."""
    return [c for c in UNIT_SCORES if any(_number(r.get(c)) is not None for r in rows)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else number


def swept_parameters(rows: Sequence[Mapping[str, Any]], scores: Sequence[str]) -> list[str]:
    """Columns other than scores and run bookkeeping whose value differs between rows."""
    names = [k for k in rows[0] if k not in _NOT_PARAMETERS and k not in scores]
    return [
        k
        for k in names
        if not any(isinstance(r.get(k), list | dict) for r in rows)
        and len({repr(r.get(k)) for r in rows}) > 1
    ]


def _positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """x positions of ``values``: the numbers themselves, or 0, 1, ... for categories."""
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        return [float(n) for n in numbers], None  # type: ignore[arg-type]
    categories = list(dict.fromkeys(str(v) for v in values))
    return [float(categories.index(str(v))) for v in values], categories


def _draw(ax: Any, rows: Sequence[Mapping[str, Any]], x: str | None, y: str, label: str) -> None:
    xs_raw = [r.get(x) if x is not None else r.get("run", i) for i, r in enumerate(rows)]
    xs, categories = _positions(xs_raw)
    ys = [_number(r.get(y)) for r in rows]
    points = sorted((px, py) for px, py in zip(xs, ys, strict=True) if py is not None)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")


def sweep_plot(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    metric_columns: Sequence[str],
    x: str | None = None,
) -> Path:
    """Plot scores against the swept parameter(s) and write a PNG (atomically).

    One parameter varies: one axes, one line per score. Several vary: one axes per score,
    ``x`` on the horizontal axis and one line per combination of the others. None varies:
    scores per run.

    Args:
        path: the PNG to write.
        rows: one dict per run / parameter combination: parameters and scores (numbers; "" or
            NaN are skipped), e.g. the rows of ``sweep_summary.csv`` or of
            ``mitoseg.decode.run.sweep``.
        metric_columns: the scores to plot, e.g. ``unit_score_columns(rows)``.
        x: the parameter on the horizontal axis; None: the first that varies.

    Raises:
        ValueError: no rows, no score of ``metric_columns`` in them, or an unknown ``x``.
    """
    if not rows:
        raise ValueError("no sweep rows to plot")
    metrics = [m for m in metric_columns if any(_number(r.get(m)) is not None for r in rows)]
    if not metrics:
        raise ValueError(f"no values of {list(metric_columns)} in the sweep rows")
    varying = swept_parameters(rows, metrics)
    if x is not None and x not in rows[0]:
        raise ValueError(f"unknown sweep parameter {x!r}; columns: {list(rows[0])}")
    x = x if x is not None else (varying[0] if varying else None)
    others = [p for p in varying if p != x]
    if not others:
        fig = Figure(figsize=(6.5, 4.5))
        ax = fig.add_subplot()
        for metric in metrics:
            _draw(ax, rows, x, metric, metric)
        ax.set_ylabel("score")
        axes = [ax]
    else:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            key = ", ".join(f"{p}={row.get(p)}" for p in others)
            groups.setdefault(key, []).append(row)
        cols = min(3, len(metrics))
        fig = Figure(figsize=(4.5 * cols, 3.5 * -(-len(metrics) // cols)))
        axes = []
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(-(-len(metrics) // cols), cols, i + 1)
            for key, group in groups.items():
                _draw(ax, group, x, metric, key)
            ax.set_title(metric)
            axes.append(ax)
    for ax in axes:
        ax.set_xlabel(x if x is not None else "run")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=100)
