import numpy as np
import pytest
from scipy import ndimage

from mitoseg.decode.masks import BinarizeMedian, binarize, binary_median, decode_slabwise


@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_box_sum_median_equals_median_filter(size: int, density: float) -> None:
    rng = np.random.default_rng(size)
    mask = rng.random((13, 17, 11)) < density
    expected = ndimage.median_filter(mask.astype(np.uint8), size=size, mode="reflect") > 0
    np.testing.assert_array_equal(binary_median(mask, size), expected)


def test_median_size_must_be_odd() -> None:
    with pytest.raises(ValueError, match="odd"):
        binary_median(np.zeros((4, 4, 4), bool), 4)


def test_binarize_uint8_and_float_agree() -> None:
    probs = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 4, 8, 8)
    as_uint8 = np.rint(probs * 255).astype(np.uint8)
    for t in (0.3, 0.5, 0.8):
        np.testing.assert_array_equal(binarize(probs, t), binarize(as_uint8, t))
    with pytest.raises(ValueError):
        binarize(probs, 1.5)


@pytest.mark.parametrize("slab", [1, 4, 9, 40])
def test_slabwise_decoding_equals_whole_volume(slab: int) -> None:
    probs = np.random.default_rng(7).integers(0, 256, (1, 23, 12, 10), dtype=np.uint8)
    decoder = BinarizeMedian(0.45, 5)
    whole = decoder(probs)
    out = np.zeros(whole.shape, np.uint8)
    list(decode_slabwise(decoder, probs, out, slab=slab))
    np.testing.assert_array_equal(out.astype(bool), whole)
