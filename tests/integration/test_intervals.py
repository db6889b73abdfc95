"""The stratified Poisson bootstrap in Spark: deterministic, stratified, paired."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.intervals import bootstrap_counts, bootstrap_intervals, paired_deltas, poisson_weights

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
    # string ids: weighed by their hash, still stratified, varied and deterministic
    named = df.withColumn("id", df["id"].cast("string").alias("id"))
    s1 = bootstrap_counts(named, ["pred"], K, replicates=30, seed=7)["pred"]
    s2 = bootstrap_counts(named.repartition(3), ["pred"], K, replicates=30, seed=7)["pred"]
    np.testing.assert_allclose(s1["tp"], s2["tp"])
    np.testing.assert_allclose(s1["tp"] + s1["fn"], np.tile(np.bincount(y, minlength=K), (30, 1)))
    assert np.ptp(s1["tp"][:, 0]) > 0 and not np.allclose(s1["tp"], a["tp"])


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


def test_poisson_weights_are_poisson_1():
    w = poisson_weights(np.arange(200_000), 5, seed=0)
    assert w.shape == (5, 200_000)
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    # P(W = k) = e⁻¹ / k!
    for k in range(4):
        assert abs(np.mean(w == k) - np.exp(-1) / math.factorial(k)) < 0.003
    # replicates and seeds are not copies of each other
    assert np.corrcoef(w[0], w[1])[0, 1] < 0.01
    assert not np.array_equal(w, poisson_weights(np.arange(200_000), 5, seed=1))


def test_counts_match_a_row_by_row_reference(spark):
    """The Spark partial sums against the bootstrap written out per row with the same weights,
    including a one-row class that draws no weight in some replicates (it then keeps weight 1)."""
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(5), [80, 40, 12, 6, 1])
    pred = np.where(rng.random(len(y)) < 0.35, rng.integers(0, 5, len(y)), y)
    ids = rng.permutation(10_000)[: len(y)] * 7919
    df = spark.createDataFrame([(int(i), int(a), int(b)) for i, a, b in zip(ids, y, pred)],
                               "id long, label long, pred long").repartition(3)
    B = 40
    got = bootstrap_counts(df, ["pred"], 5, replicates=B, seed=11)["pred"]
    w = poisson_weights(ids, B, 11)
    ref = {k: np.zeros((B, 5)) for k in ("tp", "fp", "fn")}
    for b in range(B):
        for r in range(len(y)):
            s = w[b, y == y[r]].sum()
            wr = w[b, r] * np.sum(y == y[r]) / s if s > 0 else 1.0
            if pred[r] == y[r]:
                ref["tp"][b, y[r]] += wr
            else:
                ref["fn"][b, y[r]] += wr
                ref["fp"][b, pred[r]] += wr
    assert (w[:, y == 4] == 0).any()          # the fallback is exercised
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-9)
