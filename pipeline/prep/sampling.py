"""Exact, distributed class-level sampling: RUS, ROS, thresholded (cap), floor, hybrid, none.

The plan (:func:`plan_counts`) is a pure function of the class counts. It reproduces the target
counts of imbalanced-learn's ``RandomUnderSampler`` / ``RandomOverSampler`` for every
``sampling_strategy`` form (``auto``, ``majority``, ``minority``, ``not minority``,
``not majority``, ``all``, a float for binary data, a dict label -> count) and adds the survey's
``threshold`` (cap every class at N rows, the pre-training set of Lee et al.'s two-phase
learning), ``floor`` (raise every class to at least M rows by ROS) and ``hybrid`` (both).

How the rows are chosen (:func:`sample_dataset`) — exact, reproducible and skew-free:

* Every row gets a uniform 64-bit key ``k = xxhash64(seed, "sample", id)``; inside a class rows
  are ordered by ``(k, id)`` (``id`` is unique, so this is a total order and hash collisions
  cannot make counts inexact). The key depends only on (seed, id), never on partitioning.
* A class of ``n`` rows with planned size ``N`` gives each row ``N // n`` copies, plus one extra
  copy to the ``N % n`` rows of smallest rank. RUS (``N < n``) is the special case ``N // n = 0``:
  the ``N`` smallest-rank rows, once each, never repeated. ROS keeps every original row and each
  row appears ⌊N/n⌋ or ⌈N/n⌉ times — stratified ("systematic") replication, lower variance than
  i.i.d. bootstrap. ``copy`` numbers the instances 0, 1, … so ``(id, copy)`` is unique.
* "The ``r`` smallest ranks" is decided by one threshold pair ``(k_c, id_c)`` per class, the
  ``r``-th smallest ``(k, id)``: a row is picked iff ``(k, id) <= (k_c, id_c)``. The thresholds
  are found from counts, without sorting a class. Main path, **one narrow pass** (reads only
  ``id`` and the label):

  1. class counts come from the table's ``_dataset.json`` (written by synth and split), else
     from one ``groupBy(label).count()``; the plan follows from them;
  2. keys are uniform, so the ``r``-th smallest of ``n`` keys lies near the quantile ``r/n``
     (the number of keys below ``x`` is Binomial(n, x)). A window of ±(8·sqrt(min(r, n−r)+1)
     + 64) expected ranks around it misses the r-th row with probability ~e^-64;
  3. one grouped count by (class, zone, candidate key) — a code-generated hash aggregate —
     returns the exact class counts (checking the hint), the rows below each window, and the
     candidates (about 16·sqrt(r) + 128 per class, capped overall by ``CANDIDATE_LIMIT``);
     the driver picks the candidate of rank ``r − below``.

  Fallback (a stale hint is re-planned on the real counts; a missed window, a key shared by
  two candidates or too many candidates go here; ``method="histogram"`` forces it), **two
  narrow passes**, driver memory O(classes × 64) whatever the size:

  a. a histogram of the key's top 6 bits per class; the driver finds the bin where the
     cumulative count crosses ``r`` and the rank ``m`` of the wanted row inside it;
  b. a boundary bin holding more than ``boundary_limit`` (50,000) rows is refined by another
     64-bin histogram of the next key bits, restricted to the boundary rows;
  c. the boundary rows alone (``n_c / 64`` for one level) are ranked with a window
     partitioned by class; the ``m``-th row is the threshold.

  The write pass is then map-only: per-class constants as literals, a filter that reads only
  label, id and the key (rows not picked never have their payload copied), and an ``explode``
  for ROS copies. No global sort, no window over a whole class, no shuffle of the payload, so
  the largest class is never funnelled into one task and the driver's memory does not grow
  with rows. The achieved counts are measured on the written table (its label column).

Spark's ``sampleBy`` (Bernoulli per row) only hits its counts in expectation; a window or sort
per class gives exact ranks but puts the whole majority class into one task. Here exactness
costs one scan of two narrow columns beyond what ``sampleBy`` needs (it, too, must count the
classes to set its fractions), plus the count check on the output.

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import logging
import math
import numbers
import time
from typing import Any, Mapping, Optional

import numpy as np

from pipeline.data.schema import has_info, read_info, write_info
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, label_key, local_path, read_json, spark_uri, write_json
from pipeline.prep.keys import python_scalar
from pipeline.prep.literals import array_sql

log = logging.getLogger(__name__)

STRATEGIES = ("none", "rus", "ros", "threshold", "floor", "hybrid")
TARGET_KINDS = ("auto", "majority", "minority", "not minority", "not majority", "all")
DEFAULT_BITS = 6           # 64 key bins per class and histogram level
BOUNDARY_LIMIT = 50_000    # boundary bins larger than this are refined by another histogram
SALT = "sample"            # keeps the sampling key independent of the split's (seed, id) key

_KEY, _BIN, _N = "_skey", "_sbin", "_ncopies"


# ---------------------------------------------------------------- the plan (pure)
def _ordered(class_counts: Mapping) -> list:
    """Labels in imbalanced-learn's order (np.unique: sorted), so ties resolve as it does."""
    try:
        return sorted(class_counts)
    except TypeError:  # mixed types: keep a stable order
        return sorted(class_counts, key=lambda x: (type(x).__name__, str(x)))


