"""The ``binary`` section of metrics.json (two-class data) against scikit-learn, ties included.

The references are computed here from scikit-learn's ``precision_recall_curve`` (its final point,
precision 1 and recall 0, included), ``average_precision_score`` and ``roc_auc_score``, and, for
precision at k, a plain sort of the positive class's scores.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pipeline.evaluation.evaluate import evaluate_predictions
from tests.integration.test_evaluate import write_table

LEVELS = {"precision_levels": [0.3, 0.5, 0.8, 0.9, 0.95, 0.999], "recall_levels": [0.1, 0.5, 0.8, 0.9, 0.95],
          "alert_fractions": [0.001, 0.01, 0.05, 0.2]}


def rare_predictions(n, rate, seed, denom=None):
    """Labels with a rare positive class 1 and scores that rank it, some ties when ``denom``."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < rate).astype(int)
    z = rng.normal(size=n) + 1.6 * y
    p1 = 1 / (1 + np.exp(-(z - 3)))
    if denom:
        p1 = np.round(p1 * denom) / denom
    probs = np.stack([1 - p1, p1], axis=1)
    return y, probs, (p1 >= 0.5).astype(int)


def reference(y, score, levels):
    precision, recall, _ = precision_recall_curve(y, score)
    out = {"pr_auc": average_precision_score(y, score), "roc_auc": roc_auc_score(y, score),
           "recall_at_precision": {}, "precision_at_recall": {}, "precision_at_k": {}}
    for p in levels["precision_levels"]:
        out["recall_at_precision"][repr(p)] = float(recall[precision >= p].max())
    for r in levels["recall_levels"]:
        out["precision_at_recall"][repr(r)] = float(precision[recall >= r].max())
    desc = np.sort(score)[::-1]
    for a in levels["alert_fractions"]:
        m = max(1, math.ceil(round(a * len(y), 9)))
        flagged = score >= desc[m - 1]
        out["precision_at_k"][repr(a)] = float(y[flagged].mean())
    return out


def check(b, y, score, levels):
    want = reference(y, score, levels)
    assert b["positives"] == int(y.sum()) and b["rows"] == len(y)
    assert b["pr_auc"] == pytest.approx(want["pr_auc"], abs=1e-12)
    assert b["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-12)
    for key in ("recall_at_precision", "precision_at_recall", "precision_at_k"):
        assert b[key].keys() == want[key].keys(), key
        for level, v in want[key].items():
            assert b[key][level] == pytest.approx(v, abs=1e-12), (key, level, b[key][level], v)


@pytest.mark.parametrize("denom,group_rows", [(40, None), (40, 7), (None, 50)])
def test_binary_section_matches_sklearn(spark, tmp_path, denom, group_rows):
    """Tied (multiples of 1/40) and continuous scores; one group per class, or many small ones."""
    y, probs, pred = rare_predictions(6000, 0.02, seed=1, denom=denom)
    if denom:
        assert len(np.unique(probs[:, 1])) < 60        # heavy ties, also at the alert thresholds
    path = write_table(tmp_path / "p", y, probs, pred, n_files=3)
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"), target_group_rows=group_rows,
                             binary_levels=LEVELS)
    b = m["binary"]
    assert b["positive_label"] == 1
    check(b, y, probs[:, 1], LEVELS)


def test_default_levels_and_string_labels_take_the_minority(spark, tmp_path):
    """With class names, the positive class is the minority one, here at index 0."""
    y, probs, pred = rare_predictions(4000, 0.03, seed=2, denom=25)
    y, probs, pred = 1 - y, probs[:, ::-1].copy(), 1 - pred           # the rare class is now index 0
    path = write_table(tmp_path / "p", y, probs, pred, n_files=2)
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"), class_names=["fraud", "legit"])
    b = m["binary"]
    assert b["positive_label"] == "fraud"
    defaults = {"precision_levels": [0.5, 0.8, 0.9, 0.95], "recall_levels": [0.5, 0.8, 0.9, 0.95],
                "alert_fractions": [0.001, 0.01]}
    check(b, (y == 0).astype(int), probs[:, 0], defaults)
    assert m["per_class"][0]["pr_auc"] == b["pr_auc"]


def test_multiclass_has_no_binary_section(spark, tmp_path):
    from tests.integration.test_evaluate import make_predictions

    y, probs, pred = make_predictions(n=300)
    m = evaluate_predictions(spark, str(write_table(tmp_path / "p", y, probs, pred)), str(tmp_path / "e"))
    assert "binary" not in m


def test_levels_reached_exactly_count(spark, tmp_path):
    """20 rows ranked 1,0,0,0,1,0,…: the second positive is caught at precision exactly 2/5 and
    recall exactly 1, so precision ≥ 0.4 and recall ≥ 1 must include that point."""
    y = np.array([1, 0, 0, 0, 1] + [0] * 15)
    p1 = np.linspace(0.9, 0.05, 20)
    probs = np.stack([1 - p1, p1], axis=1)
    levels = {"precision_levels": [0.4, 0.5], "recall_levels": [1.0], "alert_fractions": [0.25, 1.0]}
    path = write_table(tmp_path / "p", y, probs, (p1 >= 0.5).astype(int), n_files=2)
    b = evaluate_predictions(spark, str(path), str(tmp_path / "e"), binary_levels=levels)["binary"]
    assert b["recall_at_precision"] == {"0.4": 1.0, "0.5": 0.5}
    assert b["precision_at_recall"] == {"1.0": 0.4}
    assert b["precision_at_k"] == {"0.25": 0.4, "1.0": 0.1}
    check(b, y, p1, levels)


def test_report_shows_the_rare_event_numbers_and_figures(spark, tmp_path):
    from pipeline.evaluation.evaluate import write_report

    y, probs, pred = rare_predictions(3000, 0.02, seed=4)
    path = write_table(tmp_path / "p", y, probs, pred, n_files=2)
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"))
    out = write_report(tmp_path / "e", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Rare events: the positive class" in md
    lo, hi = m["binary"]["intervals"]["pr_auc"]
    assert lo < m["binary"]["pr_auc"] < hi
    assert f"| PR AUC (average precision) | {m['binary']['pr_auc']:.4f} | [{lo:.4f}, {hi:.4f}] |" in md
    assert f"| recall at precision ≥ 0.9 | {m['binary']['recall_at_precision']['0.9']:.4f} |" in md
    alerts = math.ceil(0.01 * 3000)
    assert f"precision in the top 1.000% of rows ({alerts} alerts) | {m['binary']['precision_at_k']['0.01']:.4f} |" in md
    names = {Path(f).name for f in out["figures"]}
    assert {"pr_operating_points.png", "alert_budget.png"} <= names
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<table id='binary'>" in html and html.count("data:image/png;base64,") == len(names)


def test_intervals_do_not_depend_on_how_the_scores_are_grouped(spark, tmp_path):
    """The bootstrap walks the segments of every group in score order: one group or many, the
    segments, and so the seeded replicates, are the same."""
    y, probs, pred = rare_predictions(4000, 0.03, seed=5)        # distinct scores: groups without positives
    path = write_table(tmp_path / "p", y, probs, pred, n_files=3)
    one = evaluate_predictions(spark, str(path), str(tmp_path / "a"))["binary"]["intervals"]
    many = evaluate_predictions(spark, str(path), str(tmp_path / "b"), target_group_rows=9)["binary"]["intervals"]
    assert one == many and one["replicates"] == 200
