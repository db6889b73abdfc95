"""Post-hoc threshold moving (survey, "Output thresholding"): new decisions without retraining.

Rules (each adds ``pred_adjusted`` to a predictions table; ``probs`` and ``pred`` are kept):

* ``prior`` — Buda et al. (2018): divide each class output by its prior probability in the
  *training* data and renormalise, ``p̃_c = (p_c / π_c) / Σ_j (p_j / π_j)`` with
  ``π_c = n_c / Σ_j n_j``; ``pred_adjusted = argmax_c p̃_c`` (first maximum on ties). It lowers the
  bar for rare classes in proportion to their rarity.
* ``cost`` — binary only, survey Eq. 10 (Ling & Sheng): with the cost matrix of Table 2,
  ``c10`` = cost of a false positive and ``c01`` = cost of a false negative, the cost-minimising
  threshold on the positive-class probability is ``p* = c10 / (c10 + c01)``; predict the positive
  class (index 1) when ``p_1 ≥ p*``.
* ``tuned`` — binary only: a threshold chosen on the *validation* predictions to maximise a metric
  (F1 by default) over every distinct score, computed exactly in Spark by
  :func:`tune_threshold`; predict positive when ``p_1 ≥ t``.

References:

* M. Buda, A. Maki, M. A. Mazurowski, "A systematic study of the class imbalance problem in
  convolutional neural networks", Neural Networks 106 (2018),
  https://doi.org/10.1016/j.neunet.2018.07.011
* C. X. Ling, V. S. Sheng, "Cost-sensitive learning and the class imbalance problem", Encyclopedia
  of Machine Learning (2010), https://doi.org/10.1007/978-0-387-30164-8_181
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T

from pipeline.data.schema import INFO_FILE, has_info, read_info
from pipeline.errors import InputError
from pipeline.evaluation.metric_math import TUNE_METRICS
from pipeline.evaluation.ranking import ranking_stats
from pipeline.evaluation.scan import arrow_probs, load_predictions, scan_predictions
from pipeline.io import atomic_dir, local_path, spark_uri

RULES = ("prior", "cost", "tuned")


# ------------------------------------------------------------------------------ pure parts
def class_priors(class_counts, n_classes: int) -> np.ndarray:
    """π_c = n_c / Σ n from training counts (a list by index or a dict index -> count)."""
    if class_counts is None:
        raise InputError("the prior rule needs the training class counts")
    if isinstance(class_counts, dict):
        counts = np.zeros(n_classes, np.float64)
        for key, v in class_counts.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise InputError(f"class_counts key {key!r} is not a class index") from None
            if not 0 <= i < n_classes:
                raise InputError(f"class_counts key {i} outside the class range 0..{n_classes - 1}")
            counts[i] = float(v)
    else:
        counts = np.asarray(list(class_counts), dtype=np.float64)
        if len(counts) != n_classes:
            raise InputError(f"class_counts has {len(counts)} entries for {n_classes} classes")
    if np.any(~np.isfinite(counts)) or np.any(counts <= 0):
        bad = int(np.flatnonzero(~(counts > 0))[0])
        raise InputError(f"class_counts must be positive for every class (class {bad}: {counts[bad]:g})")
    return counts / counts.sum()


def prior_adjust(probs: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """p̃ = (p / π) / Σ (p / π), row-wise (Buda et al.)."""
    q = np.asarray(probs, np.float64) / np.asarray(priors, np.float64)[None, :]
    return q / q.sum(axis=1, keepdims=True)


def cost_threshold(c10: float, c01: float) -> float:
    """Survey Eq. 10: p* = c10 / (c10 + c01) (c10: false-positive cost, c01: false-negative cost)."""
    c10, c01 = float(c10), float(c01)
    if c10 < 0 or c01 < 0 or c10 + c01 <= 0:
        raise InputError(f"costs must be non-negative and not both zero (c10={c10:g}, c01={c01:g})")
    return c10 / (c10 + c01)


def adjusted_pred(probs: np.ndarray, rule: str, priors: Optional[np.ndarray] = None,
                  threshold: Optional[float] = None) -> np.ndarray:
    """Adjusted class indices for a block of probabilities (rows) under one rule."""
    probs = np.asarray(probs, np.float64)
    if rule == "prior":
        return np.argmax(probs / priors[None, :], axis=1).astype(np.int64)
    return (probs[:, 1] >= threshold).astype(np.int64)


def rule_adjuster(rule: str, n_classes: int, class_counts=None, cost: Optional[Sequence[float]] = None,
                  threshold: Optional[float] = None):
    """The rule as a function ``probs block -> pred_adjusted`` (what :func:`add_pred_adjusted`
    computes per batch), for the evaluate stage's scan: the adjusted decisions are scored in the
    pass that reads the predictions anyway, without writing an adjusted table first."""
    priors, threshold = _resolve(rule, n_classes, class_counts, cost, threshold)
    return functools.partial(adjusted_pred, rule=rule, priors=priors, threshold=threshold)


# ------------------------------------------------------------------------------ Spark
def check_rule(rule, cost=None, tune_metric: str = "f1", n_classes: int | None = None) -> None:
    """Check ``evaluate.threshold_moving`` (with ``cost`` / ``tune_metric``) before any data
    exists; ``n_classes`` when known (the cost and tuned rules are binary)."""
    if rule is None:
        return
    if rule not in RULES:
        raise InputError(f"unknown evaluate.threshold_moving rule {rule!r} (choose: {', '.join(RULES)})")
    if rule in ("cost", "tuned") and n_classes is not None and n_classes != 2:
        raise InputError(f"evaluate.threshold_moving={rule} is for binary problems; this data has "
                         f"{n_classes} classes (use 'prior')")
    if rule == "cost":
        if (not isinstance(cost, (list, tuple)) or len(cost) != 2
                or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0 for c in cost)
                or sum(cost) <= 0):
            raise InputError(f"evaluate.threshold_moving=cost needs evaluate.cost = [c10, c01] (false-positive, "
                             f"false-negative cost, >= 0, not both 0), got {cost!r}")
    if rule == "tuned" and tune_metric not in TUNE_METRICS:
        raise InputError(f"unknown evaluate.tune_metric {tune_metric!r} (choose: {', '.join(TUNE_METRICS)})")


def _resolve(rule: str, n_classes: int, class_counts, cost, threshold):
    if rule not in RULES:
        raise InputError(f"unknown threshold-moving rule '{rule}' (choose: {', '.join(RULES)})")
    priors = None
    if rule == "prior":
        priors = class_priors(class_counts, n_classes)
    else:
        if n_classes != 2:
            raise InputError(f"the '{rule}' rule is for binary problems; these predictions have "
                             f"{n_classes} classes (use 'prior')")
        if rule == "cost":
            if cost is None or len(cost) != 2:
                raise InputError("the cost rule needs cost = [c10, c01] (false-positive, false-negative cost)")
            threshold = cost_threshold(*cost)
        elif threshold is None:
            raise InputError("the tuned rule needs a threshold: run tune_threshold on validation predictions")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold {threshold:g} outside [0, 1]")
    return priors, threshold


def add_pred_adjusted(df, rule: str, n_classes: int, class_counts=None,
                      cost: Optional[Sequence[float]] = None, threshold: Optional[float] = None):
    """Return ``df`` with a ``pred_adjusted`` column (long) computed from ``probs`` in Spark."""
    priors, threshold = _resolve(rule, n_classes, class_counts, cost, threshold)
    if "pred_adjusted" in df.columns:
        df = df.drop("pred_adjusted")
    schema = T.StructType(df.schema.fields + [T.StructField("pred_adjusted", T.LongType(), True)])
    k = n_classes

    def fn(batches):
        for batch in batches:
            if batch.num_rows == 0:
                pred = np.zeros(0, np.int64)
            else:
                P, err = arrow_probs(batch.column("probs"), k)
                if err:
                    raise ValueError(err)
                pred = adjusted_pred(P, rule, priors, threshold)
            yield pa.RecordBatch.from_arrays(list(batch.columns) + [pa.array(pred, pa.int64())],
                                             names=list(batch.schema.names) + ["pred_adjusted"])

    return df.mapInArrow(fn, schema)


def apply_threshold_moving(spark, predictions_path, out_path, rule: str, *, class_counts=None,
                           cost: Optional[Sequence[float]] = None,
                           threshold: Optional[float] = None,
                           n_classes: Optional[int] = None) -> str:
    """Read predictions, add ``pred_adjusted`` under ``rule``, write them to ``out_path`` atomically.

    The input is validated first (the evaluate stage's checks: ragged/NaN/non-normalised probs,
    labels outside the range), so a bad table raises :class:`InputError` and writes nothing.
    """
    loaded = load_predictions(spark, predictions_path, pred_col=None, n_classes=n_classes)
    _resolve(rule, loaded.n_classes, class_counts, cost, threshold)   # fail before any Spark work
    scan_predictions(loaded)
    df = spark.read.parquet(spark_uri(predictions_path))
    out = add_pred_adjusted(df, rule, loaded.n_classes, class_counts, cost, threshold)
    with atomic_dir(out_path) as tmp:
        out.write.mode("overwrite").parquet(spark_uri(tmp))
        if has_info(predictions_path):
            shutil.copy(local_path(predictions_path) / INFO_FILE, tmp / INFO_FILE)
    return str(out_path)


def tune_threshold(spark, val_predictions_path, metric: str = "f1", label_col: str = "label",
                   target_group_rows: Optional[int] = None) -> float:
    """Exact best threshold t on validation predictions (binary): argmax over distinct p_1 of metric.

    Candidates are the distinct scores of the positive class (index 1), with the rule "positive
    iff p_1 ≥ t"; ties in the metric go to the largest threshold. Metrics: f1,
    balanced_accuracy, g_mean, accuracy. Uses the evaluate stage's exact ranking pass.
    """
    if metric not in TUNE_METRICS:
        raise InputError(f"unknown tuning metric '{metric}' (choose: {', '.join(TUNE_METRICS)})")
    loaded = load_predictions(spark, val_predictions_path, label_col=label_col, pred_col=None)
    if loaded.n_classes != 2:
        raise InputError(f"threshold tuning is for binary problems; these predictions have "
                         f"{loaded.n_classes} classes")
    scan = scan_predictions(loaded)
    if scan.hist_pos[1].sum() == 0 or scan.hist_neg[1].sum() == 0:
        raise InputError("validation predictions need both classes to tune a threshold")
    res = ranking_stats(spark, loaded, scan, [1], tune=metric, target_group_rows=target_group_rows)
    return float(res.best[1])


def parse_class_counts(text: str):
    """``--class-counts``: a JSON list/dict, or a table directory whose ``_dataset.json`` has counts."""
    t = text.strip()
    if t.startswith("[") or t.startswith("{"):
        try:
            return json.loads(t)
        except json.JSONDecodeError as e:
            raise InputError(f"--class-counts is not valid JSON: {e.msg}") from None
    if os.path.isdir(t) and has_info(t):
        counts = read_info(t).class_counts
        if counts:
            return counts
        raise InputError(f"{t}/_dataset.json has no class_counts")
    raise InputError(f"--class-counts must be a JSON list/dict or a table directory with _dataset.json: {t}")


def predictions_with_rule(spark, predictions, rule: str, *, class_counts=None, cost=None,
                          threshold: Optional[float] = None, val_predictions=None,
                          tune_metric: str = "f1", label_col: str = "label"):
    """Validated predictions DataFrame with ``pred_adjusted`` added in Spark (nothing written).

    For ``tuned`` without a threshold, it is tuned on ``val_predictions`` first. Returns
    ``(DataFrame, n_classes, class_names)`` for :func:`pipeline.evaluate.evaluate_predictions`.
    """
    loaded = load_predictions(spark, predictions, label_col=label_col, pred_col=None)
    if rule == "tuned" and threshold is None:
        if val_predictions is None:
            raise InputError("the tuned rule needs validation predictions (or a threshold)")
        threshold = tune_threshold(spark, val_predictions, metric=tune_metric, label_col=label_col)
    _resolve(rule, loaded.n_classes, class_counts, cost, threshold)
    scan_predictions(loaded)
    df = spark.read.parquet(spark_uri(predictions))
    return (add_pred_adjusted(df, rule, loaded.n_classes, class_counts, cost, threshold),
            loaded.n_classes, loaded.class_names)
