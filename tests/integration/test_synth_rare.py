"""The ``rare`` synth preset on real local Spark: schema, exact positives, ids, same seed same table."""
from __future__ import annotations

import json

import numpy as np

from pipeline.data.synth import synthesize

ROWS, RATE = 20_000, 0.003


def test_synth_rare_table(spark, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    info = synthesize(spark, "rare", ROWS, seed=5, out=str(a), partitions=3, positive_rate=RATE, features=12)
    assert info["class_counts"] == [ROWS - 60, 60] and info["n_classes"] == 2
    df = spark.read.parquet(str(a))
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("id", "bigint"), ("label", "bigint"), ("features", "array<float>")]
    assert {r[0]: r[1] for r in df.groupBy("label").count().collect()} == {0: ROWS - 60, 1: 60}
    ids = df.select("id").toPandas()["id"].to_numpy()
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    assert {r[0] for r in df.selectExpr("size(features)").distinct().collect()} == {12}
    meta = json.loads((a / "_dataset.json").read_text())
    assert meta["kind"] == "features" and meta["n_features"] == 12 and meta["class_counts"] == {"0": ROWS - 60, "1": 60}

    synthesize(spark, "rare", ROWS, seed=5, out=str(b), partitions=3, positive_rate=RATE, features=12)
    da = spark.read.parquet(str(a)).orderBy("id").toPandas()
    db = spark.read.parquet(str(b)).orderBy("id").toPandas()
    assert da["label"].tolist() == db["label"].tolist()
    assert np.array_equal(np.stack(da["features"]), np.stack(db["features"]))
