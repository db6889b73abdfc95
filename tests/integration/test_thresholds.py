"""Threshold moving in Spark: prior correction, cost threshold (Eq. 10), tuned threshold."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from pipeline.errors import InputError
from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.evaluation.thresholds import apply_threshold_moving, rule_adjuster, tune_threshold
from tests.integration.test_evaluate import K, make_predictions, write_table


def _read(path):
    t = pq.read_table(str(path)).to_pandas().sort_values("id")
    return t


def _binary(n=500, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.12).astype(np.int64)
    p1 = np.clip(np.round(rng.normal(0.25 + 0.3 * y, 0.15), 2), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    return y, probs, (p1 >= 0.5).astype(np.int64)


def test_prior_rule_divides_by_training_priors(spark, tmp_path):
    y, probs, pred = make_predictions(seed=1)
    src = write_table(tmp_path / "pred", y, probs, pred)
    (src / "_dataset.json").write_text(json.dumps({"kind": "features", "n_classes": K, "label_col": "label"}))
    counts = {0: 4000, 1: 2500, 2: 1500, 3: 1000, 4: 300, 5: 100}       # training distribution
    out = apply_threshold_moving(spark, str(src), str(tmp_path / "adj"), "prior", class_counts=counts)
    t = _read(out)
    assert (tmp_path / "adj" / "_dataset.json").is_file()
    got_probs = np.stack(t.probs.to_numpy())
    assert np.array_equal(got_probs, probs[t.id.to_numpy()]) and np.array_equal(t.pred, pred[t.id])
    pri = np.array([counts[c] for c in range(K)], float)
    pri /= pri.sum()
    want = np.argmax(probs / pri, axis=1)[t.id.to_numpy()]
    assert np.array_equal(t.pred_adjusted.to_numpy(), want)
    assert not np.array_equal(want, pred[t.id.to_numpy()])            # it did move decisions
    # evaluate reports both; the rarest present class gains recall as the priors say
    m = evaluate_predictions(spark, out, str(tmp_path / "eval"))
    yy = t.label.to_numpy()
    assert m["adjusted"]["per_class"][5]["recall"] == pytest.approx(
        recall_score(yy, t.pred_adjusted, labels=[5], average=None)[0], abs=1e-12)
    assert m["adjusted"]["per_class"][5]["recall"] >= m["per_class"][5]["recall"]


@pytest.mark.parametrize("rule,kw", [("prior", {}), ("cost", {"cost": [1.0, 3.0]})])
def test_rule_scored_in_the_scan_equals_the_adjusted_table(spark, tmp_path, rule, kw):
    """The run scores the rule inside evaluate's scan (no adjusted copy written): same metrics.json."""
    if rule == "prior":
        y, probs, pred = make_predictions(seed=3)
        kw = {"class_counts": {0: 4000, 1: 2500, 2: 1500, 3: 1000, 4: 300, 5: 100}}
    else:
        y, probs, pred = _binary(seed=3)
    src = write_table(tmp_path / "pred", y, probs, pred, n_files=3)
    k = probs.shape[1]
    adjusted = apply_threshold_moving(spark, str(src), str(tmp_path / "adj"), rule, n_classes=k, **kw)
    want = evaluate_predictions(spark, adjusted, str(tmp_path / "eval_table"), n_classes=k)
    got = evaluate_predictions(spark, str(src), str(tmp_path / "eval_scan"), n_classes=k,
                               adjust=rule_adjuster(rule, k, **kw))
    assert got["adjusted"]["confusion_matrix"] != got["confusion_matrix"]        # the rule moved decisions
    assert json.loads(json.dumps(got)) == json.loads(json.dumps(want))


def test_cost_rule_uses_eq10_threshold(spark, tmp_path):
    y, probs, pred = _binary()
    src = write_table(tmp_path / "pred", y, probs, pred, n_files=2)
    out = apply_threshold_moving(spark, str(src), str(tmp_path / "adj"), "cost", cost=[1.0, 3.0])
    t = _read(out)
    p1 = np.stack(t.probs.to_numpy())[:, 1]
    assert np.array_equal(t.pred_adjusted.to_numpy(), (p1 >= 0.25).astype(int))   # 1 / (1 + 3)


