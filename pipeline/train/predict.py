"""Batch prediction: a trained model over a table, distributed with Spark, nothing collected.

``predict`` reads the input Parquet with Spark and runs ``mapInArrow``: each Python worker
loads the model once (cached per process, keyed by the model directory) and scores its
partitions in batches, decoding image bytes / feature arrays with the same vectorised decoders as
training (:mod:`pipeline.stream.readers`). The output follows the predictions contract:

``id`` (long), ``label`` (int class index, from the input's label column), ``probs``
(array<double>, softmax over the classes: the network's raw probabilities), ``pred`` (int, argmax
of ``probs``: the trained decision, which the correction does not move), and ``probs_corrected``
(array<double>, ``probs`` moved to the prior of the data before sampling and, when fitted, divided
by the temperature: :mod:`pipeline.data.prior_correction`, with the priors and temperature of the
model's ``model.json["calibration"]``; left out with ``corrected=False``)

and is written atomically (temporary sibling directory, renamed into place), with
``_predictions.json`` beside the parts (model directory, input, classes and label names).

**Category centers** (Zhang et al., survey "Category centers"): when the model directory holds
``centroids.pt`` (``train.method_params.category_centers: true``), a row is classified by the
nearest class centroid of its deep features (``model(x, return_features=True)``) instead of the
classifier layer: ``pred`` = :func:`pipeline.train.methods.nearest_centroid_predict`, and
``probs`` = softmax over the classes of the negative Euclidean distances divided by the
temperature T (``method_params.centroid_temperature``, default 1),
p_k = exp(−‖f − c_k‖₂ / T) / Σ_j exp(−‖f − c_j‖₂ / T) (cosine metric: exp(cos(f, c_k) / T)
normalised), so ``pred`` is still the argmax of ``probs``; a class without a centroid gets 0.

References:

* Zhang et al., "Image Classification with Category Centers in Class Imbalance Situation", 33rd Youth
  Academic Annual Conference of Chinese Association of Automation (YAC) 2018 (survey: "Category centers")
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np

from pipeline.data.schema import DatasetInfo, has_info, read_info
from pipeline.engines import get_spark
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, local_path, read_json, spark_uri, write_json

OUTPUT_SCHEMA = "id long, label int, probs array<double>, pred int, probs_corrected array<double>"
RAW_SCHEMA = "id long, label int, probs array<double>, pred int"
_MODEL_CACHE: dict = {}


def _cached_scorer(model_dir: str):
    """Load the model once per Python worker process (Spark reuses workers across tasks)."""
    # deferred: torch is slow to import
    from pipeline.train.hooks import METHOD_STATE_FILE
    from pipeline.train.saved_model import META_FILE, MODEL_FILE
    from pipeline.train.scorer import CalibratedScorer

    d = local_path(model_dir)
    state_file = d / METHOD_STATE_FILE  # a cost search rewrites it after training
    key = (str(d), os.path.getmtime(d / MODEL_FILE), os.path.getmtime(d / META_FILE),
           os.path.getmtime(state_file) if state_file.is_file() else None)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = CalibratedScorer.load(str(d))
    return _MODEL_CACHE[key]


def predict_batches(batches: Iterator, model_dir: str, info: dict, batch_size: int,
                    corrected: bool = True) -> Iterator:
    """The ``mapInArrow`` body: Arrow batches (id, label, image|features) → prediction batches.

    Images and features are decoded from the Arrow buffers and ``probs`` is built from one flat
    array, so no Python object is made per row on the way in or out.
    """
    # deferred: pyarrow and torch are slow to import
    import pyarrow as pa
    import torch

    # deferred: torch is slow to import
    from pipeline.stream.readers import decode_features, decode_images, to_float

    torch.set_num_threads(1)  # one Spark task per core already
    scorer = _cached_scorer(model_dir)
    di = DatasetInfo(**info)
    fc = di.feature_col
    k = int(di.n_classes)
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        probs_out = np.empty((n, k), dtype=np.float64)
        pred_out = np.empty(n, dtype=np.int32)
        column = batch.column(fc)
        for s in range(0, n, batch_size):
            col = column.slice(s, batch_size)
            x = decode_images(col, di.image_shape) if di.kind == "image" else decode_features(col, di.n_features)
            m = len(col)
            probs_out[s:s + m], pred_out[s:s + m] = scorer.score(to_float(x))
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        cols = [batch.column("id").cast(pa.int64()), batch.column("label").cast(pa.int32()),
                pa.ListArray.from_arrays(offsets, pa.array(probs_out.ravel())), pa.array(pred_out, pa.int32())]
        names = ["id", "label", "probs", "pred"]
        if corrected:
            cols.append(pa.ListArray.from_arrays(offsets, pa.array(scorer.correct(probs_out).ravel())))
            names.append("probs_corrected")
        yield pa.RecordBatch.from_arrays(cols, names=names)


def predict(spark, model_dir: str, input_path: str, out_path: str, *, batch_size: int = 1024,
            label_col: Optional[str] = None, corrected: bool = True) -> str:
    """Score every row of ``input_path`` with the model in ``model_dir``; write ``out_path``; return it.

    ``corrected``: add ``probs_corrected`` (the model's prior correction and temperature); False
    writes the raw probabilities only.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    # deferred: torch is slow to import
    from pipeline.train.saved_model import META_FILE, MODEL_FILE

    md = local_path(model_dir)
    if not (md / MODEL_FILE).is_file() or not (md / META_FILE).is_file():
        raise InputError(f"{model_dir} is not a model directory (needs {MODEL_FILE} and {META_FILE})")
    if batch_size < 1:
        raise InputError(f"predict.batch_size must be >= 1, got {batch_size}")
    meta = read_json(md / META_FILE)
    if is_local(input_path) and not local_path(input_path).exists():
        raise InputError(f"input table not found: {input_path}")
    info = read_info(input_path) if is_local(input_path) and has_info(input_path) else \
        DatasetInfo(**meta["dataset"])
    if info.n_classes != meta["n_classes"]:
        raise InputError(f"{input_path} has {info.n_classes} classes, the model {meta['n_classes']}")
    label_col = label_col or info.label_col
    model_info = DatasetInfo(**{**meta["dataset"], "label_col": "label"})
    try:
        df = spark.read.parquet(spark_uri(input_path))
    except Exception as e:  # AnalysisException: path does not exist / not Parquet
        raise InputError(f"cannot read {input_path} as Parquet: {str(e).splitlines()[0]}") from None
    fc = model_info.feature_col
    for col in ("id", fc):
        if col not in df.columns:
            raise InputError(f"{input_path} has no '{col}' column (columns: {', '.join(df.columns)})")
    label = F.col(label_col).cast("int") if label_col in df.columns else F.lit(None).cast("int")
    df = df.select(F.col("id").cast("long").alias("id"), label.alias("label"), F.col(fc))
    model_dir_abs = str(md.resolve())
    info_d = model_info.to_dict()

    def fn(batches):
        return predict_batches(batches, model_dir_abs, info_d, batch_size, corrected)

    preds = df.mapInArrow(fn, schema=OUTPUT_SCHEMA if corrected else RAW_SCHEMA)
    side = {"model_dir": model_dir_abs, "input": str(input_path), "n_classes": meta["n_classes"],
            "labels": meta["dataset"].get("labels"),
            "columns": ["id", "label", "probs", "pred"] + (["probs_corrected"] if corrected else []),
            "calibration": meta.get("calibration") if corrected else None}
    if is_local(out_path):
        with atomic_dir(out_path) as tmp:
            preds.write.mode("overwrite").parquet(spark_uri(tmp))
            write_json(tmp / "_predictions.json", side)
    else:  # remote stores: Spark's committer is the atomicity we get
        preds.write.mode("overwrite").parquet(out_path)
    return str(out_path)


def predict_from_config(cfg) -> str:
    """``imbalance predict CONFIG``: ``predict.model`` over ``predict.input`` → ``predict.out``."""
    p = cfg.predict
    for key in ("model", "input", "out"):
        if not getattr(p, key):
            raise InputError(f"predict.{key} is not set")
    return predict(get_spark(cfg.spark), p.model, p.input, p.out, batch_size=p.batch_size,
                   label_col=cfg.data.label_col if cfg.data.label_col != "label" else None,
                   corrected=bool(p.corrected))


__all__ = ["predict", "predict_from_config", "predict_batches", "OUTPUT_SCHEMA", "RAW_SCHEMA"]
