"""Materialization for streaming: shuffled, chunked Parquet read back through Petastorm shards."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.schema import DatasetInfo, read_info, write_info
from pipeline.errors import InputError
from pipeline.io import file_url, read_json
from pipeline.stream.materialize import materialize
from pipeline.prep.sampling import sample_dataset

COUNTS = {0: 1500, 1: 300, 2: 40}


@pytest.fixture(scope="module")
def sampled(spark, tmp_path_factory):
    """A ROS output: class 2 rows copied ~37 times each (the case where copies could cluster)."""
    base = tmp_path_factory.mktemp("materialize")
    rng = np.random.default_rng(0)
    rows, i = [], 0
    for label, n in COUNTS.items():
        for _ in range(n):
            rows.append((i, label, rng.bytes(64)))
            i += 1
    src = base / "src"
    spark.createDataFrame(rows, "id long, label long, image binary").coalesce(2) \
        .write.parquet(str(src))
    write_info(src, DatasetInfo(kind="image", n_classes=3, image_shape=[8, 8]))
    sample_dataset(spark, str(src), str(base / "s"), "ros", random_state=0)
    return base, str(base / "s" / "data")


def _file_order(path) -> list:
    """(id, copy) in storage order, file by file."""
    out = []
    for f in sorted(Path(path).glob("*.parquet")):
        t = pq.read_table(f, columns=["id", "copy"])
        out += list(zip(t.column("id").to_pylist(), t.column("copy").to_pylist()))
    return out


def _read_shard(url: str, shard: int, shards: int) -> list:
    from petastorm import make_batch_reader

    got = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with make_batch_reader(url, cur_shard=shard, shard_count=shards, num_epochs=1,
                               shuffle_row_groups=True, seed=1, reader_pool_type="thread",
                               workers_count=2, schema_fields=["id", "copy", "label"]) as reader:
            for batch in reader:
                got += list(zip(batch.id.tolist(), batch.copy.tolist()))
    return got


def test_petastorm_two_shards_read_every_row_once(spark, sampled, tmp_path):
    base, data = sampled
    out = tmp_path / "mat"
    stats = materialize(spark, data, str(out), seed=7, row_group_mb=0.05, min_files=4)
    total = sum(COUNTS[0] for _ in range(3))   # ROS auto: every class raised to the majority
    assert stats["rows"] == total
    assert stats["files"] >= 4 and stats["files"] % 4 == 0, "a multiple of min_files"
    assert stats["row_groups"] == stats["files"], "one row group per file"
    # equal row groups, so that round-robin sharding gives every worker the same share
    assert stats["max_row_group_rows"] <= 1.25 * stats["min_row_group_rows"], stats
    assert stats["mb_per_s"] > 0 and stats["bytes"] > 0
    assert read_json(out / "_materialize.json")["rows"] == total
    assert read_info(out).image_shape == [8, 8]        # the description travels with the data

    want = _file_order(out)
    assert len(want) == total and len(set(want)) == total
    shards = [_read_shard(file_url(out), i, 2) for i in range(2)]
    assert all(shards), "both shards get rows"
    assert not set(shards[0]) & set(shards[1]), "shards are disjoint"
    assert Counter(shards[0] + shards[1]) == Counter(want), "every (id, copy) exactly once"
    assert abs(len(shards[0]) - len(shards[1])) <= 0.15 * total, "balanced shards"


def test_rows_are_shuffled_and_copies_do_not_cluster(spark, sampled, tmp_path):
    base, data = sampled
    materialize(spark, data, str(tmp_path / "a"), seed=3, row_group_mb=0.05, min_files=4)
    order = _file_order(tmp_path / "a")
    ids = [i for i, _ in order]
    # the 40 rows of class 2 are copied ~37 times each; stored in hash order, a row's copies
    # are spread out: adjacent equal ids should be about as rare as by chance (~1/40 of rows)
    adjacent_same = sum(a == b for a, b in zip(ids, ids[1:]))
    assert adjacent_same < 0.02 * len(ids), adjacent_same
    # and the copies of a rare row land in several files
    per_file = {}
    for f in sorted(Path(tmp_path / "a").glob("*.parquet")):
        for i in pq.read_table(f, columns=["id"]).column("id").to_pylist():
            per_file.setdefault(i, set()).add(f.name)
    rare = [i for i in per_file if i >= COUNTS[0] + COUNTS[1]]
    assert min(len(per_file[i]) for i in rare) >= 3
    # labels are mixed, not in class blocks
    first = pq.read_table(sorted(Path(tmp_path / "a").glob("*.parquet"))[0], columns=["label"])
    assert len(set(first.column("label").to_pylist()[:200])) == 3

    # the layout depends only on (data, seed)
    materialize(spark, data, str(tmp_path / "b"), seed=3, row_group_mb=0.05, min_files=4)
    assert _file_order(tmp_path / "b") == order
    materialize(spark, data, str(tmp_path / "c"), seed=4, row_group_mb=0.05, min_files=4)
    assert _file_order(tmp_path / "c") != order


def test_unsampled_input_and_bad_input(spark, sampled, tmp_path):
    base, _ = sampled
    stats = materialize(spark, str(base / "src"), str(tmp_path / "m"), files=3)
    assert stats["files"] == 3 and stats["rows"] == sum(COUNTS.values())
    assert set(pq.read_table(tmp_path / "m").column("copy").to_pylist()) == {0}
    with pytest.raises(InputError, match="input not found"):
        materialize(spark, str(tmp_path / "nope"), str(tmp_path / "x"))
    with pytest.raises(InputError, match="row_group_mb"):
        materialize(spark, str(base / "src"), str(tmp_path / "x"), row_group_mb=0)
    assert not (tmp_path / "x").exists()
