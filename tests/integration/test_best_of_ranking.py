"""The paired bootstrap of the ranking metrics (``recommend.metric: pr_auc`` and the ``binary.*``
metrics) against scikit-learn: on all rows, and in every replicate with the replicate's weights."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pipeline.evaluation.best_of import compare_methods
from pipeline.evaluation.best_of_ranking import ranking_metric, ranking_replicates
from pipeline.evaluation.intervals import poisson_weights

B = 6


def _table(spark, tmp_path, name, seed, n=3000, rate=0.04):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    s = np.clip(np.round(rng.normal(0.35 + 0.3 * y, 0.15), 2), 0, 1)     # rounded: ties within and across classes
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    rows = [(int(i), int(t), [float(1 - v), float(v)]) for i, t, v in zip(ids, y, s)]
    path = str(tmp_path / name)
    spark.createDataFrame(rows, "id long, label long, probs array<double>").repartition(3).write.parquet(path)
    return path, ids, y, s


def _recall_at_precision(y, s, w, p):
    prec, rec, _ = precision_recall_curve(y, s, sample_weight=w)
    return float(np.max(np.where(prec >= p, rec, 0.0)))


def _precision_at_recall(y, s, w, r):
    prec, rec, _ = precision_recall_curve(y, s, sample_weight=w)
    return float(np.max(prec[rec >= r]))


REFERENCES = {
    "pr_auc": lambda y, s, w: average_precision_score(y, s, sample_weight=w),
    "roc_auc": lambda y, s, w: roc_auc_score(y, s, sample_weight=w),
    "binary.recall_at_precision.0.3": lambda y, s, w: _recall_at_precision(y, s, w, 0.3),
    "binary.precision_at_recall.0.5": lambda y, s, w: _precision_at_recall(y, s, w, 0.5),
}


def test_ranking_metric_names():
    assert ranking_metric("pr_auc") == ("pr_auc", None)
    assert ranking_metric("binary.recall_at_precision.0.9") == ("recall_at_precision", 0.9)
    assert ranking_metric("binary.precision_at_k.0.001") == ("precision_at_k", 0.001)
    assert ranking_metric("macro_f1") is None
    assert ranking_metric("binary.recall_at_precision.x") is None
    assert ranking_metric("binary.recall_at_precision.1.5") is None


@pytest.mark.parametrize("metric", sorted(REFERENCES))
def test_every_replicate_matches_scikit_learn_with_its_weights(spark, tmp_path, metric):
    path, ids, y, s = _table(spark, tmp_path, "preds", 1)
    point, reps = ranking_replicates(spark.read.parquet(path), metric, 1, B, 7)
    assert point == pytest.approx(REFERENCES[metric](y, s, None), abs=1e-12)
    w = poisson_weights(ids, B, 7)
    for b in range(B):       # stratified: the positives' weights sum to P, the negatives' to N
        wb = w[b].copy()
        wb[y == 1] *= (y == 1).sum() / wb[y == 1].sum()
        wb[y == 0] *= (y == 0).sum() / wb[y == 0].sum()
        assert reps[b] == pytest.approx(REFERENCES[metric](y, s, wb), abs=1e-9), b


def test_compare_methods_ranks_the_better_scorer_first(spark, tmp_path):
    path, ids, y, s = _table(spark, tmp_path, "weak", 2)
    strong = np.clip(np.where(y == 1, s + 0.3, s), 0, 1)
    rows = [(int(i), int(t), [float(1 - v), float(v)]) for i, t, v in zip(ids, y, strong)]
    spark.createDataFrame(rows, "id long, label long, probs array<double>").write.parquet(str(tmp_path / "strong"))
    out = compare_methods(spark, {"baseline": {"tables": [path]}, "better": {"tables": [str(tmp_path / "strong")]}},
                          "baseline", "pr_auc", 2, replicates=200, seed=0, positive=1)
    assert out["best"] == "better" and out["confident"]
    assert out["methods"]["better"]["p_best"] == pytest.approx(1.0)
    assert out["gain"]["mean"] == pytest.approx(
        average_precision_score(y, strong) - average_precision_score(y, s), abs=1e-12)


def test_a_ranking_metric_on_many_classes_is_refused(spark, tmp_path):
    path, *_ = _table(spark, tmp_path, "p", 4)
    with pytest.raises(ValueError, match="unknown metric 'pr_auc' for 3-class data"):
        compare_methods(spark, {"baseline": {"tables": [path]}}, "baseline", "pr_auc", 3, replicates=10)


@pytest.mark.parametrize("tune_metric", ["f1", "macro_f1", "balanced_accuracy", "g_mean", "accuracy"])
def test_the_tuned_threshold_is_the_best_of_every_positive_score(spark, tmp_path, tune_metric):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    from imblearn.metrics import geometric_mean_score

    from pipeline.evaluation.best_of import tuned_threshold
    from pipeline.evaluation.best_of_ranking import segment_counts

    ref = {"f1": lambda y, p: f1_score(y, p), "macro_f1": lambda y, p: f1_score(y, p, average="macro"),
           "balanced_accuracy": balanced_accuracy_score, "accuracy": accuracy_score,
           "g_mean": lambda y, p: geometric_mean_score(y, p, average="multiclass")}[tune_metric]
    path, ids, y, s = _table(spark, tmp_path, "p", 5)
    t = tuned_threshold(segment_counts(spark.read.parquet(path), 1, 0, 0), tune_metric)
    candidates = np.unique(s[y == 1])[::-1]                 # highest first: a tie goes to the highest
    values = [ref(y, (s >= c).astype(int)) for c in candidates]
    assert t == candidates[int(np.argmax(values))]


def test_cross_fitted_decisions_use_the_other_folds_threshold(spark, tmp_path):
    from pyspark.sql import functions as F

    from pipeline.evaluation.best_of import TUNE_FOLDS, cross_fitted, tuned_threshold
    from pipeline.evaluation.best_of_ranking import segment_counts

    path, *_ = _table(spark, tmp_path, "p", 6)
    df = spark.read.parquet(path)
    fold = F.pmod(F.xxhash64("id"), F.lit(TUNE_FOLDS))
    t = [tuned_threshold(segment_counts(df.filter(fold == k), 1, 0, 0), "f1") for k in range(2)]
    assert t[0] != t[1]                                     # the folds disagree here, so the check bites
    got = df.select("id", (fold).alias("k"), F.element_at("probs", 2).alias("s"),
                    cross_fitted(df, 1, "f1").alias("d")).toPandas()
    expected = np.where(got["s"] >= np.where(got["k"] == 0, t[1], t[0]), 1, 0)
    np.testing.assert_array_equal(got["d"], expected)
