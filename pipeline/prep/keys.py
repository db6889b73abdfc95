"""Exact, deterministic per-class selection by hash rank — the primitive behind splits, sampling and
the imbalance protocols.

Every row gets a 64-bit key ``xxhash64(seed, salt, id)``; within a class, rows are ordered by
``(key, id)``. A *cut-off* ``k`` selects the ``k`` rows of smallest rank. The selection is described
by the rows that sit *at* the cut-offs: a row's rank reaches ``k`` exactly when its ``(key, id)`` is at
least the row of rank ``k``. Finding those rows never sorts a class nor puts one in a single task;
two exact methods (:func:`rank_thresholds`) find them:

``bins`` (any number of cut-offs per class), two small jobs:

1. the key's top ``b_c`` bits give each row a bin (``b_c`` chosen per class so that a bin holds
   about ``TARGET_BIN_ROWS`` rows); Spark counts rows per ``(class, bin)`` — a small aggregate of
   about ``rows / TARGET_BIN_ROWS`` entries (capped at ``classes × 2**MAX_BITS``) — and the driver
   turns those counts into the cumulative rank at which each bin starts;
2. only the few bins that hold a cut-off (at most one per class and cut-off) are ranked exactly,
   with a window partitioned by ``(class, bin)`` over ~``TARGET_BIN_ROWS`` rows.

``window`` (at most one cut-off per class), **one** narrow pass: keys are uniform, so the row of
rank ``k`` among ``n`` lies near the key quantile ``k / n`` (the number of keys below ``x`` is
Binomial(n, x)). Rows whose key falls in a window of ``±(Z·sqrt(min(k, n−k)+1) + Z²)`` expected
ranks around it (Z = 8; it misses with probability ~e^-64) are the candidates. One grouped count
(a code-generated hash aggregate) by (class, zone, candidate key) returns the exact class counts
(checking the given ones), the rows below each window and the candidates — about ``16·sqrt(k) + 128``
per class, bounded by ``CANDIDATE_LIMIT`` — and the driver picks the candidate of the right rank.
When it cannot decide (a missed window, two candidates sharing a key, other counts than given) it
says so and ``auto`` falls back to ``bins``.

The bucket of every row is then a comparison with a handful of literals (:func:`bucket_col`) — a
map-only column: the table itself is never shuffled, joined or scanned twice for it (the passes
can run on a narrow copy of the ids and labels, ``assign_buckets(ranks_from=...)``).

The result depends only on (seed, salt, id, label): not on partitioning, file layout or cluster size.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.errors import InputError
from pipeline.prep.literals import class_lookup, int_lookup, python_scalar

TARGET_BIN_ROWS = 2000
MAX_BITS = 16
WINDOW_Z = 8.0               # candidate window half-width, in standard deviations (+ Z**2 rows)
CANDIDATE_LIMIT = 1_000_000  # more expected candidates than this: use the bins method
METHODS = ("auto", "bins", "window")
KEY = "_key"
BIN = "_bin"
BUCKET = "_bucket"
_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)


def key_id(df: DataFrame, id_col: str = "id", widen: bool = False) -> Column:
    """The id as it is hashed and compared: as stored, or (``widen``) integer ids as 64-bit, so that
    an int and a long copy of the same table give the same keys."""
    if widen and isinstance(df.schema[id_col].dataType, _INTEGRAL):
        return F.col(id_col).cast("long")
    return F.col(id_col)


def id_sql_type(df: DataFrame, id_col: str, widen: bool) -> str:
    t = df.schema[id_col].dataType
    return "bigint" if widen and isinstance(t, _INTEGRAL) else t.simpleString()


def with_hash_key(df: DataFrame, seed: int, id_col: str = "id", salt: str = "", *, widen: bool = False) -> DataFrame:
    """Add ``_key`` = xxhash64(seed, salt, id): a uniform 64-bit key per row.

    ``widen``: hash the seed and integer ids as 64-bit numbers (the sampler's key); otherwise as
    given (the split's and the protocols' key). The two give different, equally uniform keys.
    """
    seed_col = F.lit(int(seed)).cast("long") if widen else F.lit(int(seed))
    return df.withColumn(KEY, F.xxhash64(seed_col, F.lit(salt), key_id(df, id_col, widen)))


def bits_for(n: int) -> int:
    """Number of key bits used to bin a class of ``n`` rows."""
    if n <= TARGET_BIN_ROWS:
        return 0
    return min(MAX_BITS, math.ceil(math.log2(n / TARGET_BIN_ROWS)))


def _bin_col(label_col: str, bits: Mapping):
    """Bin index of a row: the top ``b_c`` bits of its key (``b_c`` per class), and the bits Column."""
    b = int_lookup(label_col, bits)
    # An arithmetic shift keeps the signed order of the key; adding 2**(b-1) makes the bin
    # index non-negative and monotone in the key.
    shifted = F.expr(f"shiftright({KEY}, 64 - _bits) + shiftleft(1L, _bits - 1)")
    return F.when(b == 0, F.lit(0).cast("long")).otherwise(shifted), b


def _bin_targets(bin_counts, label_col: str, cutoffs: Mapping):
    """From the (class, bin) counts: the plan skeleton and the (label, bin, rank in bin) of each cut-off."""
    targets = []
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
    return plan, targets


def _bins_method(keyed: DataFrame, label_col: str, class_counts: Mapping, cutoffs: Mapping, id_col: str) -> dict:
    """The ``bins`` method of :func:`rank_thresholds`: (class, bin) counts, then a window over the bins
    that hold a cut-off."""
    bits = {lab: bits_for(int(n)) for lab, n in class_counts.items()}
    bin_col, bits_col = _bin_col(label_col, bits)
    binned = keyed.withColumn("_bits", bits_col).withColumn(BIN, bin_col).drop("_bits")
    plan, targets = _bin_targets(binned.groupBy(label_col, BIN).count().toPandas(), label_col, cutoffs)
    if not targets:
        return plan
    schema = T.StructType([T.StructField(label_col, keyed.schema[label_col].dataType),
                           T.StructField(BIN, T.LongType()), T.StructField("_at", T.IntegerType())])
    wanted = keyed.sparkSession.createDataFrame(targets, schema)
    w = Window.partitionBy(label_col, BIN).orderBy(KEY, id_col)
    edge = (binned.join(F.broadcast(wanted.select(label_col, BIN).distinct()), on=[label_col, BIN])
            .withColumn("_at", (F.row_number().over(w) - 1).cast("int")))
    at = {(python_scalar(r[0]), int(r[1]), int(r[2])): (int(r[3]), r[4]) for r in
          edge.join(F.broadcast(wanted.distinct()), on=[label_col, BIN, "_at"])
              .select(label_col, BIN, "_at", KEY, id_col).collect()}
    for label, b, rank in targets:       # a repeated cut-off (a zero fraction) is counted twice
        plan[label][1].append(at[(label, b, rank)])
    return plan


def _quantile_key(q: float) -> int:
    """The signed 64-bit key at quantile ``q`` of the uniform key distribution (clamped)."""
    k = math.floor(q * 2.0 ** 64) - 2 ** 63
    return int(min(max(k, -(2 ** 63)), 2 ** 63 - 1))


def _window_margin(r: int, n: int) -> float:
    return WINDOW_Z * math.sqrt(min(r, n - r) + 1) + WINDOW_Z ** 2


def expected_candidates(class_counts: Mapping, cutoffs: Mapping) -> int:
    """Rows the ``window`` method brings to the driver (about 16·sqrt(k) + 128 per class and cut-off)."""
    return int(sum(2 * _window_margin(k + 1, class_counts[c]) for c, cuts in cutoffs.items()
                   for k in cuts if 0 < k < class_counts[c]))


def _window_zone(label_col: str, class_counts: Mapping, want: Mapping) -> Column:
    """0 below the class's candidate window, 1 inside, 2 above; null for classes without a cut-off."""
    lo, hi = {}, {}
    for c, r in want.items():
        n, margin = class_counts[c], _window_margin(r, class_counts[c])
        lo[c] = _quantile_key((r - margin) / n)
        hi[c] = _quantile_key((r + margin) / n)
    key, lo_c, hi_c = F.col(KEY), class_lookup(label_col, lo, "bigint"), class_lookup(label_col, hi, "bigint")
    return (F.when(lo_c.isNull(), F.lit(None).cast("int"))
             .when(key < lo_c, F.lit(0)).when(key > hi_c, F.lit(2)).otherwise(F.lit(1)))


def _window_pick(pdf, label_col: str, want: Mapping) -> Optional[dict]:
    """Per class, the ``want[c]``-th smallest (key, id) among the candidates, or None when undecided."""
    rows = {}
    for lab, grp in pdf.groupby(label_col, sort=False):
        lab = python_scalar(lab)
        if lab not in want:
            continue
        below = int(grp.loc[grp["_zone"] == 0, "_n"].sum())
        cands = grp[grp["_zone"] == 1]
        if (cands["_n"] > 1).any():        # a key shared by two rows: order needs the id too
            return None
        m = want[lab] - below
        if not (1 <= m <= len(cands)):
            return None
        keys = cands["_ck"].to_numpy(np.int64)
        i = int(np.argsort(keys, kind="stable")[m - 1])
        rows[lab] = (int(keys[i]), python_scalar(cands["_id"].iloc[i]))
    return rows


def window_thresholds(keyed: DataFrame, label_col: str, class_counts: Mapping, cutoffs: Mapping,
                      id_col: str = "id", *, widen: bool = False):
    """The ``window`` method of :func:`rank_thresholds` (at most one cut-off per class).

    Returns ``(counts, plan)``: the exact class counts found on the way, and the plan — None when
    the counts differ from ``class_counts`` or the method cannot decide. Raises :class:`InputError`
    on null labels.
    """
    if any(len(cuts) > 1 for cuts in cutoffs.values()):
        raise ValueError("the window method takes at most one cut-off per class")
    want = {c: int(cuts[0]) + 1 for c, cuts in cutoffs.items() if cuts and 0 < int(cuts[0]) < class_counts[c]}
    key = F.col(KEY)
    pdf = (keyed.withColumn("_zone", _window_zone(label_col, class_counts, want))
                .groupBy(label_col, "_zone",
                         # never null, so pandas keeps the 64-bit keys as int64 (not float)
                         F.when(F.col("_zone") == 1, key).otherwise(F.lit(0).cast("long")).alias("_ck"))
                .agg(F.count(F.lit(1)).alias("_n"), F.min(key_id(keyed, id_col, widen)).alias("_id"))
                .toPandas())
    if pdf[label_col].isna().any():
        nulls = int(pdf.loc[pdf[label_col].isna(), "_n"].sum())
        raise InputError(f"{nulls} rows have a null label in column '{label_col}'")
    real = {python_scalar(lab): int(n) for lab, n in pdf.groupby(label_col)["_n"].sum().items()}
    if real != dict(class_counts):
        return real, None
    rows = _window_pick(pdf, label_col, want)
    if rows is None:
        return real, None
    plan = {}
    for c in class_counts:
        cuts = [int(k) for k in cutoffs.get(c, [])]
        plan[c] = (sum(1 for k in cuts if k <= 0), [rows[c]] if c in rows else [])
    return real, plan


def rank_thresholds(keyed: DataFrame, label_col: str, class_counts: Mapping, cutoffs: Mapping,
                    id_col: str = "id", *, method: str = "bins", widen: bool = False) -> dict:
    """Per class, the rows that sit exactly at its cut-offs: ``{label: (always, [(key, id), ...])}``.

    ``keyed`` has the ``_key`` column (:func:`with_hash_key`). A cut-off ``k`` with ``0 < k < n_c``
    is represented by the row of rank ``k`` (order (key, id)); a row's rank reaches ``k`` exactly
    when its ``(key, id)`` is at least that row's. ``always`` counts the cut-offs ``k <= 0``
    (every row reaches them); cut-offs ``k >= n_c`` are reached by no row and are left out.
    ``method``: ``bins``, ``window`` or ``auto`` (``window`` when each class has at most one cut-off
    and the candidates are few, else ``bins``; both give the same rows, see the module). At most
    one row per class and cut-off reaches the driver.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    one_cut = all(len(cuts) <= 1 for cuts in cutoffs.values())
    if method == "window" or (method == "auto" and one_cut
                              and expected_candidates(class_counts, cutoffs) <= CANDIDATE_LIMIT):
        real, plan = window_thresholds(keyed, label_col, class_counts, cutoffs, id_col, widen=widen)
        if plan is not None:
            return plan
        if real != dict(class_counts):
            raise InputError("class_counts are not the row counts per label of the frame")
    return _bins_method(keyed, label_col, class_counts, cutoffs, id_col)


def bucket_col(plan: dict, label_col: str, id_col: str = "id", id_type: str = "bigint", *,
               widen: bool = False, id_column: Optional[Column] = None) -> Column:
    """``_bucket`` from :func:`rank_thresholds`'s plan: how many cut-offs the row's rank reaches.

    The j-th threshold row of every class is one pair of per-class constants (:func:`class_lookup`),
    so the bucket is a few code-generated comparisons per row. ``id_type``: the SQL type of the
    compared id; ``id_column``: the compared id (the column ``id_col`` unless given).
    """
    always = {lab: a for lab, (a, _) in plan.items() if a}
    bucket = int_lookup(label_col, always) if always else F.lit(0)
    key, rid = F.col(KEY), id_column if id_column is not None else F.col(id_col)
    for j in range(max((len(thr) for _, thr in plan.values()), default=0)):
        at = {lab: thr[j] for lab, (_, thr) in plan.items() if len(thr) > j}
        tk = class_lookup(label_col, {lab: int(k) for lab, (k, _) in at.items()}, "bigint")
        ti = class_lookup(label_col, {lab: i for lab, (_, i) in at.items()}, id_type)
        reached = (key > tk) | ((key == tk) & (rid >= ti))      # null (no j-th row) counts 0
        bucket = bucket + F.when(reached, F.lit(1)).otherwise(F.lit(0))
    return bucket.cast("int")


def assign_buckets(df: DataFrame, label_col: str, class_counts: Mapping, cutoffs: Mapping, seed: int,
                   id_col: str = "id", *, salt: str = "", ranks_from: DataFrame | None = None,
                   method: str = "bins") -> DataFrame:
    """Add ``_bucket`` (and ``_key``): for each row, how many of its class's cut-offs its rank reaches.

    ``cutoffs[label]`` is an ascending list of ranks (0 ≤ k ≤ n_c); a row of within-class rank r
    (0-based, order (key, id)) gets ``_bucket = #{k in cutoffs[label] : r >= k}``. Thus with
    cut-offs ``[n_test, n_test + n_val]`` bucket 0 is test, 1 val, 2 train; with ``[k]`` bucket
    0 is the k selected rows. Classes missing from ``cutoffs`` get bucket 0.
    ``class_counts`` must be the exact row counts per label of ``df``.

    The rows at the cut-offs are found first (:func:`rank_thresholds` by ``method``); the bucket is
    then a per-row comparison with them, so ``df`` itself is never shuffled. ``ranks_from``: a
    narrow frame with the same rows (``id_col`` and ``label_col`` only, e.g. persisted) to find
    them on, instead of ``df``.
    """
    plan = rank_thresholds(with_hash_key(ranks_from if ranks_from is not None else df, seed, id_col, salt),
                           label_col, class_counts, cutoffs, id_col, method=method)
    keyed = with_hash_key(df, seed, id_col, salt)
    return keyed.withColumn(BUCKET, bucket_col(plan, label_col, id_col, id_sql_type(df, id_col, False)))


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
