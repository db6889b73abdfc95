"""The one image decoder: encoded bytes (PNG, JPEG, ...) → a fixed-size uint8 array.

Both ways encoded images enter the pipeline use it: folders of image files (``imbalance ingest``,
:mod:`pipeline.data.ingest`) and Parquet tables whose ``image`` column holds PNG/JPEG bytes (the
split stage). Three layers, each usable on its own:

``decode_resize(data, size, mode, resize)``
    pure function on one image's bytes; raises :class:`BadImage` with a short reason.
``decode_batch(batch, ...)``
    the same over an Arrow record batch (what Spark's ``mapInArrow`` hands an executor): adds
    ``image`` (raw bytes of size×size(×3)), ``width``, ``height`` (of the original), ``sha1`` (of the
    encoded bytes) and ``reason`` (null when the image decoded). ``decode_values`` does the same
    on a plain list of bytes (``imbalance ingest`` uses it on the files its workers read).
``decode_images(df, ...)``
    DataFrame in, ``(images_df, rejected_df)`` out, for your own Spark jobs.

Resizing (``resize``), always to ``size`` × ``size`` with bilinear interpolation (Pillow's):

``pad`` (default)
    keep the aspect ratio: scale the longer side to ``size`` and centre the image on a black
    square (Pillow's ``ImageOps.pad``). Nothing is cut off and shapes are not distorted, which
    matters for plankton, whose aspect ratio is part of what tells classes apart.
``crop``
    keep the aspect ratio: scale the shorter side to ``size`` and cut the centre square
    (``ImageOps.fit``). Fills the frame; loses the ends of long images.
``stretch``
    scale each side to ``size`` independently (``Image.resize``): distorts the aspect ratio.

Colour (``mode``): ``L`` (greyscale, 1 byte per pixel, Pillow's ITU-R 601-2 luma) or ``RGB`` (3
bytes per pixel, row-major H×W×C). Transparent pixels are composited onto black first; 16-bit
greyscale is scaled to 8 bits; of an animated or multi-page file the first frame is used.
"""
from __future__ import annotations

import hashlib
import io
import typing
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from pipeline.config import DataSection, ImageMode, Resize

MIN_SIZE = DataSection().min_size   # the default of data.min_size, the CLI's --min-size and every function here

MODES = typing.get_args(ImageMode)
RESIZES = typing.get_args(Resize)
EXTENSIONS = ("png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp")

# rejection reasons (the ``reason`` column of rejected/)
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
TOO_SMALL = "image smaller than the minimum size"
TOO_LARGE = "image too large (decompression bomb guard)"
MISSING = "missing image"


class BadImage(ValueError):
    """An image that cannot be used; ``reason`` is one of the reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def check_options(size: int, mode: str, resize: str, min_size: int = MIN_SIZE) -> None:
    """Validate decode options (``ValueError`` naming the bad one)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {', '.join(MODES)}, got {mode!r}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"minimum image size must be a positive integer, got {min_size!r}")


def image_shape(size: int, mode: str) -> list:
    """The ``_dataset.json`` image shape of decoded images: [size, size] or [size, size, 3]."""
    return [size, size] if mode == "L" else [size, size, 3]


def open_image(data: Optional[bytes], mode: str = "L", min_size: int = MIN_SIZE):
    """Decode ``data`` fully into a Pillow image in ``mode``; :class:`BadImage` if it cannot be used."""
    # deferred: Pillow is only needed where images are decoded (executors), not to import the package
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise BadImage(MISSING)
    if len(data) == 0:
        raise BadImage(EMPTY)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError as e:
        raise BadImage(TOO_LARGE, str(e)[:80]) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken headers
        raise BadImage(CORRUPT, str(e)[:80]) from None
    w, h = img.size
    if w < min_size or h < min_size:
        raise BadImage(TOO_SMALL, f"{w}x{h} < {min_size}")
    try:
        img.load()  # the whole file: a truncated PNG/JPEG fails here, not at open()
    except Image.DecompressionBombError as e:
        raise BadImage(TOO_LARGE, str(e)[:80]) from None
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, zlib.error ...
        raise BadImage(CORRUPT, str(e)[:80]) from None
    return _to_mode(img, mode)


def _to_mode(img, mode: str):
    """Convert to ``L``/``RGB``: alpha composited onto black, 16-bit and float greyscale scaled to 8 bits."""
    from PIL import Image  # deferred: Pillow is heavy

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return img if img.mode == mode else img.convert(mode)


def resize_image(img, size: int, resize: str = "pad"):
    """Resize a Pillow image to ``size`` × ``size`` by ``resize`` (pad | crop | stretch), bilinear."""
    from PIL import Image, ImageOps  # deferred: Pillow is heavy

    method = Image.Resampling.BILINEAR
    if resize == "pad":
        return ImageOps.pad(img, (size, size), method=method, color=0)
    if resize == "crop":
        return ImageOps.fit(img, (size, size), method=method)
    if resize == "stretch":
        return img.resize((size, size), method)
    raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")


def decode_resize(data: Optional[bytes], size: int = 32, mode: str = "L", resize: str = "pad",
                  min_size: int = MIN_SIZE) -> np.ndarray:
    """Decode encoded image bytes and resize them: uint8 array (size, size) for L, (size, size, 3) for RGB.

    Raises :class:`BadImage` (``.reason``) for a missing or empty value, bytes that are not an
    image, a truncated or corrupt file, or an image with a side below ``min_size`` pixels.
    """
    return np.asarray(resize_image(open_image(data, mode, min_size), size, resize), dtype=np.uint8)


