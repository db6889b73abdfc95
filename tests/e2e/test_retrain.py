"""Scheduled retraining over a partitioned lake, with the promotion gate and the MLflow Model Registry."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.flows import promotion
from pipeline.flows.retrain import class_drift, retrain

pytestmark = pytest.mark.slow
N_CLASSES, DIM = 4, 8


def _write_partition(lake, date, id0, sizes, seed):
    """One ``ingest_date=`` partition of Gaussian-class features with the given class sizes."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(123).normal(0, 2.0, (N_CLASSES, DIM))
    labels = np.repeat(np.arange(N_CLASSES), sizes)
    x = means[labels] + rng.normal(size=(len(labels), DIM))
    d = lake / f"ingest_date={date}"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array(np.arange(id0, id0 + len(labels)), pa.int64()),
                             "label": pa.array(labels, pa.int64()),
                             "features": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32()))}),
                   d / "part-0.parquet")
    return id0 + len(labels)


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.root={tmp_path / 'runs'}",
                              f"retrain.lake={tmp_path / 'lake'}", "model.name=mlp", "model.hidden=[32]",
                              "train.epochs=2", "train.lr=0.01", "stream.batch_size=64", "stream.row_group_mb=0.05",
                              "retrain.tolerance=0.02", "retrain.minority_recall_tolerance=0.05", *extra])


def test_retrain_promotes_then_gate_rejects_a_bad_model(spark, ray_local, tmp_path):
    lake = tmp_path / "lake"
    nxt = _write_partition(lake, "2026-11-01", 0, [900, 300, 60, 30], seed=1)
    nxt = _write_partition(lake, "2026-11-02", nxt, [900, 300, 60, 30], seed=2)

    first = retrain(_cfg(tmp_path))
    assert first["status"] == "promoted" and first["version"] == "1"
    reg = promotion.open_registry(_cfg(tmp_path))
    assert promotion.aliases(reg) == {"production": "1"}
    v1 = promotion.production(reg)
    assert json.loads(v1.tags["partitions"]) == ["2026-11-01", "2026-11-02"]
    assert v1.tags["gate.passed"] == "true" and v1.tags["verdict"] == "promoted"
    assert v1.source.startswith("models:/")               # the candidate run's logged mlflow.pytorch model

    again = retrain(_cfg(tmp_path))                    # nothing new in the lake
    assert again["status"] == "up_to_date"

    # a new partition where the rare classes became common: drift is reported, the warm-started
    # candidate is judged against production on the same fresh test split
    nxt = _write_partition(lake, "2026-11-03", nxt, [300, 300, 300, 300], seed=3)
    second = retrain(_cfg(tmp_path))
    assert second["drift"]["total_variation"] > 0.1
    assert second["new_partitions"] == ["2026-11-03"]
    assert second["status"] == "promoted", second["gate_reasons"]
    assert promotion.aliases(reg) == {"production": "2", "previous": "1"}
    v2 = promotion.production(reg)
    assert json.loads(v2.tags["drift"])["total_variation"] == second["drift"]["total_variation"]
    assert v2.tags["gate.compared_with"] == "1" and v2.tags["replaced"] == "1"
    # the new partition's prior moved (balanced now): the candidate scores at that prior, not the lake's mix
    shift = second["drift"]["prior_shift"]
    assert shift["moved"] and shift["new_counts"] == {"0": 300, "1": 300, "2": 300, "3": 300}
    cal = json.loads((tmp_path / "runs" / second["run_dir"].rsplit("/", 1)[-1] / "train" / "model"
                      / "model.json").read_text())["calibration"]
    assert cal["train_prior"] == [0.25] * 4 and cal["train_prior_from"] == "evaluate.target_prior"
    assert json.loads((tmp_path / "runs" / first["run_dir"].rsplit("/", 1)[-1] / "train" / "model"
                       / "model.json").read_text())["calibration"]["train_prior_from"] == "training split before sampling"

    # a config that trains badly (no warm start, learning rate 1e-9: an untrained network) is rejected
    _write_partition(lake, "2026-11-04", nxt, [400, 200, 100, 50], seed=4)
    bad = retrain(_cfg(tmp_path, "retrain.warm_start=false", "train.lr=1e-9", "train.epochs=1"))
    assert bad["status"] == "rejected" and bad["version"] == "3"
    assert any("worse" in r for r in bad["gate_reasons"])
    assert promotion.aliases(reg) == {"production": "2", "previous": "1"}   # no alias moved
    v3 = reg.client.get_model_version(reg.name, "3")
    assert v3.tags["gate.passed"] == "false" and v3.tags["verdict"] == "rejected"
    assert "replaced" not in v3.tags

    # production is served from the registry: models:/<name>@production loads the promoted network
    import mlflow  # deferred: heavy
    import mlflow.pyfunc
    import mlflow.pytorch
    import torch
    mlflow.set_tracking_uri(reg.uri)
    mlflow_model = mlflow.pytorch.load_model(f"models:/{reg.name}@production")
    out = mlflow_model(torch.zeros((2, DIM)))
    assert tuple((out[0] if isinstance(out, (tuple, list)) else out).shape) == (2, N_CLASSES)

    # the nightly scoring job: `imbalance predict --model models:/<name>@production` writes the same corrected
    # probabilities as the run that trained it, and so does the registered model in Spark (spark_udf)
    from pipeline.cli import main

    v2_run = tmp_path / "runs" / second["run_dir"].rsplit("/", 1)[-1]
    scored = tmp_path / "scored"
    assert main(["predict", f"run.root={tmp_path / 'runs'}", "--model", f"models:/{reg.name}@production",
                 "--input", str(v2_run / "split" / "test"), "--out", str(scored)]) == 0
    ours = pq.read_table(scored).to_pandas().sort_values("id").reset_index(drop=True)
    theirs = pq.read_table(v2_run / "predict" / "test").to_pandas().sort_values("id").reset_index(drop=True)
    assert ours["id"].tolist() == theirs["id"].tolist()
    np.testing.assert_allclose(np.stack(ours["probs_corrected"]), np.stack(theirs["probs_corrected"]), rtol=1e-9)
    assert not np.allclose(np.stack(ours["probs_corrected"]), np.stack(ours["probs"]))   # a correction applied
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{reg.name}@production", result_type="array<double>",
                                  env_manager="local")
    served = (spark.read.parquet(str(v2_run / "split" / "test")).select("id", udf("features").alias("p"))
              .toPandas().sort_values("id").reset_index(drop=True))
    np.testing.assert_allclose(np.stack(served["p"]), np.stack(ours["probs_corrected"]), rtol=1e-6, atol=1e-9)
    assert main(["predict", f"run.root={tmp_path / 'runs'}", "--model", f"models:/{reg.name}@production",
                 "--input", str(v2_run / "split" / "test"), "--out", str(tmp_path / "raw"), "--raw"]) == 0
    assert pq.read_table(tmp_path / "raw").column_names == ["id", "label", "probs", "pred"]

    # rollback through the aliases: production back to 1
    assert promotion.rollback(reg, "ops") == "1"
    assert promotion.aliases(reg) == {"production": "1"}


def test_class_drift_distances():
    d = class_drift({"a": 50, "b": 50}, {"a": 90, "b": 10})
    assert d["total_variation"] == pytest.approx(0.4)
    assert 0 < d["jensen_shannon"] < 1
    assert d["rho_before"] == 1 and d["rho_after"] == 9
    d = class_drift({"a": 5}, {"a": 5, "c": 5})
    assert d["new_classes"] == ["c"]
