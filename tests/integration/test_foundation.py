"""Foundation on real local Spark: synth, profile, split, protocols, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.prep.protocols import impose_protocol
from pipeline.data.synth import plankton_class_counts, synthesize
from pipeline.prep.profile import profile
from pipeline.errors import InputError
from pipeline.prep.split import split_dataset


def _write_features(path, ids, labels, dim=4, n_files=1, seed=0):
    """A features table written by pyarrow (not Spark) in ``n_files`` files."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(ids), dim)).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    order = rng.permutation(len(ids))
    for k, chunk in enumerate(np.array_split(order, n_files)):
        t = pa.table({"id": pa.array(np.asarray(ids)[chunk], pa.int64()),
                      "label": pa.array([labels[i] for i in chunk]),
                      "features": pa.array([x[i].tolist() for i in chunk], pa.list_(pa.float32()))})
        pq.write_table(t, path / f"part-{k:03d}.parquet")
    return x


@pytest.fixture(scope="module")
def plankton_small(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "plankton"
    info = synthesize(spark, "plankton", rows=6000, seed=1, out=str(out), partitions=3)
    return out, info


def test_synth_plankton_proportions_and_images(spark, plankton_small):
    out, info = plankton_small
    df = spark.read.parquet(str(out))
    counts = {r[0]: r[1] for r in df.groupBy("label").count().collect()}
    expected = plankton_class_counts(6000)
    assert [counts[i] for i in range(103)] == expected.tolist()
    assert df.select("id").distinct().count() == 6000
    lengths = {r[0] for r in df.selectExpr("length(image)").distinct().collect()}
    assert lengths == {32 * 32}
    meta = json.loads((out / "_dataset.json").read_text())
    assert meta["kind"] == "image" and meta["image_shape"] == [32, 32] and meta["n_classes"] == 103
    # classes differ in their pixels: mean images of the two largest classes are far apart
    pdf = df.where("label < 2").limit(400).toPandas()
    imgs = np.stack([np.frombuffer(b, np.uint8) for b in pdf["image"]]).astype(float)
    m0, m1 = imgs[pdf["label"] == 0].mean(0), imgs[pdf["label"] == 1].mean(0)
    assert np.abs(m0 - m1).mean() > 5


def test_synth_same_seed_same_data(spark, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(spark, "tabular", rows=500, seed=7, out=str(a), partitions=2)
    synthesize(spark, "tabular", rows=500, seed=7, out=str(b), partitions=2)
    da = spark.read.parquet(str(a)).orderBy("id").toPandas()
    db = spark.read.parquet(str(b)).orderBy("id").toPandas()
    assert da["label"].tolist() == db["label"].tolist()
    assert np.allclose(np.stack(da["features"]), np.stack(db["features"]))


def test_profile_matches_numpy(spark, plankton_small, tmp_path):
    src, _ = plankton_small
    dist = profile(spark, str(src), str(tmp_path / "prof"))
    labels = spark.read.parquet(str(src)).select("label").toPandas()["label"].to_numpy()
    bc = np.bincount(labels)
    assert dist["n_rows"] == len(labels) and dist["n_classes"] == 103
    assert dist["rho"] == pytest.approx(bc.max() / bc.min())
    assert dist["classes"][0] == {"label": int(bc.argmax()), "count": int(bc.max()), "fraction": bc.max() / len(labels)}
    on_disk = json.loads((tmp_path / "prof" / "distribution.json").read_text())
    assert on_disk["rho"] == dist["rho"]
    assert (tmp_path / "prof" / "class_distribution.png").stat().st_size > 1000


def test_profile_string_labels_and_labels_json(spark, tmp_path):
    ids = np.arange(30)
    labels = ["cat"] * 20 + ["ant"] * 7 + ["bee"] * 3
    _write_features(tmp_path / "t", ids, labels)
    dist = profile(spark, str(tmp_path / "t"), str(tmp_path / "p"))
    assert dist["rho"] == pytest.approx(20 / 3)
    assert dist["minority_classes"] == ["bee", "ant"]
    assert json.loads((tmp_path / "p" / "labels.json").read_text())["labels"] == ["ant", "bee", "cat"]


def _split_rows(spark, out):
    rows = {}
    for name in ("train", "val", "test"):
        for r in spark.read.parquet(str(out / name)).select("id", "label").collect():
            rows[r[0]] = (name, r[1])
    return rows


def test_split_exact_and_partition_independent(spark, tmp_path):
    rng = np.random.default_rng(3)
    sizes = [5000, 700, 41, 9, 3]
    labels = np.repeat(np.arange(5), sizes)
    ids = rng.choice(10**9, size=len(labels), replace=False)
    _write_features(tmp_path / "one", ids, labels.tolist(), n_files=1)
    _write_features(tmp_path / "many", ids, labels.tolist(), n_files=13, seed=9)
    s1 = split_dataset(spark, str(tmp_path / "one"), str(tmp_path / "s1"), val=0.1, test=0.2, seed=5)
    s2 = split_dataset(spark, str(tmp_path / "many"), str(tmp_path / "s2"), val=0.1, test=0.2, seed=5)
    for c, n in enumerate(sizes):
        test_n = int(np.floor(n * 0.2 + 0.5))
        val_n = int(np.floor(n * 0.1 + 0.5))
        assert s1["counts"]["test"][str(c)] == test_n
        assert s1["counts"]["val"][str(c)] == val_n
        assert s1["counts"]["train"][str(c)] == n - test_n - val_n
    r1, r2 = _split_rows(spark, tmp_path / "s1"), _split_rows(spark, tmp_path / "s2")
    assert r1 == r2 and len(r1) == len(ids)
    s3 = split_dataset(spark, str(tmp_path / "one"), str(tmp_path / "s3"), val=0.1, test=0.2, seed=6)
    assert _split_rows(spark, tmp_path / "s3") != r1          # another seed, another split


@pytest.mark.parametrize("val,test", [(0.1, 0.2), (0.0, 0.3)])
def test_split_rows_are_the_smallest_hash_ranks(spark, tmp_path, val, test):
    """Per class, test = the round(n·test) rows of smallest (xxhash64(seed, '', id), id), then val."""
    from pyspark.sql import functions as F

    rng = np.random.default_rng(4)
    sizes = [9000, 700, 41, 9, 3]                 # the largest class is ranked over several hash bins
    labels = np.repeat(np.arange(5), sizes)
    ids = rng.choice(10**9, size=len(labels), replace=False)
    _write_features(tmp_path / "src", ids, labels.tolist(), n_files=4)
    split_dataset(spark, str(tmp_path / "src"), str(tmp_path / "out"), val=val, test=test, seed=7)
    got = _split_rows(spark, tmp_path / "out")
    keyed = (spark.read.parquet(str(tmp_path / "src"))
             .select("id", "label", F.xxhash64(F.lit(7), F.lit(""), F.col("id")).alias("k")).toPandas())
    for c, n in enumerate(sizes):
        part = keyed[keyed.label == c].sort_values(["k", "id"])
        n_test, n_val = int(np.floor(n * test + 0.5)), int(np.floor(n * val + 0.5))
        want = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        assert [got[i][0] for i in part.id] == want


def test_split_with_bad_features_equals_the_split_without_them(spark, tmp_path):
    """Rows failing a features check are found only when written: the split is then redone exactly."""
    rng = np.random.default_rng(6)
    labels = np.repeat([0, 1], [300, 40])
    ids = rng.choice(10**9, size=len(labels), replace=False)
    _write_features(tmp_path / "clean", ids[5:], labels[5:].tolist(), n_files=2)
    _write_features(tmp_path / "dirty", ids, labels.tolist(), n_files=3)
    t = pq.read_table(tmp_path / "dirty")
    bad_ids = set(ids[:5].tolist())
    feats = [[float("nan"), 0.0, 0.0, 0.0] if i in bad_ids else f
             for i, f in zip(t.column("id").to_pylist(), t.column("features").to_pylist())]
    for f in (tmp_path / "dirty").iterdir():
        f.unlink()
    pq.write_table(t.set_column(2, "features", pa.array(feats, pa.list_(pa.float32()))),
                   tmp_path / "dirty" / "p.parquet")
    s_clean = split_dataset(spark, str(tmp_path / "clean"), str(tmp_path / "a"), val=0.1, test=0.2, seed=1)
    s_dirty = split_dataset(spark, str(tmp_path / "dirty"), str(tmp_path / "b"), val=0.1, test=0.2, seed=1)
    assert s_dirty["counts"] == s_clean["counts"] and s_dirty["counts"]["test"]["0"] == 59   # round(295 * 0.2)
    assert _split_rows(spark, tmp_path / "a") == _split_rows(spark, tmp_path / "b")
    assert s_dirty["rejected"] == 5 and s_dirty["rejected_reasons"] == {"NaN feature": 5}


def test_split_rejects_invalid_rows_with_reasons(spark, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    t = pa.table({
        "id": pa.array([1, 2, 3, 4, 5, 6, 6, 8, 9, 10], pa.int64()),
        "label": pa.array(["a", None, "b", "a", "b", "a", "b", "a", "b", "a"]),
        "features": pa.array([[0.0, 1.0], [0.0, 1.0], [float("nan"), 1.0], [float("inf"), 0.0], None,
                              [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 1.0], [2.0, 2.0]], pa.list_(pa.float32())),
    })
    pq.write_table(t, d / "p.parquet")
    s = split_dataset(spark, str(d), str(tmp_path / "out"), val=0.0, test=0.0)
    rej = sorted(map(tuple, spark.read.parquet(str(tmp_path / "out" / "rejected"))
                     .select("id", "reason").toPandas().to_numpy().tolist()))
    assert rej == [(2, "null label"), (3, "NaN feature"), (4, "infinite feature"), (5, "missing features"),
                   (6, "duplicate id"), (6, "duplicate id")]
    assert s["rejected"] == 6  # both rows of the duplicated id
    assert sum(s["counts"]["train"].values()) == 4
    assert s["labels"] == ["a", "b"]


def test_split_keeps_existing_split_column(spark, tmp_path):
    d = tmp_path / "pre"
    d.mkdir()
    n = 40
    t = pa.table({"id": pa.array(range(n), pa.int64()), "label": pa.array([i % 2 for i in range(n)]),
                  "features": pa.array([[float(i)] for i in range(n)], pa.list_(pa.float32())),
                  "split": pa.array(["train"] * 30 + ["val"] * 4 + ["test"] * 6)})
    pq.write_table(t, d / "p.parquet")
    s = split_dataset(spark, str(d), str(tmp_path / "o"))
    assert {k: sum(v.values()) for k, v in s["counts"].items()} == {"train": 30, "val": 4, "test": 6}
    assert s["presplit"] is True


def test_protocol_step_is_exact(spark, tmp_path):
    ids = np.arange(1000)
    labels = (ids % 10).tolist()
    _write_features(tmp_path / "bal", ids, labels)
    df = spark.read.parquet(str(tmp_path / "bal"))
    out = impose_protocol(df, "step", rho=10, mu=0.5, seed=2)
    counts = sorted(r[1] for r in out.groupBy("label").count().collect())
    assert counts == [10] * 5 + [100] * 5


@pytest.mark.parametrize("case", ["missing", "nolabel", "empty", "oneclass", "notparquet"])
def test_bad_input_exit_2_one_line(spark, tmp_path, capsys, case):
    src = tmp_path / "src"
    if case == "nolabel":
        src.mkdir()
        pq.write_table(pa.table({"id": [1, 2], "y": [0, 1]}), src / "p.parquet")
    elif case == "empty":
        src.mkdir()
        pq.write_table(pa.table({"id": pa.array([], pa.int64()), "label": pa.array([], pa.int64())}), src / "p.parquet")
    elif case == "oneclass":
        src.mkdir()
        pq.write_table(pa.table({"id": [1, 2, 3], "label": [4, 4, 4]}), src / "p.parquet")
    elif case == "notparquet":
        src.mkdir()
        (src / "data.parquet").write_text("id,label\n1,0\n")
    rc = main(["profile", "--input", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert not (tmp_path / "out").exists()