def decode_with_size(data: Optional[bytes], size: int, mode: str, resize: str,
                     min_size: int = MIN_SIZE) -> tuple[np.ndarray, int, int]:
    """:func:`decode_resize` plus the original (width, height)."""
    img = open_image(data, mode, min_size)
    w, h = img.size
    return np.asarray(resize_image(img, size, resize), dtype=np.uint8), w, h


# ---------------------------------------------------------------- Arrow batches (executors)
DECODED_FIELDS = [("image", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                  ("sha1", pa.string()), ("reason", pa.string())]


def output_schema(schema: pa.Schema, image_col: str = "image", drop: tuple = ()) -> pa.Schema:
    """Schema of :func:`decode_batch`'s output for an input ``schema``."""
    new = {name for name, _ in DECODED_FIELDS}
    keep = [f for f in schema if f.name != image_col and f.name not in new and f.name not in drop]
    return pa.schema(keep + [pa.field(n, t) for n, t in DECODED_FIELDS])


def decode_batch(batch: pa.RecordBatch, size: int, mode: str, resize: str, min_size: int = MIN_SIZE, *,
                 image_col: str = "image", drop: tuple = ()) -> pa.RecordBatch:
    """Decode the encoded ``image_col`` of an Arrow batch (see the module docstring for the columns).

    A ``reason`` already set in the input (e.g. "no class folder") is kept and the row is not
    decoded. Columns in ``drop`` are left out of the output. Bad rows get a null ``image``.
    """
    names = batch.schema.names
    data = batch.column(names.index(image_col)).to_pylist()
    pre = batch.column(names.index("reason")).to_pylist() if "reason" in names else [None] * len(data)
    schema = output_schema(batch.schema, image_col, drop)
    cols = [batch.column(names.index(f.name)) for f in schema if f.name in names and f.name not in
            {n for n, _ in DECODED_FIELDS}]
    return pa.RecordBatch.from_arrays(cols + decode_values(data, pre, size, mode, resize, min_size), schema=schema)


def decode_values(data: list, pre: list, size: int, mode: str, resize: str, min_size: int = MIN_SIZE) -> list:
    """The decoded columns (``DECODED_FIELDS``, as Arrow arrays) of encoded ``data`` (bytes or None).

    ``pre``: a reason already known for each value (None to decode it); such values are not
    decoded but still get their ``sha1``.
    """
    images, widths, heights, digests, reasons = [], [], [], [], []
    for raw, why in zip(data, pre):
        digests.append(hashlib.sha1(raw).hexdigest() if raw is not None else None)
        if why is None:
            try:
                arr, w, h = decode_with_size(raw, size, mode, resize, min_size)
                images.append(arr.tobytes())
                widths.append(w)
                heights.append(h)
                reasons.append(None)
                continue
            except BadImage as e:
                why = e.reason
        images.append(None)
        widths.append(None)
        heights.append(None)
        reasons.append(why)
    return [pa.array(images, pa.binary()), pa.array(widths, pa.int32()), pa.array(heights, pa.int32()),
            pa.array(digests, pa.string()), pa.array(reasons, pa.string())]


def decode_batches(size: int, mode: str, resize: str, min_size: int = MIN_SIZE, image_col: str = "image",
                   drop: tuple = ()):
    """A ``mapInArrow`` function: :func:`decode_batch` over every batch of a partition."""
    check_options(size, mode, resize, min_size)

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield decode_batch(b, size, mode, resize, min_size, image_col=image_col, drop=drop)
    return fn


# ---------------------------------------------------------------- DataFrames (library API)
def decoded_frame(df, size: int = 32, mode: str = "L", resize: str = "pad", min_size: int = MIN_SIZE, *,
                  image_col: str = "image", drop: tuple = ()):
    """``df`` with ``image_col`` decoded in place, plus ``width``, ``height``, ``sha1``, ``reason``.

    One pass on the executors (``mapInArrow``); nothing reaches the driver. Rows that did not
    decode keep their other columns, with a null image and the reason.
    """
    # deferred: pyspark is heavy and only needed with a DataFrame
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    if image_col not in df.columns:
        raise ValueError(f"no '{image_col}' column (columns: {', '.join(df.columns)})")
    check_options(size, mode, resize, min_size)
    arrow_in = to_arrow_schema(df.schema)
    out = from_arrow_schema(output_schema(arrow_in, image_col, drop))
    return df.mapInArrow(decode_batches(size, mode, resize, min_size, image_col, drop), out)


def decode_images(df, size: int = 32, mode: str = "L", resize: str = "pad", min_size: int = MIN_SIZE,
                  image_col: str = "image"):
    """Decode and resize a DataFrame's encoded images: ``(images_df, rejected_df)``.

    ``images_df``: the input's columns with ``image_col`` replaced by raw uint8 bytes of
    ``size`` × ``size`` (× 3 for RGB), plus the original ``width`` and ``height`` and the ``sha1``
    of the encoded bytes. ``rejected_df``: the rows that did not decode, without the image, with a
    ``reason``. Both come from one lazy frame: persist it (or write both in one job, as
    ``imbalance ingest`` does) if you use both, or the images are decoded twice.

    >>> images, rejected = decode_images(spark.read.parquet("lake/encoded"), size=64, mode="RGB")
    """
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    dec = decoded_frame(df, size, mode, resize, min_size, image_col=image_col)
    images = dec.where(F.col("reason").isNull()).drop("reason").withColumnRenamed("image", image_col)
    rejected = dec.where(F.col("reason").isNotNull()).drop("image", "width", "height")
    return images, rejected