def _resolve_label(key: Any, class_counts: Mapping) -> Any:
    """Map a dict-target key (maybe a JSON string) onto a label of the data."""
    if key in class_counts:
        return key
    by_str = {str(lab): lab for lab in class_counts}
    if str(key) in by_str:
        return by_str[str(key)]
    if isinstance(key, str):
        try:
            k = int(key)
        except ValueError:
            k = None
        if k is not None and k in class_counts:
            return k
    raise InputError(f"sampling target names class {key!r}, which is not in the data "
                     f"(classes: {_short(list(class_counts))})")


def _short(items: list, n: int = 8) -> str:
    s = ", ".join(str(x) for x in items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _as_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise InputError(f"{name} must be a whole number of rows, got {value!r}")
    return int(value)


def _keyword_plan(kind: str, counts: dict, labels: list, over: bool) -> dict:
    """imbalanced-learn's string targets → {label: target count} for the targeted classes."""
    n_max, n_min = max(counts.values()), min(counts.values())
    c_max = max(labels, key=counts.get)   # first label with the largest count (as imblearn)
    c_min = min(labels, key=counts.get)
    if kind == "auto":
        kind = "not majority" if over else "not minority"
    if kind == "majority":
        if over:
            raise InputError("target 'majority' cannot be used with ros: over-sampling the "
                             "majority class is a no-op (use 'not majority' or 'auto')")
        targeted = [c_max]
    elif kind == "minority":
        if not over:
            raise InputError("target 'minority' cannot be used with rus: under-sampling the "
                             "minority class is a no-op (use 'not minority' or 'auto')")
        targeted = [c_min]
    elif kind == "not minority":
        targeted = [c for c in labels if c != c_min]
    elif kind == "not majority":
        targeted = [c for c in labels if c != c_max]
    elif kind == "all":
        targeted = list(labels)
    else:  # pragma: no cover - guarded by the caller
        raise InputError(f"unknown target {kind!r}")
    goal = n_max if over else n_min
    return {c: goal for c in targeted}


def _float_plan(ratio: float, counts: dict, labels: list, over: bool) -> dict:
    """Binary float target: the minority/majority ratio after resampling (imbalanced-learn)."""
    if len(labels) != 2:
        raise InputError(f"a float target ({ratio}) needs binary data, but there are "
                         f"{len(labels)} classes: use a JSON dict label -> count")
    if not (0 < ratio <= 1):
        raise InputError(f"a float target must be in (0, 1], got {ratio}")
    if over:
        c_max = max(labels, key=counts.get)
        n_max = counts[c_max]
        add = {c: int(n_max * ratio - counts[c]) for c in labels if c != c_max}
        if any(a <= 0 for a in add.values()):
            raise InputError(f"target {ratio} would make ros remove minority rows "
                             f"(class sizes {_counts_text(counts)}): increase the ratio")
        return {c: counts[c] + a for c, a in add.items()}
    c_min = min(labels, key=counts.get)
    n_min = counts[c_min]
    plan = {c: int(n_min / ratio) for c in labels if c != c_min}
    if any(plan[c] > counts[c] for c in plan):
        raise InputError(f"target {ratio} would make rus grow the majority class "
                         f"(class sizes {_counts_text(counts)}): increase the ratio")
    return plan


def _counts_text(counts: Mapping) -> str:
    return ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:8])


