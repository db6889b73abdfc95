"""Image folder trees from real images for the ingest tests: scikit-learn's bundled digits.

``write_digits_tree`` writes ``<root>/<digit>/<n>.png`` at random sizes (8×8 up to 80×40), some
RGB, some with an alpha channel, plus planted bad files, and returns what a correct ingest must
produce: every good file's label and every bad file's reason.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.data import images as im
from pipeline.data.ingest import NO_CLASS_FOLDER

BAD = {  # relative path -> reason
    "3/truncated.png": im.CORRUPT,
    "4/notes.png": im.NOT_AN_IMAGE,
    "5/empty.png": im.EMPTY,
    "6/speck.png": im.TOO_SMALL,
    "stray.png": NO_CLASS_FOLDER,
}


def digit_image(pixels: np.ndarray, w: int, h: int, kind: str):
    """One 8×8 digit (0..16) as a Pillow image of w×h in ``kind`` (L, RGB, LA, RGBA)."""
    from PIL import Image

    g = Image.fromarray(np.clip(np.rint(pixels * (255 / 16)), 0, 255).astype(np.uint8), "L")
    g = g.resize((w, h), Image.Resampling.BILINEAR)
    if kind == "L":
        return g
    if kind == "RGB":
        a = np.asarray(g)
        return Image.fromarray(np.stack([a, (a * 0.8).astype(np.uint8), 255 - a], -1), "RGB")
    alpha = Image.fromarray(np.where(np.asarray(g) > 40, 255, 0).astype(np.uint8), "L")
    if kind == "LA":
        return Image.merge("LA", (g, alpha))
    return Image.merge("RGBA", (g, g, g, alpha))


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_digits_tree(root: Path, per_class: int | None = None, seed: int = 0, bad: bool = True,
                      start: int = 0) -> dict:
    """Write digits ``start..`` (``per_class`` per class, default all) under ``root``.

    Returns ``{"good": {rel_path: label}, "bad": {rel_path: reason}}``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed + start)
    root = Path(root)
    good = {}
    seen = {c: 0 for c in range(10)}
    for i in range(start, len(d.target)):
        c = int(d.target[i])
        if per_class is not None and seen[c] >= per_class:
            continue
        seen[c] += 1
        w, h = int(rng.integers(8, 81)), int(rng.integers(8, 41))
        kind = ["L", "L", "L", "RGB", "LA", "RGBA"][i % 6]
        rel = f"{c}/img_{i:04d}.png"
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(digit_image(d.images[i], w, h, kind)))
        good[rel] = str(c)
    out = {"good": good, "bad": {}}
    if bad:
        full = png_bytes(digit_image(d.images[0], 60, 40, "L"))
        (root / "3" / "truncated.png").write_bytes(full[: len(full) // 2])
        (root / "4" / "notes.png").write_text("these are not pixels\n")
        (root / "5" / "empty.png").write_bytes(b"")
        (root / "6" / "speck.png").write_bytes(png_bytes(digit_image(d.images[1], 1, 5, "L")))
        (root / "stray.png").write_bytes(png_bytes(digit_image(d.images[2], 20, 20, "L")))
        out["bad"] = dict(BAD)
    return out
