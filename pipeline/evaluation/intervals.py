"""How uncertain each number is: Wilson intervals and a stratified bootstrap computed in Spark.

Wilson score interval (per-class recall = tp/support and precision = tp/predicted are binomial
proportions k/n). With z the 1 − α/2 normal quantile (1.96 for 95%) and p̂ = k/n::

    centre = (k + z²/2) / (n + z²)
    half   = z / (n + z²) · √(k(n − k)/n + z²/4)
    [lo, hi] = [centre − half, centre + half]          (always inside [0, 1])

Unlike the normal (Wald) interval it does not collapse to a point at k = 0 or k = n, which is
what a class with 4 test rows and recall 0 needs.

F1, macro F1 and balanced accuracy are not proportions; their intervals come from a *stratified
Poisson bootstrap* done by Spark over the predictions table, with nothing collected:

1. every row gets, for each replicate b = 0..B−1, a weight w ~ Poisson(1) computed from a hash of
   (seed, b, id) — the inverse Poisson CDF of u = xxhash64(seed, b, id) / 2⁵³ — so the replicates
   are the same whatever the partitioning and however often they are recomputed;
2. Spark sums the weights per (replicate, true class, predicted class) and rescales each true
   class so its total weight equals its support n_c (the class sizes of the test set are fixed,
   as in a bootstrap that resamples n_c rows within each class: *stratified by class*);
3. Spark aggregates per (replicate, class) the weighted tp, fp and fn — B × C numbers per
   prediction column reach the driver, never rows;
4. the driver computes each replicate's per-class F1 = 2tp/(2tp+fp+fn), macro F1 (mean over the
   present classes) and balanced accuracy (mean recall), and takes the 2.5 and 97.5 percentiles.

Percentile intervals of bounded statistics stay inside [0, 1]. For a difference between two
models (method − reference) both prediction tables are joined on ``id`` and every replicate
weighs the same rows in both (a *paired* bootstrap), so the interval of the difference reflects
only how differently the two models treat the same test rows.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np

Z95 = 1.959963984540054
LOW_SUPPORT = 20          # fewer test rows than this: the report warns that the class's numbers are noisy
DEFAULT_REPLICATES = 200

# Poisson(1) cumulative probabilities P(W ≤ k), k = 0..9: w = #{k : u ≥ P(W ≤ k)}
_POISSON1_CDF = [sum(math.exp(-1) / math.factorial(j) for j in range(k + 1)) for k in range(10)]


def wilson(k: float, n: float, z: float = Z95) -> tuple[Optional[float], Optional[float]]:
    """Wilson score interval of the proportion k/n (None, None when n = 0)."""
    if n <= 0:
        return None, None
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(max(k * (n - k) / n, 0.0) + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_per_class(per_class: list[dict], z: float = Z95) -> list[dict]:
    """Recall and precision Wilson intervals per class of a ``metrics.json`` ``per_class`` list."""
    out = []
    for r in per_class:
        tp, support, predicted = r["tp"], r["support"], r["tp"] + r["fp"]
        out.append({"label": r["label"], "recall_ci": list(wilson(tp, support, z)),
                    "precision_ci": list(wilson(tp, predicted, z)),
                    "low_support": 0 < support < LOW_SUPPORT})
    return out


def poisson_weight(spark_fns, seed: int, rep_col, id_col):
    """The Spark column: a deterministic Poisson(1) draw from a hash of (seed, replicate, id)."""
    F = spark_fns
    u = F.xxhash64(F.lit(int(seed)), rep_col, id_col).bitwiseAND(F.lit((1 << 53) - 1)) / float(1 << 53)
    w = F.lit(0)
    for p in _POISSON1_CDF:
        w = w + (u >= F.lit(p)).cast("int")
    return w


def bootstrap_counts(df, pred_cols: Sequence[str], n_classes: int, replicates: int = DEFAULT_REPLICATES,
                     seed: int = 0, label_col: str = "label", id_col: str = "id") -> dict:
    """Per replicate and class, the stratified-bootstrap tp, fp, fn of each prediction column.

    ``df`` has ``id_col``, ``label_col`` and the integer ``pred_cols``. Returns
    ``{col: {"tp": (B, C), "fp": (B, C), "fn": (B, C)}}`` as float arrays (weighted counts), computed
    by Spark aggregations; only these B × C numbers per column reach the driver.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    B, C = int(replicates), int(n_classes)
    reps = df.select(F.col(id_col).alias("_id"), F.col(label_col).cast("long").alias("_t"),
                     *[F.col(c).cast("long").alias(f"_p{i}") for i, c in enumerate(pred_cols)]) \
        .withColumn("_b", F.explode(F.sequence(F.lit(0), F.lit(B - 1))))
    reps = reps.withColumn("_w", poisson_weight(F, seed, F.col("_b"), F.col("_id")))
    # stratification: each true class's total weight in a replicate is rescaled to its support n_c;
    # a class that drew no weight at all (possible only for tiny classes) keeps weight 1 per row
    strata = reps.groupBy("_b", "_t").agg(F.sum("_w").alias("_s"), F.count(F.lit(1)).alias("_n"))
    reps = reps.join(F.broadcast(strata), ["_b", "_t"])
    reps = reps.withColumn("_w", F.when(F.col("_s") > 0, F.col("_w") * F.col("_n") / F.col("_s"))
                           .otherwise(F.lit(1.0)))
    out = {}
    for i, c in enumerate(pred_cols):
        p = f"_p{i}"
        agg = reps.groupBy("_b", "_t", p).agg(F.sum("_w").alias("w"))
        tp = agg.where(F.col("_t") == F.col(p)).groupBy("_b", F.col("_t").alias("c")).agg(F.sum("w").alias("v"))
        fn = agg.where(F.col("_t") != F.col(p)).groupBy("_b", F.col("_t").alias("c")).agg(F.sum("w").alias("v"))
        fp = agg.where(F.col("_t") != F.col(p)).groupBy("_b", F.col(p).alias("c")).agg(F.sum("w").alias("v"))
        res = {}
        for name, t in (("tp", tp), ("fp", fp), ("fn", fn)):
            arr = np.zeros((B, C))
            for row in t.where((F.col("c") >= 0) & (F.col("c") < C)).collect():   # ≤ B × C aggregates
                arr[int(row["_b"]), int(row["c"])] = float(row["v"])
            res[name] = arr
        out[c] = res
    return out


