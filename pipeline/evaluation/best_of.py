"""Which of several methods is best, and how sure: the two-level bootstrap over seeds and rows.

Each method m was trained with S seeds; every trained model scored the *same* evaluation rows.
With the stratified Poisson bootstrap of :mod:`pipeline.evaluation.intervals` (row weights are a
pure function of (seed, replicate, id), the same for every model) each replicate b gives every
model's tp, fp, fn per class, hence its score; level 1 then draws S of the method's seeds with
replacement and averages them (:func:`pipeline.evaluation.intervals.seed_resampled`). So replicate
b holds one score per method, ``x[b, m]``, that varies with the training seeds and the rows alike.

* ``score[m]``: the mean over the seeds of the model's score on all rows (no bootstrap);
* ``ci[m]``: the 2.5 and 97.5 percentiles of ``x[:, m]``;
* ``p_best[m]``: the share of replicates in which m scores highest, ``mean_b 1[m = argmax x[b]]``,
  a tie split evenly, so the shares sum to 1;
* the gain of the best method (highest ``score``) over the baseline: ``score[best] − score[base]``
  with the percentile interval of ``x[:, best] − x[:, base]`` (the same rows in every replicate);
  ``confident`` only when that interval lies above 0.

Scores from the confusion counts (classes absent from the rows are left out of the means)::

    macro_f1          = mean_c 2tp_c / (2tp_c + fp_c + fn_c)
    balanced_accuracy = mean_c tp_c / (tp_c + fn_c)
    g_mean            = (Π_c tp_c / (tp_c + fn_c))^(1/C)
    accuracy          = Σ_c tp_c / Σ_c (tp_c + fn_c)

For two-class data ``metric`` may also rank the rows (``pr_auc``, ``roc_auc``,
``binary.recall_at_precision.<p>``, …): each replicate then weights the same rows as the positive
class's segments (:mod:`pipeline.evaluation.best_of_ranking`).

Threshold moving by priors (Buda et al., Neural Networks 106 (2018),
https://doi.org/10.1016/j.neunet.2018.07.011) is scored from the stored probabilities in the same
pass, ``argmax_c p_c / π_c``, as a method of its own (:func:`prior_moved`); on two-class data so is a
threshold tuned on validation, cross-fitted so that no row is decided by a threshold tuned on it
(:func:`cross_fitted`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.errors import InputError
from pipeline.evaluation.best_of_ranking import RANKING, ranking_metric, ranking_replicates, segment_counts
from pipeline.evaluation.intervals import bootstrap_counts, percentile_ci, seed_resampled

METRICS = ("macro_f1", "balanced_accuracy", "g_mean", "accuracy")
DEFAULT_REPLICATES = 1000


def scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of each row of (B, C) confusion counts (module docstring); classes without rows are left out."""
    tp, fp, fn = (np.atleast_2d(np.asarray(a, np.float64)) for a in (tp, fp, fn))
    present = (tp + fn).sum(axis=0) > 0
    tp, fp, fn = tp[:, present], fp[:, present], fn[:, present]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), 0.0)
        if metric == "macro_f1":
            return np.mean(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0), 1)
        if metric == "balanced_accuracy":
            return recall.mean(axis=1)
        if metric == "g_mean":
            return np.exp(np.log(np.maximum(recall, 1e-300)).mean(axis=1)) * (recall > 0).all(axis=1)
        if metric == "accuracy":
            return tp.sum(axis=1) / np.maximum((tp + fn).sum(axis=1), 1e-300)
    raise ValueError(f"unknown metric {metric!r} (choose: {', '.join(METRICS)})")


def prior_moved(probs: str, priors: Sequence[float]) -> Column:
    """``argmax_c probs[c] / π_c`` (first maximum) as a Spark column, π the normalised ``priors``."""
    total = float(sum(priors))
    pi = ", ".join(repr(max(float(p), 1e-12) / total) for p in priors)
    moved = f"transform(`{probs}`, (p, i) -> p / element_at(array({pi}), i + 1))"
    return F.expr(f"array_position({moved}, array_max({moved})) - 1").cast("long")


def _point(df: DataFrame, col: str, n_classes: int, label_col: str) -> tuple:
    """Exact tp, fp, fn per class of one decision column (≤ C² rows reach the driver)."""
    tp, fp, fn = np.zeros(n_classes), np.zeros(n_classes), np.zeros(n_classes)
    for row in df.groupBy(F.col(label_col).cast("long").alias("t"), F.col(col).alias("p")).count().collect():
        t, p, n = int(row["t"]), int(row["p"]), int(row["count"])
        if not 0 <= t < n_classes:
            continue
        if t == p:
            tp[t] += n
        else:
            fn[t] += n
            if 0 <= p < n_classes:
                fp[p] += n
    return tp, fp, fn


