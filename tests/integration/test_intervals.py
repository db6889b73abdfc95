"""The stratified Poisson bootstrap in Spark: deterministic, stratified, paired."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.intervals import bootstrap_counts, bootstrap_intervals, paired_deltas

K = 4


def _preds(spark, seed, flip):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), [60, 30, 10, 5])
    pred = np.where(rng.random(len(y)) < flip, rng.integers(0, K, len(y)), y)
    rows = [(int(i), int(a), int(b)) for i, (a, b) in enumerate(zip(y, pred))]
    return spark.createDataFrame(rows, "id long, label long, pred long"), y, pred


def test_bootstrap_is_deterministic_and_stratified(spark):
    df, y, pred = _preds(spark, 0, 0.3)
    a = bootstrap_counts(df, ["pred"], K, replicates=30, seed=7)["pred"]
    b = bootstrap_counts(df.repartition(5), ["pred"], K, replicates=30, seed=7)["pred"]
    for k in ("tp", "fp", "fn"):
        np.testing.assert_allclose(a[k], b[k])
    # stratified: every replicate keeps each class's support
    np.testing.assert_allclose(a["tp"] + a["fn"], np.tile(np.bincount(y, minlength=K), (30, 1)))
    # the replicates differ from each other (weights are not all 1)
    assert np.ptp(a["tp"][:, 0]) > 0
    c = bootstrap_counts(df, ["pred"], K, replicates=30, seed=8)["pred"]
    assert not np.allclose(a["tp"], c["tp"])


def test_intervals_cover_point_and_stay_bounded(spark):
    df, y, pred = _preds(spark, 1, 0.4)
    out = bootstrap_intervals(spark, df, K, replicates=100, seed=0)
    lo, hi = out["macro_f1_ci"]
    f1 = []
    for c in range(K):
        tp = np.sum((y == c) & (pred == c))
        fp = np.sum((y != c) & (pred == c))
        fn = np.sum((y == c) & (pred != c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    assert 0 <= lo <= np.mean(f1) <= hi <= 1
    assert hi - lo > 0.01
    for lo_c, hi_c in out["per_class"]["f1_ci"]:
        assert 0 <= lo_c <= hi_c <= 1


def test_paired_delta(spark):
    df, y, pred = _preds(spark, 2, 0.3)
    same = paired_deltas(spark, df, df, K, replicates=40)
    assert same["macro_f1_delta_ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    better = spark.createDataFrame([(int(i), int(a), int(a)) for i, a in enumerate(y)], "id long, label long, pred long")
    d = paired_deltas(spark, better, df, K, replicates=40)
    assert d["macro_f1_delta_ci"][0] > 0
    assert all(lo >= 0 for lo, _ in d["per_class"]["recall_delta_ci"])
