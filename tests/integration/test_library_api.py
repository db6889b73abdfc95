"""The DataFrame-in / DataFrame-out library API of the prep stages, on a user's own DataFrame.

Each function is checked against an independent reference (imbalanced-learn's samplers for the
class counts, plain counting for the distribution) and against the path-based stage that calls it.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pyspark.sql import functions as F

from pipeline.prep import class_distribution, fit_resample, split_frame


@pytest.fixture(scope="module")
def user_df(spark):
    """A user's DataFrame: string labels, features, a unique id — no _dataset.json anywhere."""
    rng = np.random.default_rng(3)
    sizes = {"fraud": 12, "chargeback": 40, "ok": 600}
    rows, i = [], 0
    for lab, n in sizes.items():
        for _ in range(n):
            rows.append((i * 7 + 1, lab, [float(v) for v in rng.normal(size=3)]))
            i += 1
    rows.append((99_999, "ok", [float("nan"), 0.0, 1.0]))          # a bad row: quarantined, not dropped
    return spark.createDataFrame(rows, "id long, label string, features array<float>"), sizes


def test_class_distribution_counts_like_a_counter(user_df):
    df, sizes = user_df
    dist = class_distribution(df)
    ref = Counter(df.select("label").toPandas()["label"])
    assert {c["label"]: c["count"] for c in dist["classes"]} == dict(ref)
    assert dist["rho"] == max(ref.values()) / min(ref.values())
    assert [c["label"] for c in dist["classes"]] == [k for k, _ in ref.most_common()]


def test_split_frame_is_exact_per_class_and_quarantines(user_df):
    df, sizes = user_df
    split, rejected, summary = split_frame(df, val=0.1, test=0.25, random_state=5)
    assert rejected.count() == 1 and rejected.first()["reason"]
    got = split.groupBy("label", "split").count().toPandas()
    labels = summary["labels"]                                    # index -> original label
    for idx, lab in enumerate(labels):
        n = sizes[lab]
        per = dict(zip(got[got.label == idx]["split"], got[got.label == idx]["count"]))
        assert per.get("test", 0) == round(n * 0.25) and per.get("val", 0) == round(n * 0.1)
        assert sum(per.values()) == n
    again, _, _ = split_frame(df.repartition(7), val=0.1, test=0.25, random_state=5)
    key = lambda d: sorted(map(tuple, d.select("id", "split").collect()))  # noqa: E731
    assert key(again) == key(split)                               # partitioning does not matter


@pytest.mark.parametrize("strategy,imblearn_name", [("rus", "RandomUnderSampler"), ("ros", "RandomOverSampler")])
@pytest.mark.parametrize("sampling_strategy", ["auto", "not minority", "all", {}])
def test_fit_resample_counts_match_imbalanced_learn(user_df, strategy, imblearn_name, sampling_strategy):
    import imblearn.over_sampling
    import imblearn.under_sampling

    df, sizes = user_df
    df = df.where(~F.isnan(F.col("features")[0]))
    if isinstance(sampling_strategy, dict):       # RUS may only shrink a class, ROS only grow it
        sampling_strategy = ({"fraud": 10, "chargeback": 12, "ok": 12} if strategy == "rus"
                             else {"fraud": 30, "chargeback": 80, "ok": 600})
    if strategy == "ros" and sampling_strategy == "not minority":
        sampling_strategy = "not majority"
    sampled, plan = fit_resample(df, strategy, sampling_strategy=sampling_strategy, random_state=1)
    got = Counter(sampled.select("label").toPandas()["label"])
    y = np.array(sum(([k] * n for k, n in sizes.items()), []))
    mod = imblearn.under_sampling if strategy == "rus" else imblearn.over_sampling
    _, y_ref = getattr(mod, imblearn_name)(sampling_strategy=sampling_strategy, random_state=0).fit_resample(
        np.zeros((len(y), 1)), y)
    assert got == Counter(y_ref)
    assert {k: int(v) for k, v in plan.planned.items()} == dict(Counter(y_ref))
    assert sampled.select("id", "copy").distinct().count() == sampled.count()   # (id, copy) unique


def test_the_path_stage_writes_the_library_rows(spark, user_df, tmp_path):
    from pipeline.prep.sampling import sample_dataset

    df, _ = user_df
    df = df.where(~F.isnan(F.col("features")[0]))
    df.write.parquet(str(tmp_path / "table"))
    manifest = sample_dataset(spark, str(tmp_path / "table"), str(tmp_path / "out"), "ros", random_state=4)
    sampled, _ = fit_resample(spark.read.parquet(str(tmp_path / "table")), "ros", random_state=4)
    written = spark.read.parquet(str(tmp_path / "out" / "data"))
    rows = lambda d: sorted(map(tuple, d.select("id", "copy").collect()))  # noqa: E731
    assert rows(written) == rows(sampled)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["achieved"] == manifest["achieved"]
