"""Exact distributed sampling on real local Spark: counts, multiplicities, partition independence."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.schema import DatasetInfo, read_info, write_info
from pipeline.errors import InputError
from pipeline.prep.sampling import sample_dataset

COUNTS = {0: 1200, 1: 430, 2: 260, 3: 97, 4: 13}


def _rows(counts: dict, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * sum(counts.values()))[: sum(counts.values())] + 5  # sparse, unordered
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return [(int(i), int(y), float(rng.normal()), bytes([int(y)]) * 4) for i, y in zip(ids, labels)]


def _write(spark, rows, path, files: int, id_type: str = "long", info: bool = True):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(rows, "id long, label long, x double, image binary")
    df = df.withColumn("id", F.col("id").cast(id_type))
    # a different row order and file count for each copy
    df.repartition(files, F.rand(files)).write.mode("overwrite").parquet(str(path))
    if info:
        write_info(path, DatasetInfo(kind="image", n_classes=len({r[1] for r in rows}),
                                     image_shape=[2, 2],
                                     class_counts={str(k): v for k, v in Counter(r[1] for r in rows).items()}))
    return str(path)


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("sampling")
    rows = _rows(COUNTS)
    return {
        "rows": rows,
        "one": _write(spark, rows, base / "one", 1),
        # no _dataset.json here: the sampler must count the classes itself
        "many": _write(spark, rows, base / "many", 7, id_type="int", info=False),
        "base": base,
    }


def _read(spark, path):
    df = spark.read.parquet(str(path))
    return [(r["id"], r["label"], r["copy"]) for r in df.select("id", "label", "copy").collect()]


def _imblearn(counts, sampler, target):
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    y = np.concatenate([np.full(n, c) for c, n in counts.items()])
    cls = RandomUnderSampler if sampler == "rus" else RandomOverSampler
    _, yr = cls(sampling_strategy=target, random_state=0).fit_resample(y.reshape(-1, 1), y)
    got = Counter(yr.tolist())
    return {str(c): got.get(c, 0) for c in counts}


def _check_output(spark, out, rows, manifest):
    """Invariants of any sample output; returns {(id): multiplicity}."""
    got = _read(spark, f"{out}/data")
    pairs = [(i, c) for i, _, c in got]
    assert len(pairs) == len(set(pairs)), "(id, copy) must be unique"
    label_of = {r[0]: r[1] for r in rows}
    assert all(label_of[i] == y for i, y, _ in got), "rows keep their label"
    copies: dict = {}
    for i, c in pairs:
        copies.setdefault(i, []).append(c)
    assert all(sorted(cs) == list(range(len(cs))) for cs in copies.values()), \
        "copies of a row are numbered 0, 1, ..."
    mult = Counter(i for i, _, _ in got)
    achieved = Counter(str(y) for _, y, _ in got)
    assert manifest["achieved"] == {k: achieved.get(k, 0) for k in manifest["planned"]}
    assert manifest["achieved"] == manifest["planned"]
    assert manifest["output_rows"] == len(got)
    assert manifest["input_rows"] == len(rows)
    on_disk = json.loads((Path(out) / "manifest.json").read_text())
    assert on_disk["achieved"] == manifest["achieved"]
    return mult


# Every keyword's plan is checked against imbalanced-learn in tests/unit/test_sampling_plan.py;
# here a keyword and a dict run end to end through Spark.
@pytest.mark.parametrize("target", ["not majority", {"0": 500, "2": 100}])
def test_rus_matches_imblearn_and_never_repeats(spark, data, tmp_path, target):
    out = tmp_path / "out"
    m = sample_dataset(spark, data["many"], str(out), "rus", sampling_strategy=target, random_state=3)
    ref_target = {int(k): v for k, v in target.items()} if isinstance(target, dict) else target
    assert m["planned"] == _imblearn(COUNTS, "rus", ref_target)
    mult = _check_output(spark, out, data["rows"], m)
    assert set(mult.values()) == {1}, "RUS never repeats a row"
    got = _read(spark, out / "data")
    assert {c for _, _, c in got} == {0}
    # the kept rows are a hash-random subset of the class, not e.g. the smallest ids
    cls = 0 if isinstance(target, dict) else 1
    ids = sorted(r[0] for r in data["rows"] if r[1] == cls)
    kept = sorted(i for i, y, _ in got if y == cls)
    ranks = np.searchsorted(ids, kept) / len(ids)       # ~uniform on [0, 1) if random
    assert abs(ranks.mean() - 0.5) < 0.1 and ranks.min() < 0.1 and ranks.max() > 0.9


@pytest.mark.parametrize("target", ["auto", {"4": 100, "3": 300}])
def test_ros_matches_imblearn_keeps_all_rows_with_even_copies(spark, data, tmp_path, target):
    out = tmp_path / "out"
    m = sample_dataset(spark, data["one"], str(out), "ros", sampling_strategy=target, random_state=5)
    ref_target = {int(k): v for k, v in target.items()} if isinstance(target, dict) else target
    assert m["planned"] == _imblearn(COUNTS, "ros", ref_target)
    mult = _check_output(spark, out, data["rows"], m)
    assert set(mult) == {r[0] for r in data["rows"]}, "ROS keeps every original row"
    for cls, n in COUNTS.items():
        want = m["planned"][str(cls)]
        got = {mult[r[0]] for r in data["rows"] if r[1] == cls}
        assert got <= {want // n, -(-want // n)}, f"class {cls}: multiplicities {got}"


def test_binary_float_target(spark, data, tmp_path):
    rows = [r for r in data["rows"] if r[1] in (0, 3)]
    src = _write(spark, rows, tmp_path / "bin", 3)
    for sampler in ("rus", "ros"):
        m = sample_dataset(spark, src, str(tmp_path / sampler), sampler, sampling_strategy=0.5, random_state=1)
        assert m["planned"] == _imblearn({0: 1200, 3: 97}, sampler, 0.5)
        _check_output(spark, tmp_path / sampler, rows, m)


@pytest.mark.parametrize("strategy,kw,want", [
    ("threshold", dict(cap=300), {0: 300, 1: 300, 2: 260, 3: 97, 4: 13}),
    ("floor", dict(floor=200), {0: 1200, 1: 430, 2: 260, 3: 200, 4: 200}),
    ("hybrid", dict(cap=400, floor=150), {0: 400, 1: 400, 2: 260, 3: 150, 4: 150}),
])
def test_threshold_floor_hybrid(spark, data, tmp_path, strategy, kw, want):
    out = tmp_path / "out"
    m = sample_dataset(spark, data["one"], str(out), strategy, random_state=2, **kw)
    assert m["planned"] == {str(k): v for k, v in want.items()}
    mult = _check_output(spark, out, data["rows"], m)
    for cls, n in COUNTS.items():
        ids = [r[0] for r in data["rows"] if r[1] == cls]
        kept = [i for i in ids if i in mult]
        if want[cls] <= n:  # reduced or unchanged: distinct rows only
            assert len(kept) == want[cls] and all(mult[i] == 1 for i in kept)
        else:               # raised: every row kept, copies differ by at most one
            assert len(kept) == n
            assert {mult[i] for i in kept} <= {want[cls] // n, -(-want[cls] // n)}
    # the table description travels with the data, with the new class sizes
    info = read_info(out / "data")
    assert info.class_counts == m["achieved"] and info.image_shape == [2, 2]


def _pairs(spark, path):
    return sorted((i, c) for i, _, c in _read(spark, f"{path}/data"))


def test_partition_independent_and_seeded(spark, data, tmp_path):
    # hybrid exercises both paths: classes 0, 1 are under-sampled, 3, 4 over-sampled, 2 kept
    strategy, kw = "hybrid", dict(cap=350, floor=120)
    a = sample_dataset(spark, data["one"], str(tmp_path / "a"), strategy, random_state=11, **kw)
    b = sample_dataset(spark, data["many"], str(tmp_path / "b"), strategy, random_state=11, **kw)
    assert a["achieved"] == b["achieved"]
    assert _pairs(spark, tmp_path / "a") == _pairs(spark, tmp_path / "b"), \
        "1-file and 7-file copies must give the same rows"
    # the two ways of finding thresholds select exactly the same rows: the one-pass candidate
    # window (default) and key histograms — here 1-bit bins refined level by level until a
    # boundary holds <= 20 rows
    d = sample_dataset(spark, data["many"], str(tmp_path / "d"), strategy, random_state=11,
                       method="histogram", **kw)
    assert "histogram" in d["method"] and "one-pass" in a["method"]
    assert d["achieved"] == a["achieved"]
    assert _pairs(spark, tmp_path / "d") == _pairs(spark, tmp_path / "a")
    c = sample_dataset(spark, data["one"], str(tmp_path / "c"), strategy, random_state=12, **kw)
    assert c["achieved"] == a["achieved"]
    assert _pairs(spark, tmp_path / "c") != _pairs(spark, tmp_path / "a"), "the seed matters"


def test_stale_dataset_json_counts_are_not_trusted(spark, data, tmp_path):
    rows = data["rows"]
    src = _write(spark, rows, tmp_path / "src", 2)
    info = read_info(src)
    info.class_counts = {"0": 50, "1": 50}                  # wrong, and a class missing
    write_info(src, info)
    m = sample_dataset(spark, src, str(tmp_path / "o"), "rus", sampling_strategy="all", random_state=11)
    assert m["input_counts"] == {str(k): v for k, v in COUNTS.items()}
    assert m["achieved"] == {str(k): 13 for k in COUNTS} and "stale" in m["method"]
    ref = sample_dataset(spark, data["many"], str(tmp_path / "r"), "rus", sampling_strategy="all", random_state=11)
    assert _pairs(spark, tmp_path / "o") == _pairs(spark, tmp_path / "r")


def test_ros_extra_copies_follow_the_rus_rule(spark, data, tmp_path):
    """ROS's (N mod n) extra copies go to the rows RUS would keep for a target of N mod n."""
    n = COUNTS[3]
    sample_dataset(spark, data["one"], str(tmp_path / "ros"), "ros", sampling_strategy={"3": 2 * n + 40}, random_state=9)
    sample_dataset(spark, data["one"], str(tmp_path / "rus"), "rus", sampling_strategy={"3": 40}, random_state=9)
    ros = Counter(i for i, y, _ in _read(spark, tmp_path / "ros" / "data") if y == 3)
    rus = {i for i, y, _ in _read(spark, tmp_path / "rus" / "data") if y == 3}
    assert {i for i, m in ros.items() if m == 3} == rus and len(rus) == 40


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("case,message", [
    ("no_label", "no label column 'label'"),
    ("empty", "no rows"),
    ("single", "at least 2 classes"),
    ("missing", "input not found"),
    ("grow", "rus cannot grow class 1:"),
    ("strategy", "unknown sampling strategy"),
    ("negative_cap", "--cap must be at least 1"),
    ("null_label", "null label"),
])
def test_bad_input_raises_and_writes_nothing(spark, data, tmp_path, case, message):
    src, strategy, kw = data["one"], "rus", {}
    if case == "no_label":
        spark.createDataFrame([(1, 0)], "id long, y long").write.parquet(str(tmp_path / "in"))
        src = str(tmp_path / "in")
    elif case == "empty":
        spark.createDataFrame([], "id long, label long").write.parquet(str(tmp_path / "in"))
        src = str(tmp_path / "in")
    elif case == "single":
        spark.createDataFrame([(i, 7) for i in range(20)], "id long, label long").write.parquet(str(tmp_path / "in"))
        src = str(tmp_path / "in")
    elif case == "null_label":
        spark.createDataFrame([(1, 0), (2, None), (3, 1)], "id long, label long").write.parquet(str(tmp_path / "in"))
        src = str(tmp_path / "in")
    elif case == "missing":
        src = str(tmp_path / "nope")
    elif case == "grow":
        kw = dict(sampling_strategy={"1": 10_000})
    elif case == "strategy":
        strategy = "smote"
    elif case == "negative_cap":
        strategy, kw = "threshold", dict(cap=-3)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        sample_dataset(spark, src, str(out), strategy, **kw)
    assert not out.exists(), "a failed sample leaves no output and no manifest"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temp dirs left"


