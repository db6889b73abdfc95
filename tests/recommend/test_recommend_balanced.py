"""``imbalance recommend`` on balanced digits, where no imbalance method should matter.

The claim it makes on validation must be modest (not confident, or a small gain), and a held-out
check must agree: the recommended method's models and the baseline's, scored on the test split
that ``recommend`` never read, differ by about as little as the claim says.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.recommend.recommend_cli import ROOT, recommend

CONFIG = ROOT / "conf" / "recommend-digits.yaml"
SMALL_GAIN = 0.03      # macro F1: about one digit in thirty more or less often right per class


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    return recommend(CONFIG, tmp_path_factory.mktemp("balanced"), "data.protocol=null", "train.epochs=6",
                     "recommend.seeds=[0, 1, 2]", "recommend.finalists=2")


def _test_score(spark, out: Path, candidate: dict, tmp: Path) -> float:
    """The mean over the candidate's seeds of its models' test macro F1 (the prior-moved rule when it has one)."""
    from pipeline.train.predict import predict

    manifest = json.loads(next((out / "sets").glob("*/sample/manifest.json")).read_text())
    priors = np.array([float(manifest["achieved"][str(c)]) for c in range(10)])
    scores = []
    for k, model in enumerate(candidate["models"]):
        p = predict(spark, model, str(out / "data" / "split" / "test"), str(tmp / f"{candidate['name']}-{k}"))
        df = spark.read.parquet(p).select("label", "pred", "probs").toPandas()
        pred = df["pred"].to_numpy()
        if candidate["overrides"].get("evaluate.threshold_moving") == "prior":
            pred = np.argmax(np.stack(df["probs"].to_numpy()) / (priors / priors.sum()), axis=1)
        scores.append(f1_score(df["label"], pred, average="macro"))
    return float(np.mean(scores))


def test_balanced_data_gets_the_small_space(balanced):
    assert balanced["rec"]["searched"] == ["baseline", "weighted_ce", "focal_g2"]


def test_the_claim_on_balanced_data_is_modest(balanced):
    rec = balanced["rec"]
    assert not rec["confident"] or rec["gain"]["mean"] < SMALL_GAIN, rec["gain"]
    if not rec["confident"]:
        assert rec["best"]["name"] == "baseline" and "No method beats the baseline" in rec["message"]


def test_a_held_out_check_agrees_with_the_claim(balanced, spark, tmp_path):
    rec, out = balanced["rec"], balanced["out"]
    by_name = {c["name"]: c for c in rec["candidates"]}
    top = by_name[rec["highest_scoring"]]
    held_out = _test_score(spark, out, top, tmp_path) - _test_score(spark, out, by_name["baseline"], tmp_path)
    assert abs(held_out) < SMALL_GAIN, held_out
    lo, hi = rec["gain"]["ci"]
    assert lo - SMALL_GAIN <= held_out <= hi + SMALL_GAIN, (held_out, rec["gain"])
