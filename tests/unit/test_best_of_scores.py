"""The decision scores of ``imbalance recommend`` against scikit-learn and imbalanced-learn."""
import numpy as np
import pytest
from imblearn.metrics import geometric_mean_score
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from pipeline.evaluation.best_of import METRICS, scores


def _counts(y, p, n_classes):
    tp = np.array([np.sum((y == c) & (p == c)) for c in range(n_classes)])
    fp = np.array([np.sum((y != c) & (p == c)) for c in range(n_classes)])
    fn = np.array([np.sum((y == c) & (p != c)) for c in range(n_classes)])
    return tp, fp, fn


def _reference(y, p, metric):
    present = np.unique(y)
    if metric == "macro_f1":
        return f1_score(y, p, labels=present, average="macro", zero_division=0)
    if metric == "balanced_accuracy":
        return balanced_accuracy_score(y, p)
    if metric == "g_mean":
        return geometric_mean_score(y, p, labels=present, average="multiclass")
    return accuracy_score(y, p)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", range(6))
def test_scores_match_the_references(metric, case):
    rng = np.random.default_rng(case)
    n_classes = 2 + case
    y = rng.choice(n_classes, size=300, p=np.r_[0.7, np.full(n_classes - 1, 0.3 / (n_classes - 1))])
    right = rng.random(300) < 0.6
    p = np.where(right, y, rng.integers(0, n_classes, 300))
    if case >= 3:   # a class that is predicted but has no rows: left out of the means
        y = np.where(y == n_classes - 1, 0, y)
    tp, fp, fn = _counts(y, p, n_classes)
    assert scores(tp, fp, fn, metric)[0] == pytest.approx(_reference(y, p, metric), abs=1e-12)


def test_scores_score_every_replicate_row():
    rng = np.random.default_rng(7)
    rows, refs = [], []
    for _ in range(5):
        y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
        rows.append(_counts(y, p, 3))
        refs.append(f1_score(y, p, average="macro"))
    tp, fp, fn = (np.stack([r[i] for r in rows]) for i in range(3))
    np.testing.assert_allclose(scores(tp, fp, fn, "macro_f1"), refs, atol=1e-12)


def test_g_mean_is_zero_when_a_class_is_never_recalled():
    y, p = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 0, 1])
    assert scores(*_counts(y, p, 3), "g_mean")[0] == 0.0
    assert geometric_mean_score(y, p, average="multiclass") == 0.0


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        scores([1], [0], [0], "pr_auc")
