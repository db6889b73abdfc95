"""Synthetic class-imbalanced data generated in parallel by Spark (never on the driver).

Presets
-------
``plankton``
    The shape reported for WHOI-Plankton (survey, Lee et al. and Table 18): 103 classes, the
    largest 2.3M of 3.4M rows, the five largest ~90% of rows, the 5th largest ~1.3%, the smallest
    ~3,500 (ρ = max/min ≈ 650). The same proportions at any ``rows``. Each row carries a 32×32
    grayscale image (raw uint8 bytes, shape in ``_dataset.json``) drawn procedurally from a
    class-specific shape, orientation, aspect and texture, with per-image jitter of position,
    scale and rotation plus noise. Classes come in families that share a shape and differ only in
    orientation/texture, so neighbouring rare classes overlap and are genuinely hard.
``plankton_balanced``
    The plankton images with every one of the 103 classes equally large: the balanced source of
    Buda et al.'s protocol — draw a balanced test set first, then impose the imbalance on the
    training and validation splits only (``data.protocol`` with ``data.protocol_scope: train``).
``digits``
    Not synthetic: scikit-learn's bundled handwritten digits (``load_digits``: 1,797 8×8 images,
    10 balanced classes, no download), as raw uint8 images (0..16 scaled to 0..255). ``rows`` is
    ignored. Impose the survey's step/linear protocols on it (``data.protocol``) as Buda et al. did.
``tabular``
    ``features`` arrays (16 dims) from overlapping class-conditional Gaussians, 10 classes with
    geometric imbalance ρ = 100: fast to train on, for tests.
``rare``
    A fraud-shaped binary table: ``features`` arrays (``features`` dims, default 32), exactly
    round(rows · ``positive_rate``) positives (default 0.1%) from several sub-populations (easy,
    overlapping, a rare group), a mixture majority, label noise, heavy-tailed and nuisance columns,
    exact and near duplicates. See :mod:`pipeline.data.synth_rare`.

Class counts are exact: fractions × rows rounded by largest remainder (each class at least one
row). Row ``i`` gets its class from an affine permutation of ``0..rows-1``, so every file holds
a mix of classes, and its pixels from a generator seeded by (seed, partition), so a dataset is
fully determined by (preset, rows, seed, partitions).

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* M. Buda, A. Maki, M. A. Mazurowski, "A systematic study of the class imbalance problem in
  convolutional neural networks", Neural Networks 106 (2018),
  https://doi.org/10.1016/j.neunet.2018.07.011
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import io
import math
import os
import typing
from typing import Iterator

import numpy as np
import pandas as pd

from pipeline.config import SynthPreset
from pipeline.data.schema import DatasetInfo, write_info
from pipeline.data.synth_rare import check_rare_args, rare_batches, rare_params
from pipeline.data.synth_rows import coprime_step, exact_counts, labels_for
from pipeline.errors import InputError
from pipeline.io import atomic_dir, local_path, spark_uri

PLANKTON_CLASSES = 103
PLANKTON_ROWS = 3_400_000
IMAGE_SIDE = 32
TABULAR_CLASSES = 10
TABULAR_DIM = 16
#: Every synth preset and what it makes: (kind, classes); kind is "image" or "features".
PRESET_KINDS = {"plankton": ("image", PLANKTON_CLASSES), "plankton_balanced": ("image", PLANKTON_CLASSES),
                "tabular": ("features", TABULAR_CLASSES), "digits": ("image", 10), "rare": ("features", 2)}
#: The presets, in the order ``data.synth_preset``'s type (:data:`pipeline.config.SynthPreset`) names them.
PRESETS = typing.get_args(SynthPreset)
if set(PRESET_KINDS) != set(PRESETS):
    raise ImportError(f"synth presets {sorted(PRESET_KINDS)} differ from pipeline.config.SynthPreset {PRESETS}")


def plankton_fractions() -> np.ndarray:
    """Class fractions of the plankton preset, largest first (sum 1).

    Five head classes 2.3M, 400k, 200k, 105.6k, 44.2k of 3.4M (67.6%, 11.8%, 5.9%, 3.1%, 1.3%:
    ~89.7% together); 98 tail classes from 3,900 down to 2.3M/650 ≈ 3,538 rows, log-spaced.
    """
    head = np.array([2_300_000, 400_000, 200_000, 105_600, 44_200], dtype=float)
    tail = np.geomspace(3_900, 2_300_000 / 650, PLANKTON_CLASSES - 5)
    counts = np.concatenate([head, tail])
    return counts / counts.sum()


def tabular_fractions(n_classes: int = TABULAR_CLASSES, rho: float = 100.0) -> np.ndarray:
    """Geometric imbalance: class c has size ∝ rho^(-c/(C-1))."""
    sizes = rho ** (-np.arange(n_classes) / (n_classes - 1))
    return sizes / sizes.sum()


def plankton_class_counts(rows: int = PLANKTON_ROWS) -> np.ndarray:
    """Exact per-class row counts of the plankton preset at ``rows`` rows, largest first."""
    return exact_counts(plankton_fractions(), rows)


# ---------------------------------------------------------------- plankton images
def _class_params(n_classes: int, seed: int) -> dict:
    """Per-class drawing parameters: shape family, orientation, aspect, texture, size."""
    rng = np.random.default_rng(10_000 + seed)
    shapes = np.arange(n_classes) % 8                  # 8 shape families
    variant = np.arange(n_classes) // 8                # ~13 variants per family
    angle = (variant * 0.42 + rng.uniform(0, 0.3, n_classes)) % np.pi
    aspect = 0.45 + 0.5 * ((variant * 0.37) % 1.0)
    freq = 0.6 + 1.6 * rng.random(n_classes)
    size = 7.0 + 4.0 * rng.random(n_classes)
    return dict(shape=shapes, angle=angle, aspect=aspect, freq=freq, size=size)


def draw_images(labels: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    """Vectorised procedural 32×32 uint8 images for ``labels`` (N,) → (N, 32, 32)."""
    n = len(labels)
    s = IMAGE_SIDE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy = yy[None] - (s - 1) / 2
    xx = xx[None] - (s - 1) / 2
    theta = (params["angle"][labels] + rng.normal(0, 0.35, n)).astype(np.float32)[:, None, None]
    scale = (params["size"][labels] * rng.uniform(0.75, 1.25, n)).astype(np.float32)[:, None, None]
    aspect = params["aspect"][labels].astype(np.float32)[:, None, None]
    dx = rng.normal(0, 2.0, n).astype(np.float32)[:, None, None]
    dy = rng.normal(0, 2.0, n).astype(np.float32)[:, None, None]
    c, si = np.cos(theta), np.sin(theta)
    u = ((xx - dx) * c + (yy - dy) * si) / scale
    v = (-(xx - dx) * si + (yy - dy) * c) / (scale * aspect)
    shape = params["shape"][labels]
    mask = np.zeros((n, s, s), dtype=bool)
    for k in range(8):
        idx = np.nonzero(shape == k)[0]
        if len(idx):
            mask[idx] = _shape_mask(k, u[idx], v[idx])
    texture = 0.5 + 0.5 * np.sin(params["freq"][labels].astype(np.float32)[:, None, None] * 3.0 * u
                                 + rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None])
    intensity = rng.uniform(0.55, 1.0, n).astype(np.float32)[:, None, None]
    img = mask * (0.45 + 0.55 * texture) * intensity
    img = img + (rng.standard_normal((n, s, s), dtype=np.float32) * 0.10 + 0.12)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _shape_mask(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of shape family ``k`` in rotated, scaled coordinates (u, v)."""
    if k == 0:                                            # ellipse
        return u * u + v * v < 1.0
    if k == 1:                                            # ring
        return np.abs(np.sqrt(u * u + v * v) - 0.8) < 0.22
    if k == 2:                                            # rectangle
        return (np.abs(u) < 1.0) & (np.abs(v) < 1.0)
    if k == 3:                                            # cross
        return ((np.abs(u) < 1.1) & (np.abs(v) < 0.25)) | ((np.abs(v) < 1.1) & (np.abs(u) < 0.25))
    if k == 4:                                            # rod
        return (np.abs(v) < 0.3) & (np.abs(u) < 1.4)
    if k == 5:                                            # triangle
        return (v > -0.8) & (np.abs(u) < (v + 0.8) * 0.6) & (v < 1.0)
    if k == 6:                                            # three-lobed star
        return (u * u + v * v < 1.0) & (np.cos(3 * np.arctan2(v, u)) > 0)
    return np.abs(u) + np.abs(v) < 1.1                    # diamond


