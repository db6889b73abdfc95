"""Reading source tables with clear errors, and the label ↔ index mapping (``labels.json``)."""
from __future__ import annotations

import os
from typing import Optional

from pipeline.data.schema import FEATURES_COL, IMAGE_COL, DatasetInfo, has_info, read_info
from pipeline.errors import InputError
from pipeline.io import is_local, local_path, spark_uri, write_json

LABELS_FILE = "labels.json"


def resolve_table(path: str) -> str:
    """A stage directory that holds its table in ``data/`` (ingest, sample) → that table; else ``path``."""
    if path is not None and is_local(path):
        p = local_path(path)
        if p.is_dir() and has_info(p / "data") and not any(f.suffix == ".parquet" for f in p.iterdir()):
            return str(p / "data")
    return path


def read_table(spark, path: str, label_col: Optional[str] = "label", allow_empty: bool = False):
    """Read a Parquet table; missing path, non-Parquet data, a missing label column or no rows → InputError.

    The output directory of ``imbalance ingest`` or ``sample`` reads as its ``data/`` table.
    """
    if path is None:
        raise InputError("no input path given")
    path = resolve_table(path)
    if is_local(path):
        p = local_path(path)
        if not p.exists():
            raise InputError(f"input not found: {path}")
        if p.is_dir() and not any(f.suffix == ".parquet" or f.is_dir() for f in p.iterdir()
                                  if not f.name.startswith(("_", "."))):
            raise InputError(f"input {path} holds no Parquet files")
    try:
        df = spark.read.parquet(spark_uri(path))
        df.schema  # noqa: B018 - forces schema inference
    except Exception as e:  # AnalysisException, SparkException on non-Parquet files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "UNABLE_TO_INFER_SCHEMA" in msg or "not a Parquet file" in str(e) or "magic number" in str(e):
            raise InputError(f"input {path} is not a Parquet table") from None
        raise InputError(f"cannot read input {path} as Parquet: {msg[:200]}") from None
    if label_col is not None and label_col not in df.columns:
        raise InputError(f"label column '{label_col}' not found in {path} (columns: {', '.join(df.columns)})")
    if not allow_empty and df.limit(1).count() == 0:
        raise InputError(f"input {path} has no rows")
    return df


def table_info(path: str, df=None, label_col: str = "label", image_shape=None) -> Optional[DatasetInfo]:
    """The table's ``_dataset.json`` if it has one, else a description inferred from its schema.

    An ``image`` column without a shape (no ``_dataset.json``, no ``image_shape``) holds encoded
    images (PNG, JPEG, ...): ``image_shape`` is then None and the split stage decodes them.
    """
    path = resolve_table(path)
    if is_local(path) and has_info(path):
        info = read_info(path)
        info.label_col = label_col
        return info
    if df is None:
        return None
    return frame_info(df, label_col, image_shape, name=path)


def frame_info(df, label_col: str = "label", image_shape=None, name: str = "the table") -> DatasetInfo:
    """A description of a DataFrame inferred from its schema (one row read for the feature count)."""
    cols = set(df.columns)
    if IMAGE_COL in cols:
        return DatasetInfo(kind="image", n_classes=0, label_col=label_col,
                           image_shape=list(image_shape) if image_shape is not None else None)
    if FEATURES_COL in cols:
        first = df.select(FEATURES_COL).where(f"{FEATURES_COL} is not null").limit(1).collect()
        n_features = len(first[0][0]) if first else 0
        return DatasetInfo(kind="features", n_classes=0, label_col=label_col, n_features=n_features)
    raise InputError(f"{name} has neither a '{FEATURES_COL}' (array<float>) nor an '{IMAGE_COL}' (bytes) column")


def label_index(labels) -> dict:
    """Stable mapping original label → dense index: sorted order of the distinct values."""
    return {lab: i for i, lab in enumerate(sorted(labels, key=lambda v: (str(type(v)), v)))}


def write_labels(directory: str | os.PathLike, labels: list) -> None:
    write_json(local_path(directory) / LABELS_FILE, {"labels": list(labels)})


