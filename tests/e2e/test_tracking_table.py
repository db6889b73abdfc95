"""What the MLflow UI shows of a run's test results, read back from a real SQLite store in tmp: the
headline metrics as metrics, the per-class results as one table artifact (not one chart per class),
and a printed link that opens the experiment's training runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.evaluation.intervals import wilson_per_class
from pipeline.evaluation.metric_math import classwise_from_confusion, summarize
from pipeline.flows import tracking

TABLE = "evaluate/per_class.json"
# odd characters in names; one class never predicted, one not in the test set
NAMES = ["cat", "dog/puppy", "sea urchin", "x:y", "Ctenophora (comb jelly)", "é", "rare", "absent"]
CM = np.array([[50, 3, 2, 0, 0, 0, 0, 0], [4, 20, 1, 0, 0, 0, 0, 0], [0, 2, 6, 1, 0, 0, 0, 0],
               [0, 0, 1, 2, 0, 0, 0, 0], [1, 0, 0, 0, 9, 1, 0, 0], [0, 0, 0, 0, 2, 5, 0, 0],
               [0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
TRAIN_ROWS = {0: 500, 1: 200, 2: 60, 3: 9, 4: 90, 5: 40, 6: 4, 7: 3}
PER_CLASS_PREFIXES = ("test.f1.", "test.recall.", "test.precision.")


def _metrics() -> dict:
    """A metrics.json as the evaluate stage writes it (per-class rows with names, threshold-moved block)."""
    per_class = classwise_from_confusion(CM)
    for r, name in zip(per_class, NAMES):
        r["name"] = name
        r["roc_auc"], r["pr_auc"] = (None, None) if r["support"] == 0 else (0.9 - 0.1 * r["label"], 0.5)
    m = summarize(per_class, CM, brier=0.3, train_counts=TRAIN_ROWS)
    m["class_names"] = NAMES
    adj_cm = CM.copy()
    adj_cm[3] = [0, 0, 0, 3, 0, 0, 0, 0]
    adj = classwise_from_confusion(adj_cm)
    for r, name in zip(adj, NAMES):
        r["name"] = name
    m["adjusted"] = summarize(adj, adj_cm, keys=("precision", "recall", "f1"))
    return m


def _run_dir(root: Path, name: str) -> Path:
    d = root / name
    (d / "evaluate").mkdir(parents=True)
    (d / "sample").mkdir()
    (d / "evaluate" / "metrics.json").write_text(json.dumps(_metrics()))
    (d / "sample" / "manifest.json").write_text(json.dumps({"input_counts": {str(k): v for k, v in TRAIN_ROWS.items()}}))
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("conf/tabular.yaml", [f"run.root={root}", "tracking.experiment=tabular"])
    run_dir = _run_dir(root, "tabular-1")
    tr = tracking.start(cfg, run_dir)
    tracking.log_evaluation(tr, run_dir, NAMES)
    assert tr.error is None, tr.error
    return root, cfg, run_dir, tr


def _client(root):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def _table(root, run_id, path=TABLE):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")  # MlflowClient.load_table searches the global store
    client = _client(root)
    return client.load_table(client.get_run(run_id).info.experiment_id, path, run_ids=[run_id])


def _same(a, b) -> bool:
    """Equal, null as null (pandas' read_json, which load_table uses, may move a float by an ulp or two)."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and a == pytest.approx(b, rel=1e-14, abs=0)


def test_per_class_results_are_a_table_not_metrics(store):
    root, _, run_dir, tr = store
    run = _client(root).get_run(tr.run_id)
    m = run.data.metrics
    assert [k for k in m if k.startswith(PER_CLASS_PREFIXES)] == []
    ours = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    # the headline metrics stay metrics
    assert m["test.macro_f1"] == pytest.approx(ours["macro"]["f1"])
    assert m["test.balanced_accuracy"] == pytest.approx(ours["balanced_accuracy"])
    assert m["test.adjusted.macro_f1"] == pytest.approx(ours["adjusted"]["macro"]["f1"])
    assert {"test.g_mean", "test.weighted_f1", "test.l5_f1", "test.rest_f1", "test.accuracy"} <= set(m)
    # logged with log_table: the run's tag that makes the UI offer "view as table"
    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": TABLE, "type": "table"} in logged


def test_the_table_has_one_row_per_class_equal_to_metrics_json(store):
    root, _, run_dir, tr = store
    ours = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    df = _table(root, tr.run_id)
    assert len(df) == len(NAMES)
    assert list(df["class"]) == NAMES and list(df["label"]) == list(range(len(NAMES)))
    wilson = wilson_per_class(ours["per_class"])
    adj = ours["adjusted"]["per_class"]
    for row, pc, w, a in zip(df.to_dict("records"), ours["per_class"], wilson, adj):
        assert row["support"] == pc["support"] and row["train_rows"] == TRAIN_ROWS[pc["label"]]
        for k in ("precision", "recall", "f1", "specificity", "g_mean", "roc_auc", "pr_auc"):
            assert _same(row[k], pc[k]), (pc["name"], k, row[k], pc[k])
        assert _same(row["recall_lo"], w["recall_ci"][0]) and _same(row["recall_hi"], w["recall_ci"][1])
        assert _same(row["precision_lo"], w["precision_ci"][0]) and _same(row["precision_hi"], w["precision_ci"][1])
        assert _same(row["f1_adjusted"], a["f1"]) and _same(row["recall_adjusted"], a["recall"])
    # the JSON file itself (what the UI reads): pandas' "split" layout, the values exactly as in metrics.json
    art = json.loads(Path(_client(root).download_artifacts(tr.run_id, TABLE)).read_text())
    assert set(art) == {"columns", "data"} and len(art["data"]) == len(NAMES)
    rows = [dict(zip(art["columns"], r)) for r in art["data"]]
    assert [(r["class"], r["precision"], r["recall"], r["f1"]) for r in rows] == [
        (pc["name"], pc["precision"], pc["recall"], pc["f1"]) for pc in ours["per_class"]]


def test_a_stage_that_ran_again_replaces_the_table(store):
    root, _, run_dir, tr = store
    tracking.log_evaluation(tr, run_dir, NAMES, redo=True)
    assert tr.error is None, tr.error
    assert len(_table(root, tr.run_id)) == len(NAMES)                 # log_table alone would append


def test_training_recall_table_is_replaced_too(store):
    root, _, run_dir, tr = store
    (run_dir / "train").mkdir(exist_ok=True)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_recall": [0.1 * e] * 3} for e in (1, 2)]
    (run_dir / "train" / "train_summary.json").write_text(json.dumps({"history": history}))
    for redo in (False, True):
        tracking.log_training(tr, run_dir, redo=redo)
    assert tr.error is None, tr.error
    assert len(_table(root, tr.run_id, "training/val_recall_per_class.json")) == 6    # 2 epochs x 3 classes


def test_the_experiment_says_it_is_for_model_training(store):
    root, _, _, tr = store
    exp = _client(root).get_experiment_by_name("tabular")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_the_printed_link_opens_the_training_runs(store, capsys):
    root, _, _, tr = store
    exp_id = _client(root).get_experiment_by_name("tabular").experiment_id
    tr.finish()
    out = capsys.readouterr().out.splitlines()
    lines = [ln for ln in out if ln.startswith("MLflow: ")]
    assert len(lines) == 1, out
    link = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert lines[0].split()[1] == link, lines[0]
    assert f"mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db" in lines[0]


def test_link_format():
    # the default store is served by `mlflow ui` on its default address; a server is its own address
    assert tracking.runs_link("sqlite:////tmp/r/mlflow.db", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert tracking.runs_link("http://mlflow.example:8080/", "3") == (
        "http://mlflow.example:8080/#/experiments/3/runs?workflowType=machine_learning")
    assert tracking.runs_link("https://host/mlflow", "0") == (
        "https://host/mlflow/#/experiments/0/runs?workflowType=machine_learning")


def test_nested_runs_print_no_link(store, capsys):
    root, cfg, _, tr = store
    child_dir = _run_dir(root, "tabular-1-seed1")
    child = tracking.start(cfg, child_dir, tags={"kind": "seed"}, parent_run_id=tr.run_id)
    child.finish()
    assert "MLflow: " not in capsys.readouterr().out
