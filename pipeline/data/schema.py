"""What a table holds, written beside its Parquet files as ``_dataset.json``.

Spark, pyarrow and Petastorm ignore files whose names start with ``_``, so the description
travels with the data without being read as a Parquet part. Every table a stage writes (synth,
split, sample, materialize) carries one; readers use it to decode rows into tensors:

``{"label_col": "label", "kind": "image" | "features", "image_shape": [32, 32] | null,
   "n_features": int | null, "n_classes": int, "labels": [original label values] | null,
   "class_counts": {index: count} | null}``

After the split stage the label column always holds dense indices ``0..n_classes-1`` and
``labels`` lists the original label values in index order (``labels.json`` in the split
directory holds the same mapping).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from pipeline.errors import InputError
from pipeline.io import local_path, read_json, write_json

INFO_FILE = "_dataset.json"
IMAGE_COL = "image"
FEATURES_COL = "features"


def positive_class(class_names: Optional[Sequence], support: Sequence[int]) -> int:
    """Index of the positive class of two-class data: label 1, or, when the labels are strings
    other than 0/1, the minority class of the table (the lower index on a tie). The evaluation's
    rare-event metrics and the training loop's validation PR AUC both read it from here."""
    if class_names is None or [str(c) for c in class_names] in (["0", "1"], ["1", "0"]):
        return 1 if class_names is None else [str(c) for c in class_names].index("1")
    return 0 if support[0] <= support[1] else 1


@dataclass
class DatasetInfo:
    kind: str                                   # "image" (raw uint8 bytes) or "features" (array<float>)
    n_classes: int
    label_col: str = "label"
    image_shape: Optional[list] = None          # [H, W] or [H, W, C] for kind == "image"
    n_features: Optional[int] = None            # for kind == "features"
    labels: Optional[list] = None               # original label values, index order
    class_counts: Optional[dict] = field(default=None)  # {str(index): count}

    @property
    def feature_col(self) -> str:
        return IMAGE_COL if self.kind == "image" else FEATURES_COL

    @property
    def input_shape(self) -> tuple:
        """Shape of one decoded example as a float tensor: (C, H, W) images, (D,) features."""
        if self.kind == "image":
            shape = list(self.image_shape or [])
            if len(shape) == 2:
                return (1, shape[0], shape[1])
            return (shape[2], shape[0], shape[1])
        return (int(self.n_features),)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def write_info(table_dir: str | os.PathLike, info: DatasetInfo) -> None:
    write_json(local_path(table_dir) / INFO_FILE, info.to_dict())


def read_info(table_dir: str | os.PathLike) -> DatasetInfo:
    p = local_path(table_dir) / INFO_FILE
    if not p.is_file():
        raise InputError(f"{table_dir} has no {INFO_FILE}: not a table written by this pipeline")
    d = read_json(p)
    known = {f.name for f in dataclasses.fields(DatasetInfo)}
    return DatasetInfo(**{k: v for k, v in d.items() if k in known})


def has_info(table_dir: str | os.PathLike) -> bool:
    return (local_path(table_dir) / INFO_FILE).is_file()
