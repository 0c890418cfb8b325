"""Per-slab normalisation of raw images and label masks to what we store."""

from __future__ import annotations

import numpy as np

from mitoseg.io.errors import VolumeError

UINT32_MAX = 2**32 - 1
# ITU-R 601-2 luma, the weights PIL uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def describe_values(values: np.ndarray, limit: int = 8) -> str:
    """Short text listing the distinct values of ``values`` (for error messages)."""
    uniq = np.unique(values)
    text = ", ".join(str(v) for v in uniq[:limit].tolist())
    return f"{{{text}{', ...' if uniq.size > limit else ''}}} ({uniq.size} distinct)"


def _split_channels(slab: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split ``(N, Y, X, C)`` into colour ``(N, Y, X, C')`` and optional alpha ``(N, Y, X)``."""
    n_channels = slab.shape[-1]
    if n_channels in (1, 3):
        return slab, None
    if n_channels in (2, 4):
        return slab[..., :-1], slab[..., -1]
    raise VolumeError(f"cannot interpret {n_channels} channels per pixel (shape {slab.shape})")


def raw_to_grey(slab: np.ndarray) -> np.ndarray:
    """Reduce colour raw slices to one grey channel.

    Args:
        slab: ``(N, Y, X)`` any dtype, or ``(N, Y, X, C)`` with C in 1..4 (grey, grey+alpha,
            RGB, RGBA); alpha is dropped.

    Returns:
        ``(N, Y, X)`` with the input dtype; RGB becomes ITU-R 601 luminance, rounded.
    """
    if slab.ndim == 3:
        return slab
    colour, _ = _split_channels(slab)
    if colour.shape[-1] == 1:
        return colour[..., 0]
    out = np.empty(slab.shape[:3], dtype=slab.dtype)
    for i in range(slab.shape[0]):  # per slice: a float copy of a whole slab is large
        luma = colour[i].astype(np.float32) @ _LUMA
        if np.issubdtype(slab.dtype, np.integer):
            luma = np.rint(luma)
        out[i] = luma
    return out


def normalize_raw(slab: np.ndarray) -> np.ndarray:
    """Convert a raw slab to its stored dtype.

    Args:
        slab: ``(N, Y, X)`` or ``(N, Y, X, C)``.

    Returns:
        ``(N, Y, X)``: uint8 and other integer types unchanged, bool as uint8 {0, 255},
        floats as float32.

    Raises:
        VolumeError: float values hold NaN or inf.
    """
    slab = raw_to_grey(slab)
    if slab.dtype == bool:
        return slab.astype(np.uint8) * np.uint8(255)
    if slab.dtype.kind == "f":
        if not np.isfinite(slab).all():
            raise VolumeError("raw values hold NaN or inf")
        return slab.astype(np.float32, copy=False)
    if slab.dtype.kind not in "iu":
        raise VolumeError(f"unsupported raw dtype {slab.dtype}")
    return slab


def _constant(image: np.ndarray) -> bool:
    return bool(np.all(image == image[:1, :1]))


# A colour mask may be anti-aliased (shades of one colour); two colours that each cover at least
# this share of the coloured pixels are two classes, which a mask cannot tell apart.
CLASS_COLOUR_SHARE = 0.02


def _check_one_colour(seen: np.ndarray, where: str) -> None:
    """Refuse colour labels holding two or more colours (classes coded by colour, e.g. red
    mitochondria and green ER), which would all become foreground. Shades of one colour (an
    anti-aliased or shaded mask) count as one: colours are compared by their direction
    (channels over the largest channel, in steps of 1/4)."""
    coloured = seen[np.any(seen != 0, axis=-1)].astype(np.float32)
    if coloured.shape[0] == 0:
        return
    direction = np.rint(4 * coloured / coloured.max(axis=-1, keepdims=True)).astype(np.uint8)
    kinds, first, counts = np.unique(direction, axis=0, return_index=True, return_counts=True)
    major = counts >= CLASS_COLOUR_SHARE * coloured.shape[0]
    if np.count_nonzero(major) < 2:
        return
    order = np.argsort(-counts)[: min(6, len(counts))]
    shown = ", ".join(
        f"{tuple(int(c) for c in coloured[first[i]])}: {int(counts[i])} px" for i in order
    )
    raise VolumeError(
        f"{where} holds {np.count_nonzero(major)} colours ({shown}): classes coded by colour "
        "cannot be told apart as one mask. Save the class you want as a grey or black-and-white "
        "mask (or as grey class codes and pick it with --label-values)"
    )


def _colour_value(colour: np.ndarray, visible: np.ndarray | None, where: str) -> np.ndarray:
    """Label value of ``(Y, X, C)`` colour pixels: the grey level when every ``visible`` pixel
    has equal channels, else 255 where any channel is non-zero (shades of one colour; several
    colours are refused, see :func:`_check_one_colour`)."""
    if colour.shape[-1] == 1:
        return colour[..., 0]
    seen = colour if visible is None else colour[visible]
    if np.all(seen == seen[..., :1]):
        return colour[..., 0]
    _check_one_colour(seen.reshape(-1, seen.shape[-1]), where)
    return np.where(np.any(colour != 0, axis=-1), 255, 0).astype(colour.dtype)


def labels_to_grey_slices(slab: np.ndarray, where: str = "labels", z0: int = 0) -> np.ndarray:
    """Collapse colour label slices to one value per pixel, as a grey label image would hold.

    A channel that is constant over a slice carries no information and is ignored, so per slice:
    without alpha or with constant (e.g. opaque) alpha, the colour decides: grey pixels (equal
    channels, e.g. class codes or an anti-aliased mask saved as RGB) keep their grey value, and
    other colours become 255 where any channel is non-zero (shades of one colour are foreground;
    two or more colours are refused as classes coded by colour); with
    varying alpha and constant colour (e.g. black paint on a transparent layer), the value is
    the alpha; when both vary, transparent pixels are 0 and the others take their colour's value.
    So a folder mixing grey, RGB and RGBA slices of one mask gives the same values throughout.

    Args:
        slab: ``(N, Y, X, C)`` with C in 1..4 (grey, grey+alpha, RGB, RGBA).
        where: the labels' name, and ``z0`` the z of ``slab[0]``, for error messages.

    Returns:
        ``(N, Y, X)`` with the input dtype.
    """
    colour, alpha = _split_channels(slab)
    out = np.empty(slab.shape[:3], dtype=slab.dtype)
    for i in range(slab.shape[0]):
        varying = None if alpha is None or _constant(alpha[i]) else alpha[i]
        if varying is None:
            out[i] = _colour_value(colour[i], None, f"{where}, slice z={z0 + i},")
        elif _constant(colour[i]):
            out[i] = varying
        else:
            visible = varying != 0
            value = _colour_value(colour[i], visible, f"{where}, slice z={z0 + i},")
            out[i] = np.where(visible, value, 0)
    return out


def binary_encoding(slab: np.ndarray) -> int | None:
    """Foreground value of a binary mask: 1 or 255, 0 if all zero, None if not binary."""
    top = slab.max() if slab.size else 0
    if top == 0:
        return 0
    if top not in (1, 255):
        return None
    # Two counts per slice, not one (slab != 0) & (slab != top) over the slab: temporaries
    # stay the size of one slice.
    slices = slab if slab.ndim > 2 else [slab]
    n_binary = sum(np.count_nonzero(s == 0) + np.count_nonzero(s == top) for s in slices)
    return int(top) if n_binary == slab.size else None


def instance_dtype(max_value: int) -> np.dtype:
    """uint32, or uint64 when ``max_value`` does not fit in uint32."""
    return np.dtype(np.uint64 if max_value > UINT32_MAX else np.uint32)


def _check_label_values(slab: np.ndarray) -> np.ndarray:
    if slab.dtype == bool:
        return slab.view(np.uint8)
    if slab.dtype.kind == "f":
        if not np.isfinite(slab).all():
            raise VolumeError("labels hold NaN or inf values")
        if not np.array_equal(slab, np.floor(slab)):
            raise VolumeError("float labels hold non-integer values")
    elif slab.dtype.kind not in "iu":
        raise VolumeError(f"unsupported label dtype {slab.dtype}")
    if slab.size and slab.min() < 0:
        raise VolumeError(f"labels hold negative values (min {slab.min()})")
    return slab


def normalize_labels(slab: np.ndarray, *, binary: bool | None) -> np.ndarray:
    """Store-ready labels: a binary mask as {0, 1}, otherwise instance ids.

    Args:
        slab: labels without a colour axis, any shape (e.g. ``(N, Y, X)``), integer, bool or
            integral float, non-negative. Collapse colour masks first with
            :func:`labels_to_grey_slices`.
        binary: None decides from the values: a subset of {0, 255} or of {0, 1} is a binary
            mask. True requires a binary mask; False keeps values as instance ids.

    Returns:
        Same shape: uint8 {0, 1} for a mask; instance ids as uint32, or uint64 when the
        largest id exceeds 2**32 - 1.

    Raises:
        VolumeError: negative, NaN or non-integer values; ``binary=True`` but not a binary mask.
    """
    slab = _check_label_values(np.asarray(slab))
    encoding = binary_encoding(slab)
    if binary is None:
        binary = encoding is not None
    if binary:
        if encoding is None:
            raise VolumeError(
                f"labels are not a binary mask ({{0, 1}} or {{0, 255}}): values "
                f"{describe_values(slab)}"
            )
        return (slab != 0).view(np.uint8)
    top = int(slab.max()) if slab.size else 0
    return slab.astype(instance_dtype(top), copy=False)


def to_float(raw: np.ndarray) -> np.ndarray:
    """Scale integer raw data to float32 [0, 1] by its dtype's range; floats pass through."""
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
    return raw.astype(np.float32)
