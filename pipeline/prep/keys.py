"""Exact, deterministic per-class selection by hash rank — the primitive behind splits and sampling.

Every row gets a 64-bit key ``xxhash64(seed, id)``; within a class, rows are ordered by
``(key, id)``. A *cut-off* ``k`` selects the ``k`` rows of smallest rank. Finding ranks with a
window over a whole class would put the largest class in one task, and a global sort does not
scale, so ranks are found in two passes:

1. the key's top ``b_c`` bits give each row a bin (``b_c`` chosen per class so that a bin holds
   about ``TARGET_BIN_ROWS`` rows); Spark counts rows per ``(class, bin)`` — a small aggregate of
   about ``rows / TARGET_BIN_ROWS`` entries (capped at ``classes × 2**MAX_BITS``) — and the driver
   turns those counts into the cumulative rank at which each bin starts;
2. a bin that contains no cut-off lies wholly on one side of every cut-off, so its rows get their
   bucket from the bin alone; only the few *boundary* bins (at most one per class and cut-off) are
   ranked exactly with a window partitioned by ``(class, bin)``, which holds ~``TARGET_BIN_ROWS``
   rows.

The result depends only on (seed, id, label): not on partitioning, file layout or cluster size.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
    pairs = []
    for label, b in bits.items():
        pairs += [F.lit(label), F.lit(int(b))]
    b = F.coalesce(F.create_map(*pairs)[F.col(label_col)], F.lit(0)) if pairs else F.lit(0)
    # An arithmetic shift keeps the signed order of the key; adding 2**(b-1) makes the bin
    # index non-negative and monotone in the key.
    shifted = F.expr(f"shiftright({KEY}, 64 - _bits) + shiftleft(1L, _bits - 1)")
    return F.when(b == 0, F.lit(0).cast("long")).otherwise(shifted), b


def assign_buckets(
    df: DataFrame,
    label_col: str,
    class_counts: Mapping,
    cutoffs: Mapping,
    seed: int,
    id_col: str = "id",
    salt: str = "",
) -> DataFrame:
    """Add ``_bucket``: for each row, how many of its class's cut-offs its rank reaches.

    ``cutoffs[label]`` is an ascending list of ranks (0 ≤ k ≤ n_c); a row of within-class rank r
    (0-based, order (key, id)) gets ``_bucket = #{k in cutoffs[label] : r >= k}``. Thus with
    cut-offs ``[n_test, n_test + n_val]`` bucket 0 is test, 1 val, 2 train; with ``[k]`` bucket
    0 is the k selected rows. Classes missing from ``cutoffs`` get bucket 0.
    ``class_counts`` must be the exact row counts per label of ``df``.
    """
    spark = df.sparkSession
    bits = {lab: bits_for(int(n)) for lab, n in class_counts.items()}
    keyed = with_hash_key(df, seed, id_col, salt)
    bin_col, bits_col = _bin_col(label_col, bits)
    keyed = keyed.withColumn("_bits", bits_col).withColumn(BIN, bin_col).drop("_bits")

    # Pass 1: rows per (class, bin) — small.
    bin_counts = keyed.groupBy(label_col, BIN).count().toPandas()
    rows = []
    boundary_cut = []
    for label, grp in bin_counts.groupby(label_col, sort=False):
        cuts = sorted(int(k) for k in cutoffs.get(_native(label), []))
        grp = grp.sort_values(BIN)
        start = 0
        for b, c in zip(grp[BIN].tolist(), grp["count"].tolist()):
            end = start + int(c)
            inside = [k for k in cuts if start < k < end]
            const = sum(1 for k in cuts if start >= k)
            rows.append((_native(label), int(b), start, bool(inside), const))
            start = end
    schema = T.StructType([
        T.StructField(label_col, df.schema[label_col].dataType),
        T.StructField(BIN, T.LongType()),
        T.StructField("_start", T.LongType()),
        T.StructField("_boundary", T.BooleanType()),
        T.StructField("_const", T.IntegerType()),
    ])
    bins_df = spark.createDataFrame(rows, schema)
    joined = keyed.join(F.broadcast(bins_df), on=[label_col, BIN], how="inner")

    plain = joined.filter(~F.col("_boundary")).withColumn(BUCKET, F.col("_const"))
    edge = joined.filter(F.col("_boundary"))
    w = Window.partitionBy(label_col, BIN).orderBy(KEY, id_col)
    rank = F.col("_start") + F.row_number().over(w) - 1
    cut_pairs = []
    for label, cuts in cutoffs.items():
        cut_pairs += [F.lit(label), F.array(*[F.lit(int(k)) for k in sorted(cuts)] or [F.lit(None).cast("long")])]
    cut_map = F.create_map(*cut_pairs) if cut_pairs else None
    edge = edge.withColumn("_rank", rank)
    if cut_map is not None:
        edge = edge.withColumn(
            BUCKET,
            F.aggregate(
                F.coalesce(cut_map[F.col(label_col)], F.array().cast("array<long>")),
                F.lit(0),
                lambda acc, k: acc + F.when(F.col("_rank") >= k, 1).otherwise(0),
            ),
        ).drop("_rank")
    else:
        edge = edge.withColumn(BUCKET, F.lit(0)).drop("_rank")
    out = plain.unionByName(edge)
    return out.drop("_start", "_boundary", "_const", BIN)


def _native(v):
    """numpy scalar → Python scalar (for dict keys and Spark literals)."""
    return v.item() if hasattr(v, "item") else v


def exact_counts(df: DataFrame, label_col: str) -> dict:
    """Exact row count per label (a small aggregate)."""
    return {_native(r[0]): int(r[1]) for r in df.groupBy(label_col).count().collect()}


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