def test_failure_keeps_previous_output(spark, data, tmp_path):
    out = tmp_path / "out"
    sample_dataset(spark, data["one"], str(out), "rus", random_state=1)
    before = (out / "manifest.json").read_text()
    with pytest.raises(InputError):
        sample_dataset(spark, data["one"], str(out), "ros", sampling_strategy={"0": 5})
    assert (out / "manifest.json").read_text() == before


def test_cli_exit_codes(spark, data, tmp_path, capsys):
    from pipeline.cli import main

    rc = main(["sample", "--input", data["many"], "--strategy", "hybrid", "--cap", "300",
               "--floor", "100", "--seed", "1", "--out", str(tmp_path / "ok")])
    printed = capsys.readouterr().out
    assert rc == 0 and "rows 2000 -> 1060" in printed and (tmp_path / "ok" / "manifest.json").is_file()
    assert (tmp_path / "ok" / "data").is_dir()

    for args in (["--strategy", "bogus"], ["--strategy", "rus", "--target", '{"0": 99999}'],
                 ["--strategy", "ros", "--target", "0.5"], ["--strategy", "threshold", "--cap", "-1"]):
        out = tmp_path / "bad"
        rc = main(["sample", "--input", data["many"], "--out", str(out), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2, args
        assert err.startswith("imbalance sample: error:") and len(err.splitlines()) == 1, err
        assert not out.exists()