@pytest.mark.parametrize("metric,group_rows", [("f1", None), ("f1", 9), ("balanced_accuracy", 9)])
def test_tuned_threshold_is_the_exact_best_on_validation(spark, tmp_path, metric, group_rows):
    y, probs, pred = _binary(seed=3)
    src = write_table(tmp_path / "val", y, probs, pred, n_files=2)
    t = tune_threshold(spark, str(src), metric=metric, target_group_rows=group_rows)
    score = {"f1": f1_score, "balanced_accuracy": balanced_accuracy_score}[metric]
    cands = np.unique(probs[:, 1])[::-1]
    vals = [score(y, (probs[:, 1] >= c).astype(int)) for c in cands]
    best = cands[int(np.argmax(vals))]                # first maximum in descending order
    assert t == best
    out = apply_threshold_moving(spark, str(src), str(tmp_path / "adj"), "tuned", threshold=t)
    tt = _read(out)
    assert np.array_equal(tt.pred_adjusted.to_numpy(),
                          (np.stack(tt.probs.to_numpy())[:, 1] >= t).astype(int))


def test_rule_errors_write_nothing(spark, tmp_path):
    y, probs, pred = make_predictions(n=80, seed=2, absent=None, never=None)
    src = write_table(tmp_path / "pred", y, probs, pred, n_files=1)
    cases = [("cost", dict(cost=[1, 2]), "binary"), ("prior", {}, "class counts"),
             ("prior", dict(class_counts=[1, 2, 3]), "entries"), ("magic", {}, "unknown")]
    for rule, kw, words in cases:
        with pytest.raises(InputError, match=words):
            apply_threshold_moving(spark, str(src), str(tmp_path / "o"), rule, **kw)
    yb, pb, predb = _binary(n=50)
    bsrc = write_table(tmp_path / "bin", yb, pb, predb, n_files=1)
    with pytest.raises(InputError, match="threshold"):
        apply_threshold_moving(spark, str(bsrc), str(tmp_path / "o"), "tuned")
    with pytest.raises(InputError, match="binary"):
        tune_threshold(spark, str(src))
    with pytest.raises(InputError, match="unknown tuning metric"):
        tune_threshold(spark, str(bsrc), metric="auc")
    bad = write_table(tmp_path / "bad", yb, pb * 2, predb, n_files=1)
    with pytest.raises(InputError, match="normalised"):
        apply_threshold_moving(spark, str(bad), str(tmp_path / "o"), "cost", cost=[1, 1])
    assert not (tmp_path / "o").exists()


def test_cli_evaluates_threshold_moving_side_by_side(spark, tmp_path, capsys):
    from sklearn.metrics import confusion_matrix

    from pipeline.cli import main

    y, probs, pred = make_predictions(seed=6)
    src = write_table(tmp_path / "pred", y, probs, pred)
    counts = [4000, 2500, 1500, 1000, 300, 100]
    assert main(["evaluate", "--predictions", str(src), "--out", str(tmp_path / "e"), "--no-report",
                 "--threshold-moving", "prior", "--class-counts", json.dumps(counts)]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    pri = np.array(counts, float) / sum(counts)
    want = np.argmax(probs / pri, axis=1)
    assert m["adjusted"]["confusion_matrix"] == confusion_matrix(y, want, labels=range(K)).tolist()
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(K)).tolist()
    assert "prior: macro F1" in capsys.readouterr().out
    yb, pb, predb = _binary(seed=7)
    val = write_table(tmp_path / "val", yb, pb, predb, n_files=1)
    test = write_table(tmp_path / "test", *_binary(seed=8), n_files=1)
    assert main(["evaluate", "--predictions", str(test), "--out", str(tmp_path / "b"), "--no-report",
                 "--threshold-moving", "tuned", "--val-predictions", str(val)]) == 0
    assert "adjusted" in json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert main(["evaluate", "--predictions", str(src), "--out", str(tmp_path / "c"),
                 "--threshold-moving", "cost", "--cost", "1,2"]) == 2
    assert "binary" in capsys.readouterr().err and not (tmp_path / "c").exists()
