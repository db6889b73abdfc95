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


def test_seed_resampling_against_a_loop_over_replicates():
    """Level 1 of the two-level bootstrap, written out replicate by replicate with the same draws."""
    from pipeline.evaluation.intervals import seed_resampled

    rng = np.random.default_rng(0)
    per_seed = [{"f1": rng.random((50, 3)), "macro_f1": rng.random(50)} for _ in range(4)]
    got = seed_resampled(per_seed, np.random.default_rng(9))
    pick = np.random.default_rng(9).integers(0, 4, size=(50, 4))
    for b in range(50):
        want = np.mean([per_seed[s]["f1"][b] for s in pick[b]], axis=0)
        np.testing.assert_allclose(got["f1"][b], want, rtol=1e-12)
        assert got["macro_f1"][b] == pytest.approx(np.mean([per_seed[s]["macro_f1"][b] for s in pick[b]]))
    one = seed_resampled(per_seed[:1], np.random.default_rng(9))
    np.testing.assert_array_equal(one["f1"], per_seed[0]["f1"])   # one seed: the paired bootstrap itself


def test_two_level_interval_covers_the_seeds(spark):
    """Three trained seeds whose errors differ: the interval over seeds and test rows is wider than the
    test-rows-only interval of any one seed, covers every seed's own delta, and three identical seeds
    give exactly the one-seed interval."""
    ref, y, _ = _preds(spark, 5, 0.5)
    seeds = [_preds(spark, 10 + s, flip)[0] for s, flip in enumerate((0.1, 0.3, 0.2))]
    two = paired_deltas(spark, seeds, ref, K, replicates=200, seed=3)
    assert two["seeds"] == {"method": 3, "reference": 1} and two["covers"] == "seeds and test rows"
    width = two["macro_f1_delta_ci"][1] - two["macro_f1_delta_ci"][0]
    ones = [paired_deltas(spark, s, ref, K, replicates=200, seed=3) for s in seeds]
    assert ones[0]["covers"] == "test rows"
    assert all(width > o["macro_f1_delta_ci"][1] - o["macro_f1_delta_ci"][0] for o in ones)
    lo, hi = two["macro_f1_delta_ci"]
    for o in ones:                                             # each seed's centre lies inside
        assert lo <= sum(o["macro_f1_delta_ci"]) / 2 <= hi
    same = paired_deltas(spark, [seeds[0]] * 3, ref, K, replicates=200, seed=3)
    assert same["macro_f1_delta_ci"] == pytest.approx(ones[0]["macro_f1_delta_ci"], abs=1e-12)
    np.testing.assert_allclose(same["per_class"]["f1_delta_ci"], ones[0]["per_class"]["f1_delta_ci"], atol=1e-12)


def _relabelled(spark, seed, flip, offset):
    """A seed's own test set (ids shifted by ``offset``: other rows than the other seeds')."""
    df, y, pred = _preds(spark, seed, flip)
    return df.selectExpr(f"id + {offset} AS id", "label", "pred")


def test_blocked_deltas_over_seeds_with_their_own_test_rows(spark):
    """An experiment's seeds each hold their own split: one seed gives the paired bootstrap of its
    rows, three copies of one seed give that same interval (drawing seeds changes nothing), and
    three different seeds give an interval that holds each seed's centre."""
    from pipeline.evaluation.intervals import blocked_deltas

    refs = [_relabelled(spark, 5 + s, 0.5, 1000 * s) for s in range(3)]
    mine = [_relabelled(spark, 10 + s, flip, 1000 * s) for s, flip in enumerate((0.1, 0.3, 0.2))]
    pairs = [(m, "pred", r, "pred") for m, r in zip(mine, refs)]
    one = blocked_deltas(spark, pairs[:1], K, replicates=200, seed=3)
    assert one["covers"] == "test rows" and one["seeds"] == 1
    assert one["macro_f1_delta_ci"] == pytest.approx(
        paired_deltas(spark, mine[0], refs[0], K, replicates=200, seed=3)["macro_f1_delta_ci"], abs=1e-12)
    same = blocked_deltas(spark, pairs[:1] * 3, K, replicates=200, seed=3)
    assert same["macro_f1_delta_ci"] == pytest.approx(one["macro_f1_delta_ci"], abs=1e-12)
    three = blocked_deltas(spark, pairs, K, replicates=200, seed=3)
    assert three["covers"] == "seeds and test rows" and three["seeds"] == 3
    lo, hi = three["macro_f1_delta_ci"]
    assert lo <= sum(one["macro_f1_delta_ci"]) / 2 <= hi          # a seed's centre lies inside
    assert hi - lo > 0
