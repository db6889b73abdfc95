"""Segments and the Poisson bootstrap of the rare-event metrics.

On the unresampled counts the segment walk must give scikit-learn's values; its replicates must
have the distribution of a row-level Poisson bootstrap (every row weighted Poisson(1), scikit-learn's
weighted ``average_precision_score`` and ``roc_auc_score``)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pipeline.evaluation.binary import alert_rows
from pipeline.evaluation.binary_bootstrap import binary_intervals, group_segments, join_segments, segment_metrics

PL, RL, AL = (0.5, 0.8), (0.5, 0.9), (0.01, 0.05)
LEVELS = dict(precision_levels=PL, recall_levels=RL, alert_fractions=AL)


def _data(n, rate, seed, decimals=None):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < rate).astype(int)
    s = rng.normal(size=n) + 1.8 * y
    return y, (np.round(s, decimals) if decimals is not None else s)


def _segments(y, s, cuts=()):
    u = np.unique(s)[::-1]
    p = np.array([int(y[s == v].sum()) for v in u])
    q = np.array([int((s == v).sum()) for v in u]) - p
    bounds = [0, *cuts, len(u)]
    return join_segments([group_segments(p[a:b], q[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if a < b])


@pytest.mark.parametrize("decimals,cuts", [(1, ()), (1, (2, 5, 11)), (None, (7, 100, 1500))])
def test_segments_give_sklearns_metrics(decimals, cuts):
    y, s = _data(3000, 0.03, 1, decimals)
    got = segment_metrics(*_segments(y, s, cuts), **LEVELS)
    assert got["pr_auc"][0] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["roc_auc"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    precision, recall, _ = precision_recall_curve(y, s)
    for p in PL:
        assert got[("recall_at_precision", repr(p))][0] == pytest.approx(recall[precision >= p].max(), abs=1e-12)
    for r in RL:
        assert got[("precision_at_recall", repr(r))][0] == pytest.approx(precision[recall >= r].max(), abs=1e-12)
    if decimals is None:      # distinct scores: the m-th row is exactly located
        desc = np.sort(s)[::-1]
        for a in AL:
            m = alert_rows(a, len(y))
            assert got[("precision_at_k", repr(a))][0] == pytest.approx(y[s >= desc[m - 1]].mean(), abs=1e-12)


def test_poisson_counts_bootstrap_matches_the_row_level_bootstrap():
    y, s = _data(2000, 0.05, 2, decimals=2)
    ours = binary_intervals(*_segments(y, s), **LEVELS, replicates=400, seed=3)
    rng = np.random.default_rng(4)
    ap, auc = [], []
    for _ in range(400):
        w = rng.poisson(1.0, size=len(y))
        ap.append(average_precision_score(y, s, sample_weight=w))
        auc.append(roc_auc_score(y, s, sample_weight=w))
    for key, ref in (("pr_auc", ap), ("roc_auc", auc)):
        lo, hi = np.percentile(ref, [2.5, 97.5])
        width = hi - lo
        assert abs(ours[key][0] - lo) < 0.2 * width and abs(ours[key][1] - hi) < 0.2 * width, (key, ours[key], lo, hi)
    point = segment_metrics(*_segments(y, s), **LEVELS)
    assert ours["pr_auc"][0] < point["pr_auc"][0] < ours["pr_auc"][1]
    assert ours["replicates"] == 400


def test_more_rows_give_narrower_intervals_and_the_same_seed_the_same_bits():
    small = binary_intervals(*_segments(*_data(2000, 0.05, 5)), **LEVELS, seed=0)
    large = binary_intervals(*_segments(*_data(20000, 0.05, 5)), **LEVELS, seed=0)
    width = lambda ci: ci[1] - ci[0]
    assert width(large["pr_auc"]) < 0.6 * width(small["pr_auc"])
    assert binary_intervals(*_segments(*_data(2000, 0.05, 5)), **LEVELS, seed=0) == small
