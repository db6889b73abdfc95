"""The pure image decoder (pipeline.data.images) on real images: scikit-learn's digits and sample JPEGs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from pipeline.data import images as im
from tests.image_trees import digit_image, png_bytes

BILINEAR = Image.Resampling.BILINEAR


def sample_jpegs() -> list[bytes]:
    from sklearn.datasets import load_sample_images

    return [Path(f).read_bytes() for f in load_sample_images().filenames]


def pillow_reference(data: bytes, size: int, mode: str, resize: str) -> np.ndarray:
    """What Pillow itself gives for the same call (no alpha in these inputs)."""
    img = Image.open(io.BytesIO(data)).convert(mode)
    if resize == "pad":
        out = ImageOps.pad(img, (size, size), method=BILINEAR, color=0)
    elif resize == "crop":
        out = ImageOps.fit(img, (size, size), method=BILINEAR)
    else:
        out = img.resize((size, size), BILINEAR)
    return np.asarray(out)


@pytest.mark.parametrize("resize", im.RESIZES)
@pytest.mark.parametrize("mode", im.MODES)
def test_sample_jpegs_match_pillow(resize, mode):
    for data in sample_jpegs():
        got = im.decode_resize(data, 24, mode, resize)
        assert got.dtype == np.uint8
        assert got.shape == ((24, 24) if mode == "L" else (24, 24, 3))
        np.testing.assert_array_equal(got, pillow_reference(data, 24, mode, resize))


@pytest.mark.parametrize("resize", im.RESIZES)
def test_digit_pngs_of_odd_shapes_match_pillow(resize):
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (w, h) in enumerate([(8, 8), (80, 40), (13, 37), (40, 9)]):
        data = png_bytes(digit_image(d.images[i], w, h, "L"))
        np.testing.assert_array_equal(im.decode_resize(data, 16, "L", resize), pillow_reference(data, 16, "L", resize))


def test_pad_keeps_aspect_and_pads_with_black():
    data = png_bytes(Image.new("L", (40, 10), 200))
    out = im.decode_resize(data, 16, "L", "pad")
    assert (out[:6] == 0).all() and (out[-6:] == 0).all()          # 16x4 band in the middle
    assert (out[7:9] == 200).all()
    assert (im.decode_resize(data, 16, "L", "crop") == 200).all()   # centre square: all image
    assert (im.decode_resize(data, 16, "L", "stretch") == 200).all()


def test_transparent_pixels_become_black_and_rgb_has_three_channels():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 255                        # white everywhere ...
    rgba[:, 5:, 3] = 255                       # ... but opaque only on the right half
    data = png_bytes(Image.fromarray(rgba, "RGBA"))
    out = im.decode_resize(data, 10, "L", "stretch")
    assert (out[:, :5] == 0).all() and (out[:, 5:] == 255).all()
    rgb = im.decode_resize(data, 10, "RGB", "stretch")
    assert rgb.shape == (10, 10, 3) and (rgb[:, 5:] == 255).all()


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits():
    arr = np.full((6, 6), 65535, np.uint16)
    arr[:3] = 0
    data = png_bytes(Image.fromarray(arr))
    out = im.decode_resize(data, 6, "L", "stretch")
    assert (out[:3] == 0).all() and (out[3:] == 255).all()


@pytest.mark.parametrize("data, reason", [
    (None, im.MISSING),
    (b"", im.EMPTY),
    (b"these are not pixels", im.NOT_AN_IMAGE),
    (png_bytes(Image.new("L", (1, 9), 3)), im.TOO_SMALL),
])
def test_bad_inputs_raise_with_a_reason(data, reason):
    with pytest.raises(im.BadImage) as e:
        im.decode_resize(data, 8, "L", "pad", min_size=2)
    assert e.value.reason == reason


def test_truncated_png_and_jpeg_are_corrupt():
    png = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60), np.uint8)))
    for data in (png[: len(png) // 2], sample_jpegs()[0][:5000]):
        with pytest.raises(im.BadImage) as e:
            im.decode_resize(data, 8)
        assert e.value.reason == im.CORRUPT


def test_decode_batch_keeps_columns_and_a_reason_already_set():
    good = png_bytes(Image.new("L", (5, 3), 9))
    batch = pa.RecordBatch.from_pydict({
        "id": [1, 2, 3], "image": [good, b"junk", good], "reason": [None, None, "not in a class folder"]})
    out = im.decode_batch(batch, 4, "L", "pad").to_pydict()
    assert out["id"] == [1, 2, 3]
    assert out["reason"] == [None, im.NOT_AN_IMAGE, "not in a class folder"]
    assert len(out["image"][0]) == 16 and out["image"][1] is None and out["image"][2] is None
    assert (out["width"][0], out["height"][0]) == (5, 3)
    assert out["sha1"][0] == out["sha1"][2] != out["sha1"][1]


def test_bad_options_are_refused():
    for kw in ({"size": 0}, {"mode": "CMYK"}, {"resize": "squash"}):
        with pytest.raises(ValueError):
            im.check_options(**{"size": 8, "mode": "L", "resize": "pad", **kw})