def check_request(strategy: Any, cap: Any = None, floor: Any = None) -> tuple:
    """Validate the parts of a request that do not depend on the data; returns them normalised."""
    if not isinstance(strategy, str) or strategy.strip().lower() not in STRATEGIES:
        raise InputError(f"unknown sampling strategy {strategy!r}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    strategy = strategy.strip().lower()
    if strategy in ("threshold", "hybrid"):
        if cap is None:
            raise InputError(f"strategy {strategy} needs --cap N (the largest class size)")
        cap = _as_count("--cap", cap)
        if cap < 1:
            raise InputError(f"--cap must be at least 1, got {cap}")
    if strategy in ("floor", "hybrid"):
        if floor is None:
            raise InputError(f"strategy {strategy} needs --floor M (the smallest class size)")
        floor = _as_count("--floor", floor)
        if floor < 1:
            raise InputError(f"--floor must be at least 1, got {floor}")
    if strategy == "hybrid" and floor > cap:
        raise InputError(f"hybrid needs --floor <= --cap, got floor {floor} > cap {cap}")

    return strategy, cap, floor


def check_target(strategy: str, target: Any) -> None:
    """Check a rus/ros ``target`` before any data exists (its form; the counts it names are
    checked against the data by :func:`plan_counts`). Other strategies ignore the target."""
    if str(strategy).strip().lower() not in ("rus", "ros"):
        return
    if isinstance(target, str):
        kind = " ".join(target.strip().lower().replace("_", " ").split())
        if kind in TARGET_KINDS:
            return
        try:
            target = float(kind)
        except ValueError:
            raise InputError(f"unknown sampling target {target!r}: expected one of "
                             f"{', '.join(TARGET_KINDS)}, a float or a JSON dict") from None
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        if not 0.0 < float(target) <= 1.0:
            raise InputError(f"a float target must be in (0, 1], got {target}")
        return
    if isinstance(target, Mapping):
        if not target:
            raise InputError("the sampling target dict is empty")
        for key, want in target.items():
            if _as_count(f"target for class {key!r}", want) < 0:
                raise InputError(f"target for class {key!r} is negative ({want})")
        return
    raise InputError(f"bad sampling target {target!r}: expected one of "
                     f"{', '.join(TARGET_KINDS)}, a float or a dict label -> count")


def plan_counts(class_counts: Mapping, strategy: str, target: Any = "auto",
                cap: Optional[int] = None, floor: Optional[int] = None) -> dict:
    """Target row count per class (every class of ``class_counts``) for a sampling request.

    ``strategy``: ``none`` (unchanged), ``rus`` / ``ros`` with ``target`` in imbalanced-learn's
    ``sampling_strategy`` forms, ``threshold`` (classes above ``cap`` cut to ``cap``), ``floor``
    (classes below ``floor`` raised to ``floor``), ``hybrid`` (both). ``target`` is used by
    rus/ros only, ``cap``/``floor`` only by the strategies that name them. Raises
    :class:`InputError` for a request imbalanced-learn would reject or that makes no sense.
    """
    strategy, cap, floor = check_request(strategy, cap, floor)
    counts = {}
    for lab, n in class_counts.items():
        n = _as_count(f"count of class {lab!r}", n)
        if n < 0:
            raise InputError(f"class {lab!r} has a negative count {n}")
        if n > 0:
            counts[lab] = n
    if not counts:
        raise InputError("no rows to sample: every class is empty")
    if len(counts) < 2:
        raise InputError(f"sampling needs at least 2 classes, the data has only class "
                         f"{next(iter(counts))!r} ({next(iter(counts.values()))} rows)")
    labels = _ordered(counts)
    plan = {c: counts[c] for c in labels}

    if strategy == "none":
        return plan
    if strategy == "threshold":
        return {c: min(n, cap) for c, n in plan.items()}
    if strategy == "floor":
        return {c: max(n, floor) for c, n in plan.items()}
    if strategy == "hybrid":
        return {c: min(max(n, floor), cap) for c, n in plan.items()}

    over = strategy == "ros"
    name = "ros" if over else "rus"
    if isinstance(target, str):
        kind = " ".join(target.strip().lower().replace("_", " ").split())
        if kind not in TARGET_KINDS:
            try:
                target = float(kind)
            except ValueError:
                raise InputError(f"unknown sampling target {target!r}: expected one of "
                                 f"{', '.join(TARGET_KINDS)}, a float or a JSON dict") from None
        else:
            plan.update(_keyword_plan(kind, counts, labels, over))
            return plan
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        plan.update(_float_plan(float(target), counts, labels, over))
        return plan
    if isinstance(target, Mapping):
        if not target:
            raise InputError("the sampling target dict is empty")
        for key, want in target.items():
            lab = _resolve_label(key, counts)
            want = _as_count(f"target for class {key!r}", want)
            if want < 0:
                raise InputError(f"target for class {key!r} is negative ({want})")
            if over and want < counts[lab]:
                raise InputError(f"ros cannot shrink class {lab}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            if not over and want > counts[lab]:
                raise InputError(f"rus cannot grow class {lab}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            plan[lab] = want
        return plan
    raise InputError(f"bad sampling target {target!r} for {name}: expected one of "
                     f"{', '.join(TARGET_KINDS)}, a float or a dict label -> count")


# ---------------------------------------------------------------- Spark side
def _read_input(spark, path: str, label_col: str):
    # deferred: pyspark is slow to import
    from pyspark.sql.utils import AnalysisException

    if is_local(path) and not local_path(path).exists():
        raise InputError(f"input not found: {path}")
    try:
        df = spark.read.parquet(spark_uri(path))
    except AnalysisException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read Parquet at {path}: {msg}") from None
    if label_col not in df.columns:
        raise InputError(f"input {path} has no label column '{label_col}' "
                         f"(columns: {', '.join(df.columns)})")
    if "id" not in df.columns:
        raise InputError(f"input {path} has no 'id' column: sampling needs a unique row id")
    if "copy" in df.columns:
        raise InputError(f"input {path} already has a 'copy' column: it was sampled already "
                         "(sample the split's train/ table instead)")
    return df


def _id_expr(df):
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    t = df.schema["id"].dataType
    if isinstance(t, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return F.col("id").cast("long")   # same key whether a copy stored id as int or long
    return F.col("id")


def _with_key(df, seed: int):
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    key = F.xxhash64(F.lit(int(seed)).cast("long"), F.lit(SALT), _id_expr(df))
    return df.withColumn(_KEY, key)


def _prefix(bits: int):
    """The key's top ``bits`` bits; an arithmetic shift keeps the (signed) key order."""
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    return F.shiftright(F.col(_KEY), 64 - bits)


def _bin_counts(keyed, label_col: str, bits: int):
    """Rows per (class, top-``bits`` key prefix) as a pandas frame sorted by class and bin."""
    pdf = keyed.groupBy(label_col, _prefix(bits).alias(_BIN)).count().toPandas()
    return pdf


def _histogram(df, label_col: str, seed: int, bits: int):
    """Pass 1: rows per (class, key bin). Returns ({label: count}, {label: (bins, counts)})."""
    pdf = _bin_counts(_with_key(df.select(label_col, "id"), seed), label_col, bits)
    if pdf[label_col].isna().any():
        n_null = int(pdf.loc[pdf[label_col].isna(), "count"].sum())
        raise InputError(f"{n_null} rows have a null label in column '{label_col}'")
    counts, hist = {}, {}
    for lab, grp in pdf.groupby(label_col, sort=True):
        grp = grp.sort_values(_BIN)
        lab = python_scalar(lab)
        hist[lab] = (grp[_BIN].to_numpy(np.int64), grp["count"].to_numpy(np.int64))
        counts[lab] = int(grp["count"].sum())
    return counts, hist


def _locate(bins, cnt, r: int) -> tuple:
    """(bin holding the r-th smallest row, rank of that row inside the bin (1-based), bin size)."""
    cum = np.cumsum(cnt)
    i = int(np.searchsorted(cum, r))          # first bin whose cumulative count reaches r
    before = int(cum[i - 1]) if i > 0 else 0
    return int(bins[i]), r - before, int(cnt[i])


def _thresholds(spark, df, label_col: str, seed: int, bits: int, hist: dict,
                extra: Mapping, boundary_limit: int) -> dict:
    """Per class, the ``extra[c]``-th smallest (key, id): the last row that gets an extra copy.

    The boundary bin found in the pass-1 histogram is refined by further histograms of the next
    ``bits`` key bits while it holds more than ``boundary_limit`` rows (only for very large
    classes); then its rows alone are ranked exactly with a window partitioned by class.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    label_type = df.schema[label_col].dataType
    # state per class: (prefix bits, prefix value, rank wanted inside it, rows in it)
    state = {}
    for lab, r in extra.items():
        if r > 0:
            b, m, size = _locate(*hist[lab], r)
            state[lab] = (bits, b, m, size)
    if not state:
        return {}
    keyed = _with_key(df.select(label_col, "id"), seed)

    def boundary_rows(st):
        rows = [(lab, pb, pv) for lab, (pb, pv, _, _) in st.items()]
        bounds = spark.createDataFrame(rows, T.StructType([
            T.StructField(label_col, label_type), T.StructField("_pb", T.IntegerType()),
            T.StructField("_pv", T.LongType())]))
        j = keyed.join(F.broadcast(bounds), on=label_col, how="inner")
        return j.filter(F.expr(f"shiftright({_KEY}, 64 - _pb)") == F.col("_pv"))

    while max(size for _, _, _, size in state.values()) > boundary_limit:
        big = {lab: v for lab, v in state.items() if v[3] > boundary_limit and v[0] < 64}
        if not big:
            break
        # refine every oversized boundary by the next bits (classes may sit at different depths)
        sub = boundary_rows(big).withColumn("_depth", F.least(F.col("_pb") + bits, F.lit(64)))
        pdf = (sub.groupBy(label_col, F.expr(f"shiftright({_KEY}, 64 - _depth)").alias(_BIN))
                  .count().toPandas())
        for lab, grp in pdf.groupby(label_col, sort=True):
            lab = python_scalar(lab)
            grp = grp.sort_values(_BIN)
            old_bits, _, m, _ = state[lab]
            b, m2, size = _locate(grp[_BIN].to_numpy(), grp["count"].to_numpy(), m)
            state[lab] = (min(64, old_bits + bits), b, m2, size)

    w = Window.partitionBy(label_col).orderBy(_KEY, "id")
    ranks = spark.createDataFrame([(lab, m) for lab, (_, _, m, _) in state.items()],
                                  T.StructType([T.StructField(label_col, label_type),
                                                T.StructField("_m", T.LongType())]))
    picked = (boundary_rows(state)
              .withColumn("_rn", F.row_number().over(w))
              .join(F.broadcast(ranks), on=label_col, how="inner")
              .filter(F.col("_rn") == F.col("_m"))
              .select(label_col, _KEY, "id").collect())
    out = {python_scalar(r[0]): (int(r[1]), r[2]) for r in picked}
    missing = [lab for lab in state if lab not in out]
    if missing:  # pragma: no cover - would mean the histogram and pass 2 disagree
        raise RuntimeError(f"no threshold row found for classes {missing}")
    return out


def _hint_counts(table: str, df, label_col: str) -> Optional[dict]:
    """Class counts recorded in the table's ``_dataset.json`` (keys cast to the label type)."""
    # deferred: pyspark is slow to import
    from pyspark.sql import types as T

    try:
        if not has_info(table):
            return None
        info = read_info(table)
    except (InputError, OSError, ValueError, TypeError):
        return None
    if not info.class_counts or info.label_col != label_col:
        return None
    ltype = df.schema[label_col].dataType
    try:
        if isinstance(ltype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            return {int(k): int(v) for k, v in info.class_counts.items() if int(v) > 0}
        if isinstance(ltype, T.StringType):
            return {str(k): int(v) for k, v in info.class_counts.items() if int(v) > 0}
    except (TypeError, ValueError):
        return None
    return None


def _plain_counts(df, label_col: str) -> dict:
    """Exact rows per class: one aggregation, O(classes) to the driver."""
    rows = df.groupBy(label_col).count().collect()
    nulls = sum(int(r[1]) for r in rows if r[0] is None)
    if nulls:
        raise InputError(f"{nulls} rows have a null label in column '{label_col}'")
    return {python_scalar(r[0]): int(r[1]) for r in rows}


WINDOW_Z = 8.0             # candidate window half-width, in standard deviations (+ Z**2 rows)
CANDIDATE_LIMIT = 1_000_000  # more expected candidates than this: use the histogram method


def _window_margin(r: int, n: int) -> float:
    return WINDOW_Z * math.sqrt(min(r, n - r) + 1) + WINDOW_Z ** 2


def expected_candidates(counts: Mapping, extra: Mapping) -> int:
    """Rows the one-pass method brings to the driver (about 16·sqrt(r) + 128 per class)."""
    return int(sum(2 * _window_margin(r, counts[c]) for c, r in extra.items()
                   if 0 < r < counts[c]))


def _window_pass(df, label_col: str, seed: int, counts: Mapping, extra: Mapping):
    """One pass: exact class counts and, per class, the ``extra[c]``-th smallest (key, id).

    With ``n`` rows of uniform keys, the ``r``-th smallest key lies near the quantile ``r / n``
    (the number of keys below ``x`` is Binomial(n, x)). Rows whose key falls in a window of
    ``±(Z·sqrt(min(r, n−r)+1) + Z²)`` expected ranks around ``r`` (Z = 8) are the candidates.
    One grouped count (Spark's code-generated hash aggregate) by (class, zone, candidate key)
    gives the class counts, the rows below each window and the candidates themselves — about
    ``16·sqrt(r) + 128`` per class, bounded by ``CANDIDATE_LIMIT`` overall — and the driver
    picks the candidate of rank ``r − below``. Returns ``(counts, thresholds)``; thresholds are
    ``None`` when some class's r-th row fell outside its window (probability ~e^-64), two
    candidates share a key, or the counts differ from ``counts``.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    lo, hi, want = {}, {}, {}
    for c, r in extra.items():
        n = counts[c]
        if r <= 0 or r >= n:
            continue
        margin = _window_margin(r, n)
        lo[c] = _quantile_key((r - margin) / n)
        hi[c] = _quantile_key((r + margin) / n)
        want[c] = r
    keyed = _with_key(df.select(label_col, "id"), seed)
    key = F.col(_KEY)
    lo_c = _lookup(label_col, lo, T.LongType())
    hi_c = _lookup(label_col, hi, T.LongType())
    zone = (F.when(lo_c.isNull(), F.lit(None).cast("int"))
             .when(key < lo_c, F.lit(0)).when(key > hi_c, F.lit(2)).otherwise(F.lit(1)))
    ident = _id_expr(df)
    pdf = (keyed.withColumn("_zone", zone)
                .groupBy(label_col, "_zone",
                         # never null, so pandas keeps the 64-bit keys as int64 (not float)
                         F.when(F.col("_zone") == 1, key).otherwise(F.lit(0).cast("long"))
                          .alias("_ck"))
                .agg(F.count(F.lit(1)).alias("_n"), F.min(ident).alias("_id"))
                .toPandas())
    if pdf[label_col].isna().any():
        nulls = int(pdf.loc[pdf[label_col].isna(), "_n"].sum())
        raise InputError(f"{nulls} rows have a null label in column '{label_col}'")
    real = {python_scalar(lab): int(n) for lab, n in pdf.groupby(label_col)["_n"].sum().items()}
    if real != dict(counts):
        return real, None
    thr = {}
    for lab, grp in pdf.groupby(label_col, sort=False):
        lab = python_scalar(lab)
        if lab not in want:
            continue
        below = int(grp.loc[grp["_zone"] == 0, "_n"].sum())
        cands = grp[grp["_zone"] == 1]
        if (cands["_n"] > 1).any():        # a key shared by two rows: order needs the id too
            return real, None
        m = want[lab] - below
        if not (1 <= m <= len(cands)):
            return real, None
        keys = cands["_ck"].to_numpy(np.int64)
        i = int(np.argsort(keys, kind="stable")[m - 1])
        ident_v = cands["_id"].iloc[i]
        thr[lab] = (int(keys[i]), python_scalar(ident_v))
    return real, thr


def _quantile_key(q: float) -> int:
    """The signed 64-bit key at quantile ``q`` of the uniform key distribution (clamped)."""
    k = math.floor(q * 2.0 ** 64) - 2 ** 63
    return int(min(max(k, -(2 ** 63)), 2 ** 63 - 1))


def _lookup(label_col: str, values: Mapping, dtype):
    """A Column with ``values[label]`` for each row's label (null for labels not in ``values``).

    Dense integer labels (the split stage's 0..K-1) index an array literal, O(1) per row; any
    other labels use a map literal.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    none = F.lit(None).cast(dtype)
    if not values:
        return none
    labels = list(values)
    if all(isinstance(c, int) and not isinstance(c, bool) for c in labels) \
            and min(labels) >= 0 and max(labels) < 4 * len(labels) + 16:
        dense = [values.get(i) for i in range(max(labels) + 1)]
        table = array_sql(dense, dtype.simpleString())   # one Py4J call instead of two per class
        arr = F.expr(table) if table is not None else F.array(*[F.lit(v).cast(dtype) if v is not None else none
                                                                for v in dense])
        label = F.col(label_col).cast("int")
        return F.when((label >= 0) & (label <= max(labels)), arr[label]).otherwise(none)
    pairs = []
    for c in labels:
        pairs += [F.lit(c), F.lit(values[c]).cast(dtype)]
    return F.create_map(*pairs)[F.col(label_col)]


def _counts_json(d: Mapping) -> dict:
    return {str(k): int(v) for k, v in d.items()}


def fit_resample(df, strategy: str, sampling_strategy: Any = "auto", cap: Optional[int] = None,
                 floor: Optional[int] = None, random_state: int = 0, label_col: str = "label",
                 class_counts: Optional[Mapping] = None, method: str = "auto", bits: int = DEFAULT_BITS,
                 boundary_limit: int = BOUNDARY_LIMIT):
    """Resample a Spark DataFrame exactly; return ``(sampled, plan)`` — the library form of ``sample``.

    ``strategy``: ``none``, ``rus``, ``ros``, ``threshold`` (cap every class at ``cap``: Lee et
    al.), ``floor`` (raise every class to ``floor``) or ``hybrid`` (both). ``sampling_strategy``
    has imbalanced-learn's meaning for ``rus``/``ros`` (``auto``, ``majority``, ``not minority``,
    ``not majority``, ``all``, a float for binary data, a dict label → count). ``random_state``
    seeds the hash that ranks rows within a class, so the result depends only on (data,
    strategy, seed), never on partitioning. ``df`` needs a unique ``id`` and ``label_col``; the
    result has its columns plus ``copy`` (0 for a row's first instance, 1, 2, … for ROS copies)
    and is lazy: nothing is collected, writing it runs one map-only pass. ``class_counts``: the
    classes' sizes when already known (verified on the data; a stale value costs one more pass).
    ``plan``: ``input_counts``, ``planned`` (label → rows), ``max_copies``, ``path`` (how the
    thresholds were found) and ``seconds``.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not (1 <= int(bits) <= 16):
        raise InputError(f"bits must be in 1..16, got {bits}")
    if method not in ("auto", "histogram"):
        raise InputError(f"method must be auto or histogram, got {method!r}")
    strategy, cap, floor = check_request(strategy, cap, floor)   # fail before touching data
    for col in (label_col, "id"):
        if col not in df.columns:
            raise InputError(f"the DataFrame has no '{col}' column (columns: {', '.join(df.columns)})")
    if "copy" in df.columns:
        raise InputError("the DataFrame already has a 'copy' column: it was sampled already")
    seed, target = random_state, sampling_strategy
    t0 = time.time()

    def make_plan(counts):
        if not counts:
            raise InputError("the input has no rows")
        return plan_counts(counts, strategy, target=target, cap=cap, floor=floor)

    thr, path = None, "histogram"
    if method == "auto":
        # Counts: the given ones (e.g. the table's _dataset.json) or one count pass; then
        # one pass finds every threshold. A stale hint or a missed window falls back below.
        counts = dict(class_counts) if class_counts else None
        path = "one-pass (counts from _dataset.json)" if counts else "count + one-pass"
        if not counts:
            counts = _plain_counts(df, label_col)
        try:
            plan = make_plan(counts)
        except InputError:
            if path == "count + one-pass":
                raise
            plan, path = None, "histogram (stale _dataset.json counts)"  # decide on real counts
        if plan is not None and expected_candidates(
                counts, {c: plan[c] % counts[c] for c in plan}) > CANDIDATE_LIMIT:
            plan, path = None, "histogram (too many candidates for one pass)"
        if plan is not None:
            real, thr = _window_pass(df, label_col, seed, counts,
                                     {c: plan[c] % counts[c] for c in plan})
            if real != counts:                 # stale hint: plan again on the real counts
                counts, plan = real, make_plan(real)
                real, thr = _window_pass(df, label_col, seed, counts,
                                         {c: plan[c] % counts[c] for c in plan})
                path = "count + one-pass (stale _dataset.json counts)"
            if thr is None:
                path = "histogram (window missed)"
    t_plan = time.time()
    if thr is None:
        counts, hist = _histogram(df, label_col, seed, bits)
        plan = make_plan(counts)
        t_plan = time.time()
        thr = _thresholds(df.sparkSession, df, label_col, seed, bits, hist,
                          {c: plan[c] % counts[c] for c in plan}, boundary_limit)
    whole = {c: plan[c] // counts[c] for c in plan}       # copies every row gets
    extra = {c: plan[c] % counts[c] for c in plan}        # rows that get one more
    t_thr = time.time()

    # The plan as per-class constants (O(classes) literals in the query): the write pass is
    # map-only, and the filter reads only label, id and the key, so rows that are not picked
    # never have their payload copied.
    id_type = df.schema["id"].dataType
    integral = isinstance(id_type, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))
    tid_type = T.LongType() if integral else id_type
    q = _lookup(label_col, {c: int(whole[c]) for c in plan}, T.LongType())
    tk = _lookup(label_col, {c: thr[c][0] for c in thr}, T.LongType())
    tid = _lookup(label_col, {c: (int(thr[c][1]) if integral else thr[c][1]) for c in thr}, tid_type)
    key = F.col(_KEY)
    picked = tk.isNotNull() & ((key < tk) | ((key == tk) & (_id_expr(df) <= tid)))
    ncopies = q + F.when(picked, F.lit(1)).otherwise(F.lit(0))
    cols = list(df.columns)
    kept = _with_key(df, seed).withColumn(_N, ncopies).filter(F.col(_N) > 0)
    max_copies = max(whole[c] + (1 if extra[c] else 0) for c in plan)
    if max_copies > 1:   # ROS: one output row per copy
        kept = kept.withColumn("copy", F.explode(F.sequence(F.lit(0), F.col(_N).cast("int") - 1)))
    else:                # RUS / cap only: no generator on the hot path
        kept = kept.withColumn("copy", F.lit(0))
    sampled = kept.select(*cols, F.col("copy").cast("int").alias("copy"))
    return sampled, {"strategy": strategy, "target": target, "cap": cap, "floor": floor, "seed": int(seed),
                     "input_counts": counts, "planned": plan, "max_copies": int(max_copies), "path": path,
                     "seconds": {"plan": round(t_plan - t0, 3), "thresholds": round(t_thr - t_plan, 3)}}


def sample_dataset(spark, table: str, out: str, strategy: str, target: Any = "auto",
                   cap: Optional[int] = None, floor: Optional[int] = None, seed: int = 0,
                   label_col: str = "label", method: str = "auto", use_hint: bool = True,
                   bits: int = DEFAULT_BITS,
                   boundary_limit: int = BOUNDARY_LIMIT) -> dict:
    """Sample the Parquet table at ``table`` into ``out/data/`` and write ``out/manifest.json``.

    The rows are :func:`fit_resample`'s; achieved class sizes are measured on what was written
    and must equal the plan exactly. Atomic: a failure leaves ``out`` as it was. Returns the
    manifest.

    ``method``: ``auto`` (the one-pass window method, falling back to histograms when needed)
    or ``histogram`` (always histograms; same rows, used to cross-check). ``use_hint``: take
    the class counts from ``_dataset.json`` when present (they are verified). ``bits`` and
    ``boundary_limit`` tune the histogram method.
    """
    check_request(strategy, cap, floor)   # fail before touching data
    t0 = time.time()
    df = _read_input(spark, table, label_col)
    sampled, fit = fit_resample(df, strategy, sampling_strategy=target, cap=cap, floor=floor, random_state=seed,
                                label_col=label_col, class_counts=_hint_counts(table, df, label_col) if use_hint
                                else None, method=method, bits=bits, boundary_limit=boundary_limit)
    strategy, cap, floor = fit["strategy"], fit["cap"], fit["floor"]
    counts, plan, max_copies, path = fit["input_counts"], fit["planned"], fit["max_copies"], fit["path"]
    t_thr = time.time()

    with atomic_dir(out) as tmp:
        data = tmp / "data"
        sampled.write.mode("error").parquet(spark_uri(data))
        t_write = time.time()
        # achieved counts, measured on what was written (reads only the label column)
        written = spark.read.parquet(spark_uri(data))
        achieved = {python_scalar(r[0]): int(r[1])
                    for r in written.groupBy(label_col).count().collect()}
        achieved = {c: achieved.get(c, 0) for c in plan}
        if achieved != plan:
            bad = [c for c in plan if achieved[c] != plan[c]][:5]
            raise InputError(
                "sampled counts differ from the plan for classes "
                + ", ".join(f"{c} ({achieved[c]} vs {plan[c]})" for c in bad)
                + ": the 'id' column must be unique")
        if has_info(table):
            info = read_info(table)
            info.class_counts = _counts_json(achieved)
            write_info(data, info)
        manifest = {
            "strategy": strategy,
            "target": target if strategy in ("rus", "ros") else None,
            "cap": cap if strategy in ("threshold", "hybrid") else None,
            "floor": floor if strategy in ("floor", "hybrid") else None,
            "seed": int(seed),
            "label_col": label_col,
            "input": str(input),
            "input_rows": int(sum(counts.values())),
            "input_counts": _counts_json(counts),
            "planned": _counts_json(plan),
            "achieved": _counts_json(achieved),
            "output_rows": int(sum(achieved.values())),
            "max_copies": int(max_copies),
            "method": "hash-rank: key=xxhash64(seed,'sample',id), rows ordered by (key, id); "
                      "copies = N//n, +1 for the N%n smallest; thresholds by " + path,
            "seconds": {"plan": fit["seconds"]["plan"], "thresholds": fit["seconds"]["thresholds"],
                        "write": round(t_write - t_thr, 3),
                        "total": round(time.time() - t0, 3)},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_counts(manifest: Optional[Mapping]) -> Optional[dict]:
    """Training rows per class index *before* sampling (a manifest's ``input_counts``), or None.

    Lee et al.'s L5 and every "by training rows" axis use these: after RUS every class has the
    same sampled count, so the sampled counts cannot tell the head from the tail.
    """
    return {int(k): int(v) for k, v in manifest["input_counts"].items()} if manifest else None


def read_training_counts(sample_dir) -> Optional[dict]:
    """:func:`training_counts` of ``<sample_dir>/manifest.json`` (None when there is none)."""
    path = local_path(sample_dir) / "manifest.json"
    return training_counts(read_json(path)) if path.is_file() else None


def format_manifest(manifest: Mapping, max_rows: int = 24) -> str:
    """A before/after table of class sizes (largest input class first) for the CLI.

    With more than ``max_rows`` classes only the largest and smallest ``max_rows // 2`` are
    listed (the totals and ρ always cover every class; ``manifest.json`` has them all).
    """
    before = manifest.get("input_counts", {})
    planned = manifest.get("planned", {})
    achieved = manifest.get("achieved", {})
    labels = sorted(planned, key=lambda k: (-int(before.get(k, 0)), label_key(k)))
    head = (f"strategy {manifest.get('strategy')}  seed {manifest.get('seed')}  rows "
            f"{manifest.get('input_rows')} -> {manifest.get('output_rows')}")
    w = max([5] + [len(str(k)) for k in labels])
    lines = [head, f"{'class':>{w}}  {'before':>10}  {'planned':>10}  {'after':>10}  {'x':>8}"]
    shown = labels if len(labels) <= max_rows else labels[:max_rows // 2] + [None] + labels[-(max_rows // 2):]
    for k in shown:
        if k is None:
            lines.append(f"{'...':>{w}}  ({len(labels) - 2 * (max_rows // 2)} more classes in manifest.json)")
            continue
        b, p, a = int(before.get(k, 0)), int(planned.get(k, 0)), int(achieved.get(k, 0))
        factor = f"{a / b:.3g}" if b else "-"
        lines.append(f"{k:>{w}}  {b:>10}  {p:>10}  {a:>10}  {factor:>8}")
    n_in, n_out = manifest.get("input_rows") or 0, manifest.get("output_rows") or 0
    rho = lambda d: (max(d.values()) / min(v for v in d.values() if v)  # noqa: E731
                     if d and any(d.values()) else float("nan"))
    lines.append(f"{'total':>{w}}  {n_in:>10}  {sum(int(v) for v in planned.values()):>10}  "
                 f"{n_out:>10}")
    b_int = {k: int(v) for k, v in before.items()}
    a_int = {k: int(v) for k, v in achieved.items() if int(v) > 0}
    lines.append(f"imbalance ratio rho: {rho(b_int):.1f} -> {rho(a_int):.1f}")
    return "\n".join(lines)