#: the metric the tuned threshold maximises for each recommend metric (``evaluate.tune_metric``'s names)
TUNE_FOR = {"macro_f1": "f1", "balanced_accuracy": "balanced_accuracy", "g_mean": "g_mean", "accuracy": "accuracy"}
TUNE_FOLDS = 2


def tuned_threshold(seg: dict, tune_metric: str) -> float:
    """The threshold t among the positive scores u_j that maximises ``tune_metric`` (``f1`` of the
    positive class, or a :data:`METRICS` score over both classes) of "positive iff score ≥ t",
    from :func:`pipeline.evaluation.best_of_ranking.segment_counts`' plain counts; on a tie the
    highest threshold."""
    tp = np.cumsum(seg["pos"][-1])
    fp = np.cumsum(seg["before"][-1] + seg["tie"][-1])
    P, N = tp[-1], fp[-1] + seg["tail"][-1]
    if tune_metric == "f1":    # the positive class's F1 alone
        value = scores(tp[:, None], fp[:, None], (P - tp)[:, None], "macro_f1")
    else:   # classes (negative, positive): tp = (tn, tp), fp = (fn, fp), fn = (fp, fn)
        value = scores(np.stack([N - fp, tp], 1), np.stack([P - tp, fp], 1), np.stack([fp, P - tp], 1), tune_metric)
    return float(seg["scores"][int(np.argmax(value))])


def _fold(id_col: str) -> Column:
    return F.pmod(F.xxhash64(F.col(id_col)), F.lit(TUNE_FOLDS))


def _fold_threshold(df: DataFrame, positive: int, tune_metric: str, label_col: str, id_col: str) -> float:
    """The tuned threshold of one fold; 0.5 (the plain decision) when the fold lacks a class."""
    try:
        return tuned_threshold(segment_counts(df, positive, 0, 0, label_col=label_col, id_col=id_col), tune_metric)
    except InputError:
        return 0.5


def cross_fitted(df: DataFrame, positive: int, tune_metric: str, *, label_col: str = "label",
                 id_col: str = "id") -> Column:
    """Threshold moving tuned on validation, scored honestly on it: the rows split in two folds by
    the hash of their id, and each fold's decisions use the threshold tuned on the *other* fold
    (:func:`tuned_threshold` on the positive class's probability)."""
    t = [_fold_threshold(df.filter(_fold(id_col) == k), positive, tune_metric, label_col, id_col)
         for k in range(TUNE_FOLDS)]
    score = F.element_at(F.col("probs"), positive + 1)
    threshold = F.when(_fold(id_col) == 0, F.lit(t[1])).otherwise(F.lit(t[0]))
    return F.when(score >= threshold, F.lit(positive)).otherwise(F.lit(1 - positive))


def decisions_table(spark, methods: dict, label_col: str = "label", id_col: str = "id") -> tuple:
    """One table of every method's every seed's decisions on the same rows, joined on ``id_col``.

    ``methods``: name → ``{"tables": [predictions path per seed], "priors": class counts or None,
    "tuned": (positive class, tune metric) or None}``; a method with ``priors`` is its models'
    ``pred`` under :func:`prior_moved`, one with ``tuned`` under :func:`cross_fitted`. Returns
    (table, {name: [its columns]}).
    """
    per_path: dict = {}     # path -> (its table, its decision columns): each table is read and joined once
    columns = {}
    for m, (name, spec) in enumerate(methods.items()):
        columns[name] = []
        for s, path in enumerate(spec["tables"]):
            col = f"_m{m}s{s}"
            df, cols = per_path.setdefault(path, (spark.read.parquet(path), []))
            pred = F.col("pred")
            if spec.get("priors"):
                pred = prior_moved("probs", spec["priors"])
            elif spec.get("tuned"):
                pred = cross_fitted(df, *spec["tuned"], label_col=label_col, id_col=id_col)
            cols.append(pred.cast("long").alias(col))
            columns[name].append(col)
    joined = None
    for df, cols in per_path.values():
        t = df.select(F.col(id_col), F.col(label_col), *cols)
        joined = t if joined is None else joined.join(t.drop(label_col), [id_col])
    return joined, columns