def _row_batches(rows: int, seed: int, cum: np.ndarray, step: int, payload):
    """mapInArrow function: id batches → (id, label, payload columns); ``payload(labels, rng) -> dict``
    of Arrow arrays built straight from NumPy buffers (no Python object per row)."""
    def gen(batches: Iterator) -> Iterator:
        # deferred: pyarrow is slow to import
        import pyarrow as pa

        for batch in batches:
            ids = batch.column("id").to_numpy()
            if len(ids) == 0:
                continue
            labels = labels_for(ids, cum, rows, step)
            rng = np.random.default_rng([seed, int(ids[0]), len(ids)])
            yield pa.RecordBatch.from_pydict({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                                              **payload(labels, rng)})
    return gen


def _plankton_payload(params: dict):
    def payload(labels: np.ndarray, rng: np.random.Generator) -> dict:
        # deferred: pyarrow is slow to import
        import pyarrow as pa

        flat = np.ascontiguousarray(draw_images(labels, rng, params).reshape(len(labels), -1))
        offsets = np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)   # one Arrow batch: < 2 GB
        return {"image": pa.Array.from_buffers(pa.binary(), len(labels),
                                               [None, pa.py_buffer(offsets), pa.py_buffer(flat)])}
    return payload


def _tabular_payload(means: np.ndarray):
    def payload(labels: np.ndarray, rng: np.random.Generator) -> dict:
        # deferred: pyarrow is slow to import
        import pyarrow as pa

        x = (means[labels] + rng.normal(0, 1.0, (len(labels), means.shape[1]))).astype(np.float32)
        offsets = np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)
        return {"features": pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.ravel()))}
    return payload


