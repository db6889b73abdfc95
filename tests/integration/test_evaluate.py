"""Evaluate stage in local Spark: every metrics.json field against scikit-learn / imbalanced-learn.

The predictions are generated here: probabilities are multiples of 1/20 (many exact ties), class 4
never occurs in the labels (but is predicted), class 5 occurs but is never predicted.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imblearn.metrics import geometric_mean_score, sensitivity_specificity_support
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             confusion_matrix, precision_recall_fscore_support, roc_auc_score)

from pipeline.errors import InputError
from pipeline.evaluation.evaluate import evaluate_predictions

K = 6
ABSENT, NEVER_PREDICTED = 4, 5
TOL = 1e-9


def make_predictions(n=700, k=K, seed=0, absent=ABSENT, never=NEVER_PREDICTED, denom=20):
    """(labels, probs, pred): imbalanced labels, tied probs correlated with the label."""
    rng = np.random.default_rng(seed)
    sizes = np.array([0.4, 0.25, 0.15, 0.1, 0.0, 0.1][:k] if k == 6 else np.ones(k))
    sizes = sizes / sizes.sum()
    y = rng.choice(k, size=n, p=sizes)
    alpha = np.full((n, k), 0.6)
    alpha[np.arange(n), y] += 1.5
    w = np.stack([rng.multinomial(denom, rng.dirichlet(a)) for a in alpha])
    probs = w / denom
    masked = probs.copy()
    if never is not None:
        masked[:, never] = -1
    pred = np.argmax(masked, axis=1)
    if absent is not None:
        assert not np.any(y == absent) and np.any(pred == absent)
    if never is not None:
        assert np.any(y == never) and not np.any(pred == never)
    return y, probs, pred


def write_table(path, y, probs, pred, extra=None, n_files=3):
    """Parquet predictions table in several files (so Spark sees several partitions)."""
    path.mkdir(parents=True, exist_ok=True)
    n = len(y)
    cuts = np.linspace(0, n, n_files + 1).astype(int)
    for f in range(n_files):
        s = slice(cuts[f], cuts[f + 1])
        cols = {"id": pa.array(np.arange(n)[s], pa.int64()),
                "label": pa.array(np.asarray(y)[s], pa.int64()),
                "probs": pa.array([list(map(float, r)) for r in np.asarray(probs)[s]],
                                  pa.list_(pa.float64())),
                "pred": pa.array(np.asarray(pred)[s], pa.int64())}
        for name, arr in (extra or {}).items():
            cols[name] = pa.array(np.asarray(arr)[s], pa.int64())
        pq.write_table(pa.table(cols), path / f"part-{f}.parquet")
    return path


def assert_close(got, want, what):
    if want is None:
        assert got is None, f"{what}: expected null, got {got}"
    else:
        assert got is not None, f"{what}: got null, expected {want}"
        assert abs(got - want) <= TOL, f"{what}: {got} != {want}"


def check_against_sklearn(m, y, probs, pred, k):
    labels = list(range(k))
    present = [c for c in labels if np.any(y == c)]
    cm = confusion_matrix(y, pred, labels=labels)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["n_rows"] == len(y) and m["n_classes"] == k
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    sen, spe, _ = sensitivity_specificity_support(y, pred, labels=labels, average=None)
    gm = geometric_mean_score(y, pred, labels=labels, average=None)
    by = {r["label"]: r for r in m["per_class"]}
    assert sorted(by) == labels
    for c in labels:
        r = by[c]
        tp = int(cm[c, c])
        assert (r["support"], r["tp"], r["fp"], r["fn"]) == (
            int(sup[c]), tp, int(cm[:, c].sum()) - tp, int(cm[c].sum()) - tp)
        assert r["tn"] == len(y) - r["tp"] - r["fp"] - r["fn"]
        assert_close(r["specificity"], spe[c], f"specificity[{c}]")
        if c in present:
            assert_close(r["precision"], prec[c], f"precision[{c}]")
            assert_close(r["recall"], rec[c], f"recall[{c}]")
            assert_close(r["f1"], f1[c], f"f1[{c}]")
            assert_close(r["g_mean"], gm[c], f"g_mean[{c}]")
            assert_close(r["balanced_accuracy"], (sen[c] + spe[c]) / 2, f"balanced_accuracy[{c}]")
            assert_close(r["roc_auc"], roc_auc_score(y == c, probs[:, c]), f"roc_auc[{c}]")
            assert_close(r["pr_auc"], average_precision_score(y == c, probs[:, c]), f"pr_auc[{c}]")
        else:   # absent: every rate dividing by the zero support is null
            for key in ("recall", "f1", "g_mean", "balanced_accuracy", "roc_auc", "pr_auc"):
                assert r[key] is None, f"{key}[{c}] should be null for an absent class"
            assert_close(r["precision"], 0.0 if cm[:, c].sum() else None, f"precision[{c}]")
    # averages over the present classes
    for avg in ("macro", "weighted"):
        p, r_, f, _ = precision_recall_fscore_support(y, pred, labels=present, average=avg, zero_division=0)
        assert_close(m[avg]["precision"], p, f"{avg} precision")
        assert_close(m[avg]["recall"], r_, f"{avg} recall")
        assert_close(m[avg]["f1"], f, f"{avg} f1")
        w = np.array([sup[c] for c in present], float) if avg == "weighted" else np.ones(len(present))
        for key, ref in (("roc_auc", [roc_auc_score(y == c, probs[:, c]) for c in present]),
                         ("pr_auc", [average_precision_score(y == c, probs[:, c]) for c in present]),
                         ("specificity", [spe[c] for c in present]),
                         ("g_mean", [gm[c] for c in present])):
            assert_close(m[avg][key], float(np.average(ref, weights=w)), f"{avg} {key}")
    if len(present) == k:   # sklearn's own multiclass OvR average when every class is present
        assert_close(m["macro"]["roc_auc"], roc_auc_score(y, probs, multi_class="ovr"), "macro ovr auc")
    assert_close(m["accuracy"], accuracy_score(y, pred), "accuracy")
    assert_close(m["balanced_accuracy"], balanced_accuracy_score(y, pred), "balanced_accuracy")
    assert_close(m["g_mean"], geometric_mean_score(y, pred, labels=present, average="multiclass"), "g_mean")
    onehot = np.eye(k)[y]
    assert_close(m["brier"], float(np.mean(np.sum((probs - onehot) ** 2, axis=1))), "brier")
    order = sorted(present, key=lambda c: (-sup[c], c))
    assert_close(m["groups"]["L5"]["f1"], float(np.mean([f1[c] for c in order[:5]])), "L5 f1")
    rest = order[5:]
    assert_close(m["groups"]["rest"]["f1"], float(np.mean([f1[c] for c in rest])) if rest else None,
                 "rest f1")


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    y, probs, pred = make_predictions()
    path = write_table(tmp_path_factory.mktemp("pred") / "tied", y, probs, pred)
    return path, y, probs, pred


def test_metrics_match_sklearn_with_ties_absent_and_unpredicted_classes(spark, tied, tmp_path):
    path, y, probs, pred = tied
    out = tmp_path / "eval"
    m = evaluate_predictions(spark, str(path), str(out))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["macro"] == m["macro"] and on_disk["per_class"] == m["per_class"]
    check_against_sklearn(on_disk, y, probs, pred, K)
    # metrics.parquet: one row per class, same numbers
    rows = spark.read.parquet(str(out / "metrics.parquet")).orderBy("label").collect()
    assert [r["label"] for r in rows] == list(range(K))
    for r, c in zip(rows, on_disk["per_class"]):
        assert r["support"] == c["support"] and r["roc_auc"] == c["roc_auc"]


def test_many_small_groups_give_the_same_exact_values(spark, tied, tmp_path):
    """Cutting every class into groups of ~7 rows exercises the exact prefix offsets."""
    path, y, probs, pred = tied
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"), target_group_rows=7)
    check_against_sklearn(m, y, probs, pred, K)


def test_continuous_scores_across_many_octaves(spark, tmp_path):
    """No ties, tiny (1e-30), zero and near-one scores: buckets must stay monotone and exact."""
    rng = np.random.default_rng(3)
    n, k = 500, 3
    y = rng.choice(k, size=n, p=[0.7, 0.2, 0.1])
    logits = rng.normal(0, 25, size=(n, k))
    logits[np.arange(n), y] += 15
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs[rng.random(n) < 0.05, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    assert probs.min() < 1e-30
    path = write_table(tmp_path / "p", y, probs, pred, n_files=2)
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"), target_group_rows=25)
    check_against_sklearn(m, y, probs, pred, k)


def test_pred_adjusted_gets_its_own_block(spark, tied, tmp_path):
    path, y, probs, pred = tied
    adj = np.argmax(probs / np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.1]), axis=1)
    p2 = write_table(tmp_path / "adj", y, probs, pred, extra={"pred_adjusted": adj})
    m = evaluate_predictions(spark, str(p2), str(tmp_path / "e"))
    a = m["adjusted"]
    assert a["confusion_matrix"] == confusion_matrix(y, adj, labels=list(range(K))).tolist()
    assert_close(a["balanced_accuracy"], balanced_accuracy_score(y, adj), "adjusted balanced accuracy")
    present = sorted(set(y.tolist()))
    assert_close(a["macro"]["f1"], precision_recall_fscore_support(
        y, adj, labels=present, average="macro", zero_division=0)[2], "adjusted macro f1")
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=list(range(K))).tolist()
    assert (tmp_path / "e" / "metrics_adjusted.parquet").is_file()


def test_pr_curves_of_rare_classes(spark, tied, tmp_path):
    from sklearn.metrics import precision_recall_curve

    path, y, probs, pred = tied
    m = evaluate_predictions(spark, str(path), str(tmp_path / "e"), curve_classes=2)
    sup = np.bincount(y, minlength=K)
    rare = sorted([c for c in range(K) if sup[c] > 0], key=lambda c: (sup[c], c))[:2]
    assert sorted(int(c) for c in m["pr_curves"]) == sorted(rare)
    for c in rare:
        curve = m["pr_curves"][str(c)]
        assert len(curve["recall"]) <= 202
        p, r, _ = precision_recall_curve(y == c, probs[:, c])
        # every point we keep is a point of sklearn's curve, and AP from them is exact
        pts = set(zip(np.round(r, 12), np.round(p, 12)))
        for rr, pp in zip(curve["recall"], curve["precision"]):
            assert (round(rr, 12), round(pp, 12)) in pts
        ap = sum((curve["recall"][i] - curve["recall"][i - 1]) * curve["precision"][i]
                 for i in range(1, len(curve["recall"])))
        assert abs(ap - average_precision_score(y == c, probs[:, c])) < TOL


# ------------------------------------------------------------------------------ bad input
def _bad_tables():
    y, probs, pred = make_predictions(n=60, absent=None, never=None, seed=5)
    ragged = [list(r) for r in probs]
    ragged[7] = ragged[7][:-1]
    nan = probs.copy()
    nan[3, 1] = np.nan
    unnorm = probs * 1.5
    return {
        "ragged": (y, ragged, pred, "ragged"),
        "nan": (y, nan, pred, "NaN"),
        "non-normalised": (y, unnorm, pred, "normalised"),
        "label-too-big": (np.where(np.arange(60) == 9, K, y), probs, pred, "outside the class range"),
        "negative-label": (np.where(np.arange(60) == 9, -1, y), probs, pred, "outside the class range"),
        "pred-too-big": (y, probs, np.where(np.arange(60) == 2, K + 3, pred), "outside the class range"),
    }


@pytest.mark.parametrize("case", list(_bad_tables()))
def test_bad_input_raises_and_writes_nothing(spark, tmp_path, case):
    y, probs, pred, words = _bad_tables()[case]
    path = tmp_path / "bad"
    path.mkdir()
    pq.write_table(pa.table({"id": pa.array(range(len(y)), pa.int64()),
                             "label": pa.array(np.asarray(y), pa.int64()),
                             "probs": pa.array([list(map(float, r)) for r in probs], pa.list_(pa.float64())),
                             "pred": pa.array(np.asarray(pred), pa.int64())}), path / "p.parquet")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=words) as e:
        evaluate_predictions(spark, str(path), str(out), n_classes=K)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_empty_missing_columns_and_wrong_types(spark, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "label": pa.array([], pa.int64()),
                             "probs": pa.array([], pa.list_(pa.float64())),
                             "pred": pa.array([], pa.int64())}), empty / "p.parquet")
    with pytest.raises(InputError, match="empty"):
        evaluate_predictions(spark, str(empty), str(tmp_path / "o1"))
    with pytest.raises(InputError, match="empty"):
        evaluate_predictions(spark, str(empty), str(tmp_path / "o1"), n_classes=3)
    nopred = tmp_path / "nopred"
    nopred.mkdir()
    pq.write_table(pa.table({"id": [1], "label": [0], "probs": [[0.5, 0.5]]}), nopred / "p.parquet")
    with pytest.raises(InputError, match="lack column"):
        evaluate_predictions(spark, str(nopred), str(tmp_path / "o2"))
    strlab = tmp_path / "strlab"
    strlab.mkdir()
    pq.write_table(pa.table({"id": [1], "label": ["a"], "probs": [[0.5, 0.5]], "pred": [0]}),
                   strlab / "p.parquet")
    with pytest.raises(InputError, match="integer class indices"):
        evaluate_predictions(spark, str(strlab), str(tmp_path / "o3"))
    with pytest.raises(InputError, match="not found"):
        evaluate_predictions(spark, str(tmp_path / "nowhere"), str(tmp_path / "o4"))
    for o in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / o).exists()


def test_rerun_replaces_output_and_bad_rerun_keeps_old(spark, tied, tmp_path):
    path, y, probs, pred = tied
    out = tmp_path / "e"
    evaluate_predictions(spark, str(path), str(out))
    before = (out / "metrics.json").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": [1], "label": [0], "probs": [[0.9, 0.9]], "pred": [0]}),
                   bad / "p.parquet")
    with pytest.raises(InputError):
        evaluate_predictions(spark, str(bad), str(out))
    assert (out / "metrics.json").read_text() == before
    assert not math.isnan(json.loads(before)["brier"])



def test_same_predictions_in_other_files_and_order_give_the_same_bits(spark, tmp_path):
    """How rows fall into files, partitions and batches varies between runs (Ray workers write the
    predictions): every metric, Brier and calibration included, must keep all its bits."""
    rng = np.random.default_rng(11)
    n = 3000
    y = rng.choice(K, size=n, p=[0.4, 0.25, 0.15, 0.1, 0.05, 0.05])
    probs = rng.dirichlet(np.full(K, 0.7), size=n)
    pred = probs.argmax(axis=1)
    a = write_table(tmp_path / "a", y, probs, pred, n_files=2)
    perm = rng.permutation(n)
    b = write_table(tmp_path / "b", y[perm], probs[perm], pred[perm], n_files=7)
    first = evaluate_predictions(spark, str(a), str(tmp_path / "ea"))
    second = evaluate_predictions(spark, str(b), str(tmp_path / "eb"))
    assert first["brier"] == second["brier"]
    assert first == second


def test_temperature_fit_keeps_its_bits_across_files_and_order(spark, tmp_path):
    """The validation table's layout must not move the fitted temperature, even in its last bit;
    it must also match the in-memory fit (SciPy-checked in the unit tests) to well within 1e-9."""
    from pipeline.data.prior_correction import fit_temperature, nll_terms
    from pipeline.evaluation.temperature import fit_temperature_on

    rng = np.random.default_rng(12)
    n = 4000
    y = rng.choice(K, size=n)
    logits = rng.normal(size=(n, K)) * 2.5
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    a = write_table(tmp_path / "a", y, probs, pred, n_files=2)
    perm = rng.permutation(n)
    b = write_table(tmp_path / "b", y[perm], probs[perm], pred[perm], n_files=9)
    t_a, t_b = fit_temperature_on(spark, str(a)), fit_temperature_on(spark, str(b))
    assert t_a == t_b
    t_mem = fit_temperature(lambda beta: nll_terms(np.log(probs), y, beta))
    assert t_a == pytest.approx(t_mem, rel=1e-9) and t_a > 1.2
