"""MLflow tracking of `imbalance run`, read back through `mlflow.MlflowClient` (not from our files):
the default SQLite store, a rerun that logs nothing new, and a real `mlflow server` killed mid-run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.rows=2000", "train.epochs=2", "stream.batch_size=128"]

pytestmark = pytest.mark.slow


def _imbalance(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(args):
    p = _imbalance(args)
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rc, out, err = _run(["run", "conf/tabular.yaml", f"run.root={root}", *SMALL])
    assert rc == 0, err[-4000:]
    return root, out, err


def _run_dir(out: str) -> Path:
    return Path(out.strip().splitlines()[-1])   # the run prints its directory last (tabular-<hash>)


def _client(root):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def _mlflow_global_uri(root):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")   # MlflowClient.load_table searches the global store


def test_run_is_tracked_with_params_curves_metrics_artifacts_and_model(tabular_run):
    root, out, err = tabular_run
    assert "warning: MLflow" not in err
    client = _client(root)
    exp = client.get_experiment_by_name("tabular")            # experiment = the config stem
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["train.loss"] == "focal" and p["data.rows"] == "2000" and p["model.hidden"] == "[128, 64]"
    assert p["tracking.enabled"] == "True"
    assert len(run.data.tags["data_fingerprint"]) == 64
    # per-epoch curves from the training history, step = epoch
    for key in ("train.loss", "train.rows_per_s", "val.macro_f1", "val.balanced_accuracy"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == [1, 2], key   # step = epoch, 1-based like the log
    m = run.data.metrics
    assert m["data.rho"] > 50 and m["data.n_classes"] == 10
    for key in ("test.macro_f1", "test.weighted_f1", "test.g_mean", "test.balanced_accuracy",
                "test.macro_roc_auc", "test.macro_pr_auc", "test.l5_f1", "test.rest_f1"):
        assert key in m, key
    ours = json.loads((_run_dir(out) / "evaluate" / "metrics.json").read_text())
    assert m["test.macro_f1"] == pytest.approx(ours["macro"]["f1"])
    # per-class results: one table artifact with a row per class, not a metric per class
    assert [k for k in m if k.startswith(("test.f1.", "test.recall.", "test.precision."))] == []
    _mlflow_global_uri(root)
    table = client.load_table(exp.experiment_id, "evaluate/per_class.json", run_ids=[run.info.run_id])
    assert len(table) == 10
    for row, pc in zip(table.to_dict("records"), ours["per_class"]):   # load_table reads class "0" as 0
        assert str(row["class"]) == str(pc["name"]) and row["support"] == pc["support"] and row["train_rows"] > 0
        for k in ("precision", "recall", "f1"):
            assert row[k] == pytest.approx(pc[k]), (pc["name"], k)
    # the printed link opens the experiment's training runs
    assert f"MLflow: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    def files(path=None):
        return {f.path for f in client.list_artifacts(run.info.run_id, path)}
    assert {"config.json", "data", "sample", "training", "evaluate", "report"} <= files()
    assert {"data/class_counts.json", "data/profile"} <= files("data")
    assert "data/profile/class_distribution.png" in files("data/profile")
    assert "sample/manifest.json" in files("sample")
    assert "training/val_recall_per_class.json" in files("training")
    assert {"evaluate/metrics.json", "evaluate/per_class.json"} <= files("evaluate")
    assert {"report/report.html", "report/report.md"} <= files("report")

    # the model: mlflow.pytorch flavour with an input signature, loadable and predicting
    import mlflow
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    uri = f"runs:/{run.info.run_id}/model"
    info = mlflow.models.get_model_info(uri)
    assert "pytorch" in info.flavors and info.signature is not None
    net = mlflow.pytorch.load_model(uri)
    n_features = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][-1]
    out_t = net(torch.zeros(3, n_features))
    assert tuple((out_t[0] if isinstance(out_t, tuple) else out_t).shape) == (3, 10)


def test_rerun_that_skips_every_stage_logs_nothing_new(tabular_run):
    root, _, _ = tabular_run
    client = _client(root)
    (before,) = client.search_runs([client.get_experiment_by_name("tabular").experiment_id])
    hist_before = client.get_metric_history(before.info.run_id, "val.macro_f1")
    rc, out, err = _run(["run", "conf/tabular.yaml", f"run.root={root}", *SMALL])
    assert rc == 0, err[-4000:]
    (after,) = client.search_runs([client.get_experiment_by_name("tabular").experiment_id])
    assert after.info.run_id == before.info.run_id           # the same MLflow run, resumed
    assert client.get_metric_history(after.info.run_id, "val.macro_f1") == hist_before
    assert after.data.metrics == before.data.metrics
    assert json.loads((_run_dir(out) / "summary.json").read_text())["mlflow_run_id"] == before.info.run_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_killed_mid_run_the_run_finishes_and_warns(tmp_path):
    port = _free_port()
    store = tmp_path / "server.db"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(tmp_path / "server-art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = None
    try:
        deadline = time.time() + 300  # a loaded shared machine starts it slowly
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        root = tmp_path / "runs"
        run = _imbalance(["run", "conf/tabular.yaml", f"run.root={root}", *SMALL, "train.num_workers=0",
                          f"tracking.uri=http://127.0.0.1:{port}", "tracking.experiment=served", "run.id=tabular"])
        record = root / "tabular" / "tracking.json"
        deadline = time.time() + 300
        while not (record.is_file() and "data" in json.loads(record.read_text() or "{}").get("logged", [])):
            assert run.poll() is None and time.time() < deadline, "the run never logged its data"
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)               # the server goes away mid-run
        server.wait(timeout=30)
        out, err = run.communicate(timeout=600)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        if run is not None and run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-4000:]
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: MLflow tracking")]
    assert len(warnings) == 1, err[-3000:]
    assert "not logged: " in warnings[0] and "model" in warnings[0] and "report" in warnings[0]
    # our files are all there
    assert (root / "tabular" / "evaluate" / "metrics.json").is_file()
    assert (root / "tabular" / "report" / "report.html").is_file()
    # what was logged before the kill reached the server's store
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (r,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert r.data.params["train.loss"] == "focal" and "data.rho" in r.data.metrics
    assert r.info.run_id == json.loads(record.read_text())["run_id"]


def test_experiment_is_a_parent_run_with_one_child_per_trial(spark, ray_local, tmp_path):
    from pipeline.config import load_config
    from pipeline.flows.experiment import run_experiment

    cfg = load_config("conf/exp-digits-tiny.yaml", [f"run.root={tmp_path}", f"experiment.out={tmp_path / 'exp'}",
                                                    "experiment.seeds=[0]", "train.epochs=1"])
    run_experiment(cfg)
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("exp-digits-tiny")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "experiment"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert {(c.data.tags["level"], c.data.tags["method"], c.data.tags["seed"]) for c in children} == {
        ("rho10", "baseline", "0"), ("rho10", "ros", "0")}
    assert all("test.macro_f1" in c.data.metrics for c in children)
    art = {f.path for f in client.list_artifacts(parent.info.run_id, "experiment")}
    assert {"experiment/stats.json", "experiment/summary.csv"} <= art, art
    assert parent.info.status == "FINISHED"