def synthesize(spark, preset: str, rows: int, seed: int, out: str, partitions: int | None = None, *,
               positive_rate: float = 0.001, features: int = 32) -> dict:
    """Generate ``rows`` rows of ``preset`` with Spark and write them as Parquet at ``out``.

    ``positive_rate`` and ``features`` are used (and checked) by the ``rare`` preset only.
    Returns ``{"rows", "n_classes", "class_counts", "partitions"}``. Output is written to a
    temporary directory and renamed into place, so a failure leaves nothing at ``out``.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown synth preset '{preset}' (choose from: {', '.join(PRESETS)})")
    if rows <= 0:
        raise InputError(f"--rows must be positive, got {rows}")
    if preset == "digits":
        return _write_digits(spark, out)
    if preset == "rare":
        return _write_rare(spark, rows, seed, out, partitions, positive_rate=positive_rate, features=features)
    if preset.startswith("plankton"):
        fractions = plankton_fractions()
        if preset == "plankton_balanced":
            fractions = np.full(len(fractions), 1.0 / len(fractions))
        bytes_per_row = IMAGE_SIDE * IMAGE_SIDE + 16
    else:
        fractions = tabular_fractions()
        bytes_per_row = TABULAR_DIM * 4 + 16
    counts = exact_counts(fractions, rows)
    n_classes = len(counts)
    cum = np.cumsum(counts)
    step = coprime_step(rows)
    if partitions is None:
        # ~64 MB of output per file, at least 2 files per core
        cores = spark.sparkContext.defaultParallelism
        partitions = max(2 * cores, math.ceil(rows * bytes_per_row / 64e6))
        partitions = min(partitions, rows)
    base = spark.range(0, rows, numPartitions=partitions)
    if preset.startswith("plankton"):
        params = _class_params(n_classes, seed)
        fn = _row_batches(rows, seed, cum, step, _plankton_payload(params))
        schema = "id long, label long, image binary"
        info = DatasetInfo(kind="image", n_classes=n_classes, image_shape=[IMAGE_SIDE, IMAGE_SIDE])
    else:
        means = np.random.default_rng(20_000 + seed).normal(0, 1.1, (n_classes, TABULAR_DIM))
        fn = _row_batches(rows, seed, cum, step, _tabular_payload(means))
        schema = "id long, label long, features array<float>"
        info = DatasetInfo(kind="features", n_classes=n_classes, n_features=TABULAR_DIM)
    info.class_counts = {str(i): int(c) for i, c in enumerate(counts)}
    df = base.mapInArrow(fn, schema)
    with atomic_dir(local_path(out)) as tmp:
        df.write.mode("overwrite").parquet(spark_uri(tmp))
        write_info(tmp, info)
    return {"rows": int(rows), "n_classes": n_classes, "class_counts": counts.tolist(),
            "partitions": partitions}


def _write_rare(spark, rows: int, seed: int, out: str, partitions: int | None, *, positive_rate: float,
                features: int) -> dict:
    """The ``rare`` preset (:mod:`pipeline.data.synth_rare`), generated per partition like ``tabular``."""
    check_rare_args(positive_rate, features)
    params = rare_params(rows, positive_rate, features, seed)
    counts = params["counts"]
    if partitions is None:
        # ~64 MB of output per file, at least 2 files per core
        partitions = max(2 * spark.sparkContext.defaultParallelism, math.ceil(rows * (features * 4 + 16) / 64e6))
    partitions = min(partitions, rows)
    info = DatasetInfo(kind="features", n_classes=2, n_features=features,
                       class_counts={str(i): int(c) for i, c in enumerate(counts)})
    df = spark.range(0, rows, numPartitions=partitions).mapInArrow(
        rare_batches(params), "id long, label long, features array<float>")
    with atomic_dir(local_path(out)) as tmp:
        # random floats never fit a dictionary: trying one first halves the write speed
        df.write.option("parquet.enable.dictionary", "false").mode("overwrite").parquet(spark_uri(tmp))
        write_info(tmp, info)
    return {"rows": int(rows), "n_classes": 2, "class_counts": counts.tolist(), "partitions": partitions}


def _write_digits(spark, out: str) -> dict:
    """scikit-learn's bundled digits as a table (small enough to build on the driver: 1,797 rows)."""
    # deferred: scikit-learn is slow to import
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8).reshape(len(d.target), -1)
    pdf = pd.DataFrame({"id": np.arange(len(d.target), dtype=np.int64), "label": d.target.astype(np.int64),
                        "image": [r.tobytes() for r in imgs]})
    counts = np.bincount(d.target)
    info = DatasetInfo(kind="image", n_classes=len(counts), image_shape=[8, 8],
                       class_counts={str(i): int(c) for i, c in enumerate(counts)})
    df = spark.createDataFrame(pdf, "id long, label long, image binary").repartition(2)
    with atomic_dir(local_path(out)) as tmp:
        df.write.mode("overwrite").parquet(spark_uri(tmp))
        write_info(tmp, info)
    return {"rows": int(len(d.target)), "n_classes": len(counts), "class_counts": counts.tolist(), "partitions": 2}


