"""The one hash-rank selection: both ways of finding the cut-off rows agree with a full sort."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.prep.keys import BUCKET, KEY, assign_buckets, bucket_col, exact_counts, rank_thresholds, with_hash_key


@pytest.fixture(scope="module")
def frame(spark):
    rng = np.random.default_rng(4)
    counts = {0: 5000, 1: 900, 2: 61, 3: 7}
    ids = rng.permutation(20 * sum(counts.values()))[: sum(counts.values())]
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return spark.createDataFrame([(int(i), int(y)) for i, y in zip(ids, labels)], "id int, label long").repartition(5)


def _brute_buckets(pdf, cutoffs):
    """Bucket of every row by sorting each class by (key, id): the definition."""
    out = {}
    for lab, grp in pdf.groupby("label"):
        grp = grp.sort_values([KEY, "id"])
        for rank, i in enumerate(grp["id"].tolist()):
            out[i] = sum(1 for k in cutoffs.get(lab, []) if rank >= k)
    return out


@pytest.mark.parametrize("widen", [False, True])
def test_window_and_bins_find_the_same_rows_as_a_sort(frame, widen):
    counts = exact_counts(frame, "label")
    cutoffs = {0: [1234], 1: [0], 2: [60], 3: [7]}
    keyed = with_hash_key(frame, 3, salt="t", widen=widen)
    by_window = rank_thresholds(keyed, "label", counts, cutoffs, method="window", widen=widen)
    by_bins = rank_thresholds(keyed, "label", counts, cutoffs, method="bins", widen=widen)
    assert by_window == by_bins
    got = keyed.withColumn(BUCKET, bucket_col(by_window, "label", id_type="bigint" if widen else "int"))
    rows = got.select("id", "label", KEY, BUCKET).toPandas()
    assert dict(zip(rows["id"], rows[BUCKET])) == _brute_buckets(rows, cutoffs)


def test_split_cutoffs_two_per_class_match_a_sort(frame):
    counts = exact_counts(frame, "label")
    cutoffs = {0: [500, 1500], 1: [90, 90], 2: [6, 12], 3: [1, 2]}
    rows = assign_buckets(frame, "label", counts, cutoffs, 8).select("id", "label", KEY, BUCKET).toPandas()
    assert dict(zip(rows["id"], rows[BUCKET])) == _brute_buckets(rows, cutoffs)
    with pytest.raises(ValueError):
        rank_thresholds(with_hash_key(frame, 8), "label", counts, cutoffs, method="window")
