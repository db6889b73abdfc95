"""Exact, deterministic per-class selection by hash rank — the primitive behind splits and sampling.

Every row gets a 64-bit key ``xxhash64(seed, id)``; within a class, rows are ordered by
``(key, id)``. A *cut-off* ``k`` selects the ``k`` rows of smallest rank. Finding ranks with a
window over a whole class would put the largest class in one task, and a global sort does not
scale, so ranks are found in two passes:

1. the key's top ``b_c`` bits give each row a bin (``b_c`` chosen per class so that a bin holds
   about ``TARGET_BIN_ROWS`` rows); Spark counts rows per ``(class, bin)`` — a small aggregate of
   about ``rows / TARGET_BIN_ROWS`` entries (capped at ``classes × 2**MAX_BITS``) — and the driver
   turns those counts into the cumulative rank at which each bin starts;
2. only the few bins that hold a cut-off (at most one per class and cut-off) are ranked exactly,
   with a window partitioned by ``(class, bin)`` over ~``TARGET_BIN_ROWS`` rows, to find the row
   sitting *at* each cut-off; those rows (one per class and cut-off) come back to the driver.

A row's rank reaches a cut-off exactly when its ``(key, id)`` is at least that row's, so the bucket
of every row is then a comparison with a handful of literals — a map-only column: the table itself
is never shuffled, joined or scanned twice for it (both passes can run on a narrow copy of the ids
and labels, ``assign_buckets(ranks_from=...)``).

The result depends only on (seed, id, label): not on partitioning, file layout or cluster size.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.prep.literals import int_lookup, map_sql, number_sql

TARGET_BIN_ROWS = 2000
MAX_BITS = 16
KEY = "_key"
BIN = "_bin"
BUCKET = "_bucket"


def with_hash_key(df: DataFrame, seed: int, id_col: str = "id", salt: str = "") -> DataFrame:
    """Add ``_key`` = xxhash64(seed, salt, id): a uniform 64-bit key per row."""
    return df.withColumn(KEY, F.xxhash64(F.lit(int(seed)), F.lit(salt), F.col(id_col)))


def bits_for(n: int) -> int:
    """Number of key bits used to bin a class of ``n`` rows."""
    if n <= TARGET_BIN_ROWS:
        return 0
    return min(MAX_BITS, math.ceil(math.log2(n / TARGET_BIN_ROWS)))


def _bin_col(label_col: str, bits: Mapping) -> F.Column:
    """Bin index of a row: the top ``b_c`` bits of its key (``b_c`` per class)."""
    b = int_lookup(label_col, bits)
    # An arithmetic shift keeps the signed order of the key; adding 2**(b-1) makes the bin
    # index non-negative and monotone in the key.
    shifted = F.expr(f"shiftright({KEY}, 64 - _bits) + shiftleft(1L, _bits - 1)")
    return F.when(b == 0, F.lit(0).cast("long")).otherwise(shifted), b


def rank_thresholds(keyed: DataFrame, label_col: str, class_counts: Mapping, cutoffs: Mapping,
                    id_col: str = "id") -> dict:
    """Per class, the rows that sit exactly at its cut-offs: ``{label: (always, [(key, id), ...])}``.

    ``keyed`` has the ``_key`` column (:func:`with_hash_key`). A cut-off ``k`` with ``0 < k < n_c``
    is represented by the row of rank ``k`` (order (key, id)); a row's rank reaches ``k`` exactly
    when its ``(key, id)`` is at least that row's. ``always`` counts the cut-offs ``k <= 0``
    (every row reaches them); cut-offs ``k >= n_c`` are reached by no row and are left out.
    Two small jobs: the (class, bin) counts, and a window over the few bins that hold a cut-off
    (~``TARGET_BIN_ROWS`` rows each); at most one row per class and cut-off reaches the driver.
    """
    spark = keyed.sparkSession
    bits = {lab: bits_for(int(n)) for lab, n in class_counts.items()}
    bin_col, bits_col = _bin_col(label_col, bits)
    binned = keyed.withColumn("_bits", bits_col).withColumn(BIN, bin_col).drop("_bits")

    # Pass 1: rows per (class, bin) — small.
    bin_counts = binned.groupBy(label_col, BIN).count().toPandas()
    targets = []          # (label, bin, rank inside the bin)
    plan: dict = {}
    for label, grp in bin_counts.groupby(label_col, sort=False):
        label = python_scalar(label)
        cuts = sorted(int(k) for k in cutoffs.get(label, []))
        plan[label] = (sum(1 for k in cuts if k <= 0), [])
        grp = grp.sort_values(BIN)
        start = 0
        for b, c in zip(grp[BIN].tolist(), grp["count"].tolist()):
            end = start + int(c)
            targets += [(label, int(b), k - start) for k in cuts if start <= k < end and k > 0]
            start = end
    if not targets:
        return plan
    # Pass 2: rank the rows of the bins that hold a cut-off; keep the row at each cut-off.
    schema = T.StructType([T.StructField(label_col, keyed.schema[label_col].dataType),
                           T.StructField(BIN, T.LongType()), T.StructField("_at", T.IntegerType())])
    wanted = spark.createDataFrame(targets, schema)
    w = Window.partitionBy(label_col, BIN).orderBy(KEY, id_col)
    edge = (binned.join(F.broadcast(wanted.select(label_col, BIN).distinct()), on=[label_col, BIN])
            .withColumn("_at", (F.row_number().over(w) - 1).cast("int")))
    at = {(python_scalar(r[0]), int(r[1]), int(r[2])): (int(r[3]), r[4]) for r in
          edge.join(F.broadcast(wanted.distinct()), on=[label_col, BIN, "_at"])
              .select(label_col, BIN, "_at", KEY, id_col).collect()}
    for label, b, rank in targets:       # a repeated cut-off (a zero fraction) is counted twice
        plan[label][1].append(at[(label, b, rank)])
    return plan


def bucket_col(plan: dict, label_col: str, id_col: str = "id", id_type=None) -> F.Column:
    """``_bucket`` from :func:`rank_thresholds`'s plan: how many cut-offs the row's rank reaches."""
    always = [(lab, a) for lab, (a, _) in plan.items() if a]
    bucket = F.lit(0)
    if always:
        bucket = int_lookup(label_col, dict(always))
    with_rows = [(lab, thr) for lab, (_, thr) in plan.items() if thr]
    if with_rows:
        id_sql = id_type.simpleString() if id_type is not None else "bigint"

        def rows_sql(thr):
            parts = []
            for k, i in thr:
                ks, is_ = number_sql(int(k), "bigint"), number_sql(i, id_sql)
                if is_ is None or is_ == "NULL":
                    return None
                parts.append(f"named_struct('k', {ks}, 'i', {is_})")
            return f"array({', '.join(parts)})"

        table = map_sql({lab: rows_sql(thr) for lab, thr in with_rows}, "bigint")
        if table is not None:
            thresholds = F.expr(table)
        else:
            pairs = []
            for lab, thr in with_rows:
                pairs += [F.lit(lab), F.array(*[F.struct(F.lit(int(k)).cast("long").alias("k"),
                                                         (F.lit(i).cast(id_type) if id_type is not None
                                                          else F.lit(i)).alias("i")) for k, i in thr])]
            thresholds = F.create_map(*pairs)
        key, rid = F.col(KEY), F.col(id_col)
        reached = F.aggregate(thresholds[F.col(label_col)], F.lit(0),
                              lambda acc, t: acc + F.when((key > t["k"]) | ((key == t["k"]) & (rid >= t["i"])), 1)
                              .otherwise(0))
        bucket = bucket + F.coalesce(reached, F.lit(0))
    return bucket.cast("int")


def assign_buckets(
    df: DataFrame,
    label_col: str,
    class_counts: Mapping,
    cutoffs: Mapping,
    seed: int,
    id_col: str = "id",
    salt: str = "",
    ranks_from: DataFrame | None = None,
) -> DataFrame:
    """Add ``_bucket`` (and ``_key``): for each row, how many of its class's cut-offs its rank reaches.

    ``cutoffs[label]`` is an ascending list of ranks (0 ≤ k ≤ n_c); a row of within-class rank r
    (0-based, order (key, id)) gets ``_bucket = #{k in cutoffs[label] : r >= k}``. Thus with
    cut-offs ``[n_test, n_test + n_val]`` bucket 0 is test, 1 val, 2 train; with ``[k]`` bucket
    0 is the k selected rows. Classes missing from ``cutoffs`` get bucket 0.
    ``class_counts`` must be the exact row counts per label of ``df``.

    The rows at the cut-offs are found first (:func:`rank_thresholds`, two small jobs); the
    bucket is then a per-row comparison with them, so ``df`` itself is never shuffled.
    ``ranks_from``: a narrow frame with the same rows (``id_col`` and ``label_col`` only, e.g.
    persisted) to find them on, instead of ``df``.
    """
    plan = rank_thresholds(with_hash_key(ranks_from if ranks_from is not None else df, seed, id_col, salt),
                           label_col, class_counts, cutoffs, id_col)
    keyed = with_hash_key(df, seed, id_col, salt)
    return keyed.withColumn(BUCKET, bucket_col(plan, label_col, id_col, df.schema[id_col].dataType))


def python_scalar(v):
    """numpy scalar → Python scalar (for dict keys and Spark literals)."""
    return v.item() if hasattr(v, "item") else v


def exact_counts(df: DataFrame, label_col: str) -> dict:
    """Exact row count per label (a small aggregate)."""
    return {python_scalar(r[0]): int(r[1]) for r in df.groupBy(label_col).count().collect()}


def split_cutoffs(class_counts: Mapping, fractions: Sequence[float]) -> dict:
    """Per-class cut-offs for splitting by fractions, each share rounded half up, exact per class.

    For fractions (test, val) a class of n rows gets ``round(n*test)`` test rows and
    ``round(n*val)`` val rows (never more than n together); the rest train.
    """
    out = {}
    for label, n in class_counts.items():
        acc, cuts = 0, []
        for f in fractions:
            k = int(math.floor(n * f + 0.5))
            acc = min(n, acc + k)
            cuts.append(acc)
        out[label] = cuts
    return out