# ---------------------------------------------------------------- image folder trees
def class_folder(index: int) -> str:
    """Folder name of class ``index`` in a synthetic image tree."""
    return f"class_{index:03d}"


def _folder_writer(root: str, rows: int, seed: int, cum: np.ndarray, step: int, *, params: dict, corrupt: int):
    """mapInPandas function: draw each row's image at a random size and aspect, write it as a PNG.

    Rows ``0..corrupt-1`` (a hash-spread set of ids) get bad files instead: truncated PNGs,
    text with a ``.png`` name, and empty files, in turn.
    """
    def gen(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # deferred: Pillow is only needed on the executors that write the files
        from PIL import Image

        for pdf in batches:
            ids = pdf["id"].to_numpy()
            if len(ids) == 0:
                continue
            labels = labels_for(ids, cum, rows, step)
            rng = np.random.default_rng([seed, int(ids[0]), len(ids), 7])
            imgs = draw_images(labels, rng, params)
            side = rng.integers(24, 121, len(ids))                    # longer side 24..120 px
            aspect = np.exp(rng.uniform(np.log(0.3), 0.0, len(ids)))  # shorter/longer 0.3..1
            wide = rng.random(len(ids)) < 0.5
            bad = (ids * 2654435761 % max(rows, 1)) < corrupt          # ~corrupt rows, spread over classes
            kinds = []
            for i, (rid, lab) in enumerate(zip(ids, labels)):
                folder = os.path.join(root, class_folder(int(lab)))
                os.makedirs(folder, exist_ok=True)
                a, b = int(side[i]), max(2, int(round(side[i] * aspect[i])))
                w, h = (a, b) if wide[i] else (b, a)
                buf = io.BytesIO()
                Image.fromarray(imgs[i]).resize((w, h), Image.Resampling.BILINEAR).save(buf, format="PNG")
                data = buf.getvalue()
                kind = "ok"
                if bad[i]:
                    kind = ("truncated", "text", "empty")[int(rid) % 3]
                    data = {"truncated": data[: len(data) // 2], "text": b"not an image\n", "empty": b""}[kind]
                with open(os.path.join(folder, f"{int(rid):08d}.png"), "wb") as f:
                    f.write(data)
                kinds.append(kind)
            yield pd.DataFrame({"label": labels, "kind": kinds})
    return gen


def synthesize_image_folders(spark, preset: str, rows: int, seed: int, out: str, *, corrupt: int = 0,
                             partitions: int | None = None) -> dict:
    """The ``plankton`` preset as a WHOI-Plankton-style tree: ``out/class_NNN/<id>.png``.

    Each image is the preset's procedural 32×32 drawing resized to a random size (longer side
    24–120 px) and aspect ratio (0.3–1, portrait or landscape), greyscale PNG. The files are
    written by the executors (a shared file system on a cluster), into a temporary directory
    renamed into place when complete. ``corrupt`` of the files are bad on purpose, for testing
    the ingest's quarantine. Returns ``{"files", "corrupt", "n_classes", "class_counts", "partitions"}``.
    """
    if preset != "plankton":
        raise InputError(f"--format png-folders supports the plankton preset only, got '{preset}'")
    if rows <= 0:
        raise InputError(f"--rows must be positive, got {rows}")
    if not 0 <= corrupt <= rows:
        raise InputError(f"--corrupt must be between 0 and --rows ({rows}), got {corrupt}")
    counts = exact_counts(plankton_fractions(), rows)
    cum, step = np.cumsum(counts), coprime_step(rows)
    params = _class_params(len(counts), seed)
    if partitions is None:
        partitions = min(rows, max(2 * spark.sparkContext.defaultParallelism, math.ceil(rows / 20000)))
    with atomic_dir(local_path(out)) as tmp:
        fn = _folder_writer(str(tmp.resolve()), rows, seed, cum, step, params=params, corrupt=corrupt)
        written = (spark.range(0, rows, numPartitions=partitions).mapInPandas(fn, "label long, kind string")
                   .groupBy("kind").count().collect())
    kinds = {r[0]: int(r[1]) for r in written}
    return {"files": sum(kinds.values()), "corrupt": sum(v for k, v in kinds.items() if k != "ok"),
            "kinds": kinds, "n_classes": len(counts), "class_counts": counts.tolist(), "partitions": partitions}
