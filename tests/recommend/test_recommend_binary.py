"""``imbalance recommend`` on rare-event binary data with a ranking metric (recall at precision 0.5).

The decision is checked against scikit-learn: every candidate's score is the mean over its seeds
of the exact metric of its models' validation predictions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from tests.recommend.recommend_cli import ROOT, recommend

CONFIG = ROOT / "conf" / "rare.yaml"
METRIC = "binary.recall_at_precision.0.5"
METHODS = ("[{name: baseline}, {name: ros, overrides: {sample.strategy: ros}}, "
           "{name: weighted_ce, overrides: {train.loss: weighted_ce}}]")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return recommend(CONFIG, tmp_path_factory.mktemp("binary"), "data.rows=20000", "data.positive_rate=0.02",
                     "spark.shuffle_partitions=4", "spark.driver_memory=2g", "sample.strategy=none",
                     "stream.row_group_mb=0.5", "train.epochs=3", "train.num_workers=0", f"recommend.metric={METRIC}",
                     f"recommend.methods={METHODS}", "recommend.seeds=[0, 1]", "recommend.finalists=2")


def _recall_at_precision(path: Path, spark) -> float:
    df = spark.read.parquet(str(path)).select("label", "probs").toPandas()
    prec, rec, _ = precision_recall_curve(df["label"], np.stack(df["probs"].to_numpy())[:, 1])
    return float(np.max(np.where(prec >= 0.5, rec, 0.0)))


def test_the_ranking_metric_decides_and_threshold_moving_is_not_a_variant(binary):
    rec = binary["rec"]
    assert rec["metric"] == METRIC
    assert {c["name"] for c in rec["candidates"]} == {"baseline", "ros", "weighted_ce"}   # no "+prior": same ranking
    assert abs(sum(c["p_best"] for c in rec["candidates"]) - 1) < 1e-9
    assert binary["search"]["metric"] == "val_pr_auc"                # the search cuts on PR AUC per epoch


def test_every_score_is_the_exact_metric_of_the_validation_predictions(binary, spark):
    out = binary["out"]
    for c in binary["rec"]["candidates"]:
        exact = [_recall_at_precision(out / "predictions" / f"{c['name']}__s{s}", spark) for s in (0, 1)]
        assert c["score"] == pytest.approx(np.mean(exact), abs=1e-12), c["name"]
        assert c["ci"][0] <= c["ci"][1]
