"""Pure parts of the evaluate / threshold-moving stages against scikit-learn and independent formulas."""
from __future__ import annotations

import numpy as np
import pytest
from imblearn.metrics import sensitivity_specificity_support
from sklearn.metrics import (average_precision_score, confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)

from pipeline.errors import InputError
from pipeline.evaluation.metric_math import (N_BUCKETS, classwise_from_confusion, group_contributions,
                                                 plan_groups, score_bucket, summarize, threshold_metric)
from pipeline.evaluation.thresholds import adjusted_pred, class_priors, cost_threshold, prior_adjust


def _split_exact(scores, y, cuts):
    """AUC/AP from group_contributions over groups cut at the given descending score boundaries."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    P, N = int(t.sum()), int((1 - t).sum())
    distinct = np.unique(s)[::-1]
    edges = [distinct[i] for i in sorted(cuts) if 0 < i < len(distinct)]
    groups, hi = [], np.inf
    for e in edges + [-np.inf]:
        sel = (s < hi) & (s >= e) if e != -np.inf else (s < hi)
        groups.append(sel)
        hi = e
    auc2 = ap = 0.0
    T = F = 0
    for sel in groups:
        if not sel.any():
            continue
        *_, a2, a = group_contributions(s[sel], t[sel], 1 - t[sel], T, F)
        auc2 += a2
        ap += a
        T += int(t[sel].sum())
        F += int((1 - t[sel]).sum())
    return auc2 / (2 * P * N), ap / P


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_contributions_match_sklearn_for_any_cut(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = (rng.random(n) < 0.15).astype(np.int64)
    scores = np.round(rng.random(n) * 0.5 + 0.4 * y, 2)       # ties on purpose
    ref_auc, ref_ap = roc_auc_score(y, scores), average_precision_score(y, scores)
    for cuts in ([], [3], [1, 5, 9, 20], list(range(1, 60, 2))):
        auc, ap = _split_exact(scores, y, cuts)
        assert abs(auc - ref_auc) < 1e-12 and abs(ap - ref_ap) < 1e-12


def test_group_contributions_merge_duplicate_rows():
    s = np.array([0.3, 0.3, 0.5, 0.1, 0.5])
    pos = np.array([1, 0, 2, 0, 0])
    neg = np.array([0, 4, 1, 3, 2])
    ds, p, q, tp, fp, auc2, ap = group_contributions(s, pos, neg, pos_above=0, neg_above=0)
    assert ds.tolist() == [0.5, 0.3, 0.1] and p.tolist() == [2, 1, 0] and q.tolist() == [3, 4, 3]
    y = np.repeat([1, 0, 1, 0, 0], [2, 3, 1, 4, 3])
    sc = np.repeat([0.5, 0.5, 0.3, 0.3, 0.1], [2, 3, 1, 4, 3])
    assert abs(auc2 / (2 * 3 * 10) - roc_auc_score(y, sc)) < 1e-12
    assert abs(ap / 3 - average_precision_score(y, sc)) < 1e-12


def test_score_bucket_is_monotone_and_ties_share_a_bucket():
    rng = np.random.default_rng(0)
    s = np.sort(np.concatenate([[0.0, -0.0, 5e-324, 1e-300, 1e-40, 1.0, 1.0 + 1e-9, 3.0],
                                rng.random(2000), 10.0 ** rng.uniform(-45, 0, 2000)]))
    b = score_bucket(s)
    assert np.all(np.diff(b) >= 0) and b.min() >= 0 and b.max() < N_BUCKETS
    assert score_bucket(np.array([0.0]))[0] == score_bucket(np.array([-0.0]))[0]
    assert len(np.unique(score_bucket(rng.random(5000)))) > 50   # fine enough to split a class


def test_plan_groups_offsets_are_the_counts_above():
    rng = np.random.default_rng(1)
    k = 3
    hp = np.zeros((k, N_BUCKETS), np.int64)
    hn = np.zeros((k, N_BUCKETS), np.int64)
    idx = rng.choice(N_BUCKETS, 40, replace=False)
    hp[:, idx] = rng.integers(0, 5, (k, 40))
    hn[:, idx] = rng.integers(0, 50, (k, 40))
    b2g, groups = plan_groups(hp, hn, [0, 2], target_rows=60)
    assert np.all(b2g[1] == -1)
    for c in (0, 2):
        gs = [g for g, meta in enumerate(groups) if meta[0] == c]
        assert len(gs) > 3
        occupied = np.flatnonzero(hp[c] + hn[c])
        assert np.all(np.diff(b2g[c, occupied[::-1]]) >= 0)          # contiguous, descending
        for g in gs:
            _, T, F, P, N = groups[g]
            top = occupied[b2g[c, occupied] == g].max()
            assert T == hp[c, top + 1:].sum() and F == hn[c, top + 1:].sum()
            assert (P, N) == (hp[c].sum(), hn[c].sum())


def test_classwise_and_summary_match_sklearn():
    rng = np.random.default_rng(2)
    k = 5
    y = rng.choice([0, 1, 2, 4], size=300, p=[0.5, 0.3, 0.15, 0.05])     # class 3 absent
    pred = np.where(rng.random(300) < 0.6, y, rng.choice([0, 1, 3], size=300))  # 2, 4 rarely, 3 falsely
    pred[pred == 4] = 0                                                  # class 4 never predicted
    cm = confusion_matrix(y, pred, labels=range(k))
    rows = classwise_from_confusion(cm)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    sen, spe, _ = sensitivity_specificity_support(y, pred, labels=range(k), average=None)
    for c in range(k):
        assert rows[c]["support"] == s[c]
        assert abs(rows[c]["specificity"] - spe[c]) < 1e-12
        if s[c]:
            assert abs(rows[c]["precision"] - p[c]) < 1e-12 and abs(rows[c]["recall"] - r[c]) < 1e-12
            assert abs(rows[c]["f1"] - f[c]) < 1e-12
            assert abs(rows[c]["g_mean"] - np.sqrt(sen[c] * spe[c])) < 1e-12
        else:
            assert rows[c]["recall"] is None and rows[c]["f1"] is None and rows[c]["g_mean"] is None
    assert rows[4]["precision"] == 0.0 and rows[3]["precision"] == 0.0
    m = summarize(rows, cm, keys=("precision", "recall", "f1"))
    present = [0, 1, 2, 4]
    pm, rm, fm, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    assert abs(m["macro"]["f1"] - fm) < 1e-12 and abs(m["macro"]["precision"] - pm) < 1e-12
    assert m["n_present"] == 4 and m["groups"]["rest"]["classes"] == []
    assert m["g_mean"] == pytest.approx(np.prod([r[c] for c in present]) ** 0.25, abs=1e-12)


def test_threshold_metric_formulas():
    tp, fp = np.array([1, 3, 4]), np.array([0, 2, 6])
    P, N = 4, 6
    assert np.allclose(threshold_metric("f1", tp, fp, P, N), 2 * tp / (2 * tp + fp + (P - tp)))
    assert np.allclose(threshold_metric("balanced_accuracy", tp, fp, P, N), (tp / P + (N - fp) / N) / 2)
    assert np.allclose(threshold_metric("g_mean", tp, fp, P, N), np.sqrt(tp / P * (N - fp) / N))
    with pytest.raises(InputError):
        threshold_metric("auc", tp, fp, P, N)


def test_prior_correction_and_cost_threshold():
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]])
    pri = class_priors({"0": 80, "1": 15, 2: 5}, 3)
    assert np.allclose(pri, [0.8, 0.15, 0.05])
    adj = prior_adjust(probs, pri)
    expected = (probs / pri) / (probs / pri).sum(axis=1, keepdims=True)   # Buda et al.
    assert np.allclose(adj, expected) and np.allclose(adj.sum(axis=1), 1)
    # raw argmax [0, 0, 2]; dividing by the priors lifts the rare classes: [1 or 2, 2, 2]
    got = adjusted_pred(probs, "prior", pri)
    assert got.tolist() == np.argmax(expected, axis=1).tolist()
    assert got[0] in (1, 2) and got[1:].tolist() == [2, 2]
    tie = np.array([[0.5, 0.25, 0.25]])                       # exact tie after division: first max
    assert adjusted_pred(tie, "prior", np.array([0.5, 0.25, 0.25])).tolist() == [0]
    assert cost_threshold(1, 4) == 0.2 and cost_threshold(3, 1) == 0.75
    two = np.array([[0.85, 0.15], [0.8, 0.2], [0.7, 0.3]])
    assert adjusted_pred(two, "cost", threshold=cost_threshold(1, 4)).tolist() == [0, 1, 1]
    with pytest.raises(InputError):
        class_priors([10, 0, 3], 3)
    with pytest.raises(InputError):
        class_priors([10, 3], 3)
    with pytest.raises(InputError):
        cost_threshold(0, 0)


def test_the_two_balanced_accuracies_have_their_own_names_and_every_field_is_documented():
    """balanced_accuracy (mean recall) and macro.balanced_accuracy (mean one-vs-rest) differ, and
    each says so by its second name; docs/metrics.md documents every field summarize writes."""
    import re
    from pathlib import Path

    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    y = rng.choice(12, 3000, p=np.r_[0.5, np.full(11, 0.5 / 11)])
    p = np.where(rng.random(3000) < 0.4, y, 0)
    cm = confusion_matrix(y, p, labels=list(range(12)))
    m = summarize(classwise_from_confusion(cm), cm, brier=0.1)
    assert m["mean_recall"] == m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    rec, spec = [], []
    for c in range(12):
        tp, fn = cm[c, c], cm[c].sum() - cm[c, c]
        fp, tn = cm[:, c].sum() - tp, cm.sum() - cm[c].sum() - (cm[:, c].sum() - tp)
        rec.append(tp / (tp + fn))
        spec.append(tn / (tn + fp))
    ovr = float(np.mean((np.array(rec) + np.array(spec)) / 2))
    assert m["mean_ovr_balanced_accuracy"] == m["macro"]["balanced_accuracy"] == pytest.approx(ovr)
    assert m["mean_ovr_balanced_accuracy"] > m["mean_recall"] + 0.1     # they really differ
    assert "mean_recall" in m["field_notes"]["balanced_accuracy"]
    assert "one-vs-rest" in m["field_notes"]["macro.balanced_accuracy"]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)`", doc, re.M)) | set(re.findall(r"`([a-z_0-9]+)`", doc))
    fields = set(m) | set(m["per_class"][0]) | {"pred_col", "class_names", "pr_curves", "adjusted", "name"}
    assert not fields - documented, f"undocumented metrics.json fields: {sorted(fields - documented)}"


def test_l5_is_taken_by_training_rows_when_they_are_known():
    """Equal test support (a balanced test set) cannot tell the head from the tail; training rows can."""
    cm = np.diag([10] * 8)
    cm[0, 1] = cm[7, 6] = 5           # class 0 and 7 lose recall
    rows = classwise_from_confusion(cm)
    train = {c: n for c, n in enumerate([5, 9, 9, 1, 3, 2, 8, 50])}
    m = summarize(rows, cm, train_counts=train)
    assert m["groups"]["basis"] == "training"
    assert m["groups"]["L5"]["classes"] == [7, 1, 2, 6, 0]     # by training rows, ties by index
    f1 = {r["label"]: r["f1"] for r in rows}
    assert m["groups"]["L5"]["f1"] == pytest.approx(np.mean([f1[c] for c in (7, 1, 2, 6, 0)]))
    assert m["groups"]["rest"]["classes"] == [4, 5, 3]
    by_support = summarize(rows, cm)["groups"]
    assert by_support["basis"] == "support" and by_support["L5"]["classes"] == [0, 7, 1, 2, 3]


def test_metric_math_imports_no_spark():
    """The formulas module is NumPy only: importing it loads no pyspark."""
    import subprocess
    import sys
    code = "import sys, pipeline.evaluation.metric_math; sys.exit('pyspark' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_evaluation_writes_the_metrics_json_keys_in_order():
    """The typed result gives metrics.json's keys in the written order, optional sections only when present."""
    from pipeline.evaluation.metrics import Evaluation

    cm = np.array([[3, 1], [0, 2]])
    summary = summarize(classwise_from_confusion(cm), cm, brier=0.1)
    bare = Evaluation(pred_col="pred", summary=summary, pr_curves={1: {"recall": [0.0], "precision": [1.0]}})
    out = bare.to_json()
    assert list(out)[:2] == ["pred_col", "n_rows"] and list(out)[-2:] == ["pr_curves", "calibration"]
    assert "binary" not in out and "adjusted" not in out and "class_names" not in out
    assert out["pr_curves"] == {"1": {"recall": [0.0], "precision": [1.0]}}
    full = Evaluation(pred_col="pred", summary=summary, class_names=["a", "b"], binary={"x": 1}, adjusted={"y": 2})
    assert list(full.to_json())[-5:] == ["class_names", "pr_curves", "calibration", "binary", "adjusted"]