def replicate_metrics(counts: dict, support: np.ndarray) -> dict:
    """Per-replicate per-class recall, precision, F1 and macro F1 / balanced accuracy (driver side).

    ``support``: the test rows per class; classes with support 0 are left out of the macro means.
    """
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    present = np.asarray(support) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    recall[:, ~present] = np.nan
    f1[:, ~present] = np.nan
    precision[:, ~present] = np.nan
    return {"recall": recall, "precision": precision, "f1": f1,
            "macro_f1": np.nanmean(f1[:, present], axis=1) if present.any() else np.full(len(tp), np.nan),
            "balanced_accuracy": np.nanmean(recall[:, present], axis=1) if present.any()
            else np.full(len(tp), np.nan)}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple:
    """Percentile interval of bootstrap samples along axis 0 (NaN-safe)."""
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # an absent class: all-NaN column, NaN interval
        lo = np.nanpercentile(samples, 100 * a, axis=0)
        hi = np.nanpercentile(samples, 100 * (1 - a), axis=0)
    return lo, hi


def _nums(x) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in np.ravel(x)]


def bootstrap_intervals(spark, predictions, n_classes: int, pred_col: str = "pred",
                        replicates: int = DEFAULT_REPLICATES, seed: int = 0, label_col: str = "label",
                        id_col: str = "id") -> dict:
    """95% stratified-bootstrap intervals of per-class F1/recall and of macro F1 / balanced accuracy
    for one predictions table (a path or a DataFrame)."""
    df = predictions if not isinstance(predictions, str) else spark.read.parquet(predictions)
    support = _support(df, n_classes, label_col)
    counts = bootstrap_counts(df, [pred_col], n_classes, replicates, seed, label_col, id_col)[pred_col]
    m = replicate_metrics(counts, support)
    out = {"replicates": int(replicates), "seed": int(seed), "level": 0.95, "per_class": {}}
    for k in ("f1", "recall"):
        lo, hi = percentile_ci(m[k])
        out["per_class"][f"{k}_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
    for k in ("macro_f1", "balanced_accuracy"):
        lo, hi = percentile_ci(m[k])
        out[f"{k}_ci"] = [_nums(lo)[0], _nums(hi)[0]]
    return out


def _support(df, n_classes: int, label_col: str) -> np.ndarray:
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    s = np.zeros(n_classes)
    for row in df.groupBy(F.col(label_col).cast("long").alias("c")).count().collect():  # ≤ C rows
        if 0 <= int(row["c"]) < n_classes:
            s[int(row["c"])] = int(row["count"])
    return s


def paired_deltas(spark, method_preds, reference_preds, n_classes: int, pred_col: str = "pred",
                  replicates: int = DEFAULT_REPLICATES, seed: int = 0, label_col: str = "label",
                  id_col: str = "id") -> dict:
    """Method − reference on the same test rows: per-class F1 and recall deltas and macro F1 /
    balanced-accuracy deltas, each with a 95% paired stratified-bootstrap interval.

    Both tables are joined on ``id_col`` (they must hold the same rows and labels); each replicate
    weighs the same rows in both, so the interval is that of the difference, not of two
    independent estimates.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    m = method_preds if not isinstance(method_preds, str) else spark.read.parquet(method_preds)
    r = reference_preds if not isinstance(reference_preds, str) else spark.read.parquet(reference_preds)
    joined = (m.select(F.col(id_col), F.col(label_col), F.col(pred_col).alias("_pm"))
              .join(r.select(F.col(id_col), F.col(pred_col).alias("_pr")), [id_col]))
    support = _support(joined, n_classes, label_col)
    counts = bootstrap_counts(joined, ["_pm", "_pr"], n_classes, replicates, seed, label_col, id_col)
    a, b = replicate_metrics(counts["_pm"], support), replicate_metrics(counts["_pr"], support)
    out = {"replicates": int(replicates), "seed": int(seed), "level": 0.95, "n_rows": int(support.sum()),
           "support": [int(v) for v in support], "per_class": {}}
    for k in ("f1", "recall"):
        lo, hi = percentile_ci(a[k] - b[k])
        out["per_class"][f"{k}_delta_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
        for name, mm in (("method", a), ("reference", b)):
            lo, hi = percentile_ci(mm[k])
            out["per_class"][f"{k}_{name}_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
    for k in ("macro_f1", "balanced_accuracy"):
        lo, hi = percentile_ci(a[k] - b[k])
        out[f"{k}_delta_ci"] = [_nums(lo)[0], _nums(hi)[0]]
        for name, mm in (("method", a), ("reference", b)):
            lo, hi = percentile_ci(mm[k])
            out[f"{k}_{name}_ci"] = [_nums(lo)[0], _nums(hi)[0]]
    return out
