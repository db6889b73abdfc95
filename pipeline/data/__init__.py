"""Data sources: the table contract, the synthetic generator, and image ingest.

``decode_images(df, size=..., mode=..., resize=...)`` decodes a DataFrame's encoded (PNG, JPEG,
...) ``image`` column into raw uint8 images for your own Spark jobs; ``decode_resize`` does one
image. See :mod:`pipeline.data.images`.
"""
from pipeline.data.images import BadImage, decode_images, decode_resize

__all__ = ["BadImage", "decode_images", "decode_resize"]