def _confusion_replicates(spark, methods: dict, metric: str, *, n_classes: int, replicates: int, seed: int,
                          label_col: str, id_col: str) -> tuple:
    """Per decision column: the score on all rows and per replicate (the confusion-count metrics)."""
    table, columns = decisions_table(spark, methods, label_col, id_col)
    table = table.cache()
    try:
        flat = [c for cols in columns.values() for c in cols]
        counts = bootstrap_counts(table, flat, n_classes, replicates=replicates, seed=seed, label_col=label_col,
                                  id_col=id_col)
        points = {c: float(scores(*_point(table, c, n_classes, label_col), metric)[0]) for c in flat}
        n_rows = table.count()
    finally:
        table.unpersist()
    reps = {c: scores(counts[c]["tp"], counts[c]["fp"], counts[c]["fn"], metric) for c in flat}
    return columns, points, reps, n_rows


def _ranking_replicates(spark, methods: dict, metric: str, *, positive: int, replicates: int, seed: int,
                        label_col: str, id_col: str) -> tuple:
    """Per model: the ranking metric on all rows and per replicate (threshold moving leaves a ranking
    as it is, so a method's ``priors`` change nothing here)."""
    columns, points, reps, n_rows = {}, {}, {}, 0
    for name, spec in methods.items():
        columns[name] = []
        for s, path in enumerate(spec["tables"]):
            key = f"{name}#{s}"
            df = spark.read.parquet(path)
            points[key], reps[key] = ranking_replicates(df, metric, positive, replicates, seed,
                                                        label_col=label_col, id_col=id_col)
            columns[name].append(key)
            n_rows = n_rows or df.count()
    return columns, points, reps, n_rows


def compare_methods(spark, methods: dict, baseline: str, metric: str, n_classes: int, *,
                    replicates: int = DEFAULT_REPLICATES, seed: int = 0, label_col: str = "label",
                    id_col: str = "id", positive: Optional[int] = None) -> dict:
    """Scores, intervals, ``p_best`` and the gain over ``baseline`` (module docstring) of ``methods``
    (:func:`decisions_table`'s argument). Row weights and seed draws depend on ``seed`` only.

    ``metric``: one of :data:`METRICS`, or for two-class data a ranking metric of
    :mod:`pipeline.evaluation.best_of_ranking` of the class ``positive``."""
    if metric in METRICS:
        columns, points, reps, n_rows = _confusion_replicates(spark, methods, metric, n_classes=n_classes,
                                                              replicates=replicates, seed=seed, label_col=label_col,
                                                              id_col=id_col)
    elif ranking_metric(metric) is not None and n_classes == 2 and positive is not None:
        columns, points, reps, n_rows = _ranking_replicates(spark, methods, metric, positive=positive,
                                                            replicates=replicates, seed=seed, label_col=label_col,
                                                            id_col=id_col)
    else:
        raise ValueError(f"unknown metric {metric!r} for {n_classes}-class data (choose: {', '.join(METRICS)}"
                         f"{'' if n_classes != 2 else ', or a ranking metric: ' + ', '.join(RANKING)})")
    rng = np.random.default_rng([int(seed), 0xBE57])
    names = list(methods)
    x = np.stack([seed_resampled([{"v": reps[c]} for c in columns[n]], rng)["v"] for n in names], axis=1)  # (B, M)
    score = {n: float(np.mean([points[c] for c in columns[n]])) for n in names}
    best = max(names, key=lambda n: (score[n], n == baseline))
    top = x == x.max(axis=1, keepdims=True)
    p_best = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    out = {"metric": metric, "replicates": int(replicates), "seed": int(seed), "rows": int(n_rows),
           "best": best, "baseline": baseline, "methods": {}}
    for j, n in enumerate(names):
        lo, hi = percentile_ci(x[:, j])
        out["methods"][n] = {"score": score[n], "ci": [float(lo), float(hi)], "p_best": float(p_best[j]),
                             "seeds": len(columns[n])}
    diff = x[:, names.index(best)] - x[:, names.index(baseline)]
    lo, hi = percentile_ci(diff)
    out["gain"] = {"mean": score[best] - score[baseline], "ci": [float(lo), float(hi)]}
    out["confident"] = bool(best != baseline and lo > 0)
    return out


__all__ = ["compare_methods", "cross_fitted", "decisions_table", "prior_moved", "scores", "tuned_threshold", "METRICS",
           "DEFAULT_REPLICATES", "TUNE_FOR"]
