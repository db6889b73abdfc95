"""The pure parts of the rare-event metrics: levels, alert row counts, the positive class, and the
per-group partials against a whole-curve computation with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from pipeline.evaluation.binary import (alert_rows, check_levels, combine, format_binary, group_partials,
                                        level_key, positive_class)


def test_levels_are_checked_once_with_one_line():
    assert check_levels([0.5, 1]) == [0.5, 1.0]
    for bad in ([], [0], [1.5], ["0.9"], [True], 0.9, None):
        with pytest.raises(ValueError):
            check_levels(bad)
    assert [level_key(x) for x in (0.9, 0.001, 1)] == ["0.9", "0.001", "1.0"]


def test_alert_rows_are_exact_ceilings():
    # 0.07 · 100 is 7.000000000000001 in floating point; the ceiling must still be 7
    assert 0.07 * 100 > 7
    assert alert_rows(0.07, 100) == 7
    assert alert_rows(0.001, 5_000_000) == 5000
    assert alert_rows(0.001, 5_000_001) == 5001
    assert alert_rows(0.01, 10) == 1 and alert_rows(1.0, 7) == 7


def test_positive_class_is_label_one_or_the_minority():
    assert positive_class(None, [10, 90]) == 1
    assert positive_class([0, 1], [10, 90]) == 1
    assert positive_class(["1", "0"], [10, 90]) == 0
    assert positive_class(["fraud", "legit"], [10, 90]) == 0
    assert positive_class(["legit", "fraud"], [90, 10]) == 1
    assert positive_class(["a", "b"], [5, 5]) == 0


@pytest.mark.parametrize("cuts", [[], [3], [1, 2, 9, 20], list(range(1, 40))])
def test_group_partials_combine_to_the_whole_curve(cuts):
    """Cut the distinct thresholds anywhere: the best over groups equals the best over the curve."""
    rng = np.random.default_rng(len(cuts))
    y = (rng.uniform(size=400) < 0.1).astype(int)
    score = np.round(rng.normal(size=400) + 2 * y, 1)                  # ties
    s = np.unique(score)[::-1]
    pos = np.array([int(y[score == v].sum()) for v in s])
    neg = np.array([int((score == v).sum()) for v in s]) - pos
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    P = int(y.sum())
    plv, rlv, alv = (0.5, 0.8), (0.5, 0.9), (0.01, 0.1, 0.5)
    m = [alert_rows(a, 400) for a in alv]
    parts = []
    for lo, hi in zip([0] + cuts, cuts + [len(s)]):
        if lo < hi:
            above = int(tp[lo - 1] + fp[lo - 1]) if lo else 0
            parts.append(group_partials(tp[lo:hi], fp[lo:hi], above, P, precision_levels=plv, recall_levels=rlv,
                                        alert_m=m))
    got = combine(parts, plv, rlv, alv)
    precision, recall, _ = precision_recall_curve(y, score)
    for p in plv:
        assert got["recall_at_precision"][level_key(p)] == recall[precision >= p].max()
    for r in rlv:
        assert got["precision_at_recall"][level_key(r)] == precision[recall >= r].max()
    desc = np.sort(score)[::-1]
    for a, k in zip(alv, m):
        assert got["precision_at_k"][level_key(a)] == y[score >= desc[k - 1]].mean()


def test_console_line_names_the_class_and_levels():
    b = {"positive_label": "fraud", "positives": 50, "rows": 50000, "pr_auc": 0.41, "roc_auc": 0.97,
         "recall_at_precision": {"0.9": 0.12}, "precision_at_recall": {"0.5": 0.3},
         "precision_at_k": {"0.001": 0.62, "0.01": None}}
    line = format_binary(b)
    assert line.startswith("positive class fraud (50 of 50000 rows): PR AUC 0.4100 | ROC AUC 0.9700")
    assert "recall at precision 0.9 0.1200" in line and "precision at top 0.001 0.6200" in line
    assert "precision at top 0.01 n/a" in line
