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
  are found from counts, without sorting a class:

  1. pass 1 (reads only ``id`` and the label): a histogram of the key's top ``bits`` bits per
     class — O(classes × 2**bits) numbers to the driver, which also yields the class counts;
  2. the driver finds, per class, the bin where the cumulative count crosses ``r`` and how many
     rows ``m`` of that bin are needed;
  3. pass 2 (again only ``id`` and label): the rows of those boundary bins (about
     ``n_c / 2**bits`` per class, 560 rows for a 2.3M-row class at 12 bits) are ranked with a
     window partitioned by class, and the ``m``-th row's ``(k, id)`` is the threshold —
     O(classes) values to the driver.

  The write pass is then map-only: a broadcast join of the O(classes) plan table, a filter and
  an ``explode`` for the copies. No global sort, no window over a whole class, no shuffle of
  the payload, so the largest class is never funnelled into one task and the driver's memory
  does not grow with rows.

Spark's ``sampleBy`` (Bernoulli per row) only hits its counts in expectation; a window or sort
per class gives exact ranks but puts the whole majority class into one task. The histogram +
boundary approach keeps the extra cost to two scans of two narrow columns.
"""
from __future__ import annotations

import logging
import numbers
import time
from typing import Any, Mapping, Optional

from pipeline.errors import InputError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "rus", "ros", "threshold", "floor", "hybrid")
TARGET_KINDS = ("auto", "majority", "minority", "not minority", "not majority", "all")
DEFAULT_BITS = 12          # 4096 key bins per class in pass 1
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
                raise InputError(f"ros cannot shrink class {key!r}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            if not over and want > counts[lab]:
                raise InputError(f"rus cannot grow class {key!r}: it has {counts[lab]} rows "
                                 f"and the target asks for {want}")
            plan[lab] = want
        return plan
    raise InputError(f"bad sampling target {target!r} for {name}: expected one of "
                     f"{', '.join(TARGET_KINDS)}, a float or a dict label -> count")


# ---------------------------------------------------------------- Spark side
def _read_input(spark, path: str, label_col: str):
    from pyspark.sql.utils import AnalysisException

    from pipeline.io import is_local, local_path, spark_uri

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
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    t = df.schema["id"].dataType
    if isinstance(t, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return F.col("id").cast("long")   # same key whether a copy stored id as int or long
    return F.col("id")


def _with_key(df, seed: int, bits: int):
    from pyspark.sql import functions as F

    key = F.xxhash64(F.lit(int(seed)).cast("long"), F.lit(SALT), _id_expr(df))
    return (df.withColumn(_KEY, key)
              .withColumn(_BIN, F.shiftright(F.col(_KEY), 64 - bits)))  # monotone in the key


def _native(v):
    return v.item() if hasattr(v, "item") else v


def _histogram(df, label_col: str, seed: int, bits: int):
    """Pass 1: rows per (class, key bin). Returns ({label: count}, {label: (bins, counts)})."""
    import numpy as np

    keyed = _with_key(df.select(label_col, "id"), seed, bits)
    pdf = keyed.groupBy(label_col, _BIN).count().toPandas()
    if pdf[label_col].isna().any():
        n_null = int(pdf.loc[pdf[label_col].isna(), "count"].sum())
        raise InputError(f"{n_null} rows have a null label in column '{label_col}'")
    counts, hist = {}, {}
    for lab, grp in pdf.groupby(label_col, sort=True):
        grp = grp.sort_values(_BIN)
        lab = _native(lab)
        hist[lab] = (grp[_BIN].to_numpy(np.int64), grp["count"].to_numpy(np.int64))
        counts[lab] = int(grp["count"].sum())
    return counts, hist


def _thresholds(spark, df, label_col: str, seed: int, bits: int, hist: dict,
                extra: Mapping) -> dict:
    """Pass 2: per class, the ``extra[c]``-th smallest (key, id) — the last row picked."""
    import numpy as np
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    rows = []
    for lab, r in extra.items():
        if r <= 0:
            continue
        bins, cnt = hist[lab]
        cum = np.cumsum(cnt)
        i = int(np.searchsorted(cum, r))          # first bin whose cumulative count reaches r
        before = int(cum[i - 1]) if i > 0 else 0
        rows.append((lab, int(bins[i]), r - before))
    if not rows:
        return {}
    label_type = df.schema[label_col].dataType
    bounds = spark.createDataFrame(rows, T.StructType([
        T.StructField(label_col, label_type), T.StructField(_BIN, T.LongType()),
        T.StructField("_m", T.LongType())]))
    keyed = _with_key(df.select(label_col, "id"), seed, bits)
    edge = keyed.join(F.broadcast(bounds), on=[label_col, _BIN], how="inner")
    w = Window.partitionBy(label_col).orderBy(_KEY, "id")
    picked = (edge.withColumn("_rn", F.row_number().over(w))
                  .filter(F.col("_rn") == F.col("_m"))
                  .select(label_col, _KEY, "id").collect())
    out = {_native(r[0]): (int(r[1]), r[2]) for r in picked}
    missing = [lab for lab, _, _ in rows if lab not in out]
    if missing:  # pragma: no cover - would mean the histogram and pass 2 disagree
        raise RuntimeError(f"no threshold row found for classes {missing}")
    return out


def _counts_json(d: Mapping) -> dict:
    return {str(k): int(v) for k, v in d.items()}


def sample_dataset(spark, input: str, out: str, strategy: str, target: Any = "auto",
                   cap: Optional[int] = None, floor: Optional[int] = None, seed: int = 0,
                   label_col: str = "label", bits: int = DEFAULT_BITS) -> dict:
    """Sample the Parquet table at ``input`` into ``out/data/`` and write ``out/manifest.json``.

    The output has the input's columns plus ``copy`` (0 for a row's first instance, 1, 2, …
    for ROS duplicates); achieved class sizes equal the plan exactly. Atomic: a failure leaves
    ``out`` as it was. Returns the manifest.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipeline.data.schema import has_info, read_info, write_info
    from pipeline.io import atomic_dir, spark_uri, write_json

    if not (1 <= int(bits) <= 20):
        raise InputError(f"bits must be in 1..20, got {bits}")
    strategy, cap, floor = check_request(strategy, cap, floor)   # fail before touching data
    t0 = time.time()
    df = _read_input(spark, input, label_col)
    counts, hist = _histogram(df, label_col, seed, bits)
    if not counts:
        raise InputError(f"input {input} has no rows")
    plan = plan_counts(counts, strategy, target=target, cap=cap, floor=floor)
    t_plan = time.time()

    whole = {c: plan[c] // counts[c] for c in plan}       # copies every row gets
    extra = {c: plan[c] % counts[c] for c in plan}        # rows that get one more
    thr = _thresholds(spark, df, label_col, seed, bits, hist, extra)
    t_thr = time.time()

    # The plan table: O(classes) rows, broadcast to every task of the (map-only) write pass.
    label_type = df.schema[label_col].dataType
    id_type = df.schema["id"].dataType
    integral = isinstance(id_type, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))
    plan_rows = [(c, int(whole[c]), thr[c][0] if c in thr else None,
                  (int(thr[c][1]) if integral else thr[c][1]) if c in thr else None)
                 for c in plan]
    plan_df = spark.createDataFrame(plan_rows, T.StructType([
        T.StructField(label_col, label_type), T.StructField("_q", T.LongType()),
        T.StructField("_tk", T.LongType()),
        T.StructField("_tid", T.LongType() if integral else id_type)]))

    cols = list(df.columns)
    keyed = _with_key(df, seed, bits).join(F.broadcast(plan_df), on=label_col, how="inner")
    picked = (F.col("_tk").isNotNull()
              & ((F.col(_KEY) < F.col("_tk"))
                 | ((F.col(_KEY) == F.col("_tk")) & (_id_expr(df) <= F.col("_tid")))))
    ncopies = F.col("_q") + F.when(picked, F.lit(1)).otherwise(F.lit(0))
    sampled = (keyed.withColumn(_N, ncopies)
                    .filter(F.col(_N) > 0)
                    .withColumn("copy", F.explode(F.sequence(F.lit(0), F.col(_N).cast("int") - 1)))
                    .select(*cols, "copy"))

    with atomic_dir(out) as tmp:
        data = tmp / "data"
        sampled.write.mode("error").parquet(spark_uri(data))
        t_write = time.time()
        written = spark.read.parquet(spark_uri(data))
        achieved = {_native(r[0]): int(r[1])
                    for r in written.groupBy(label_col).count().collect()}
        achieved = {c: achieved.get(c, 0) for c in plan}
        if achieved != plan:
            bad = [c for c in plan if achieved[c] != plan[c]][:5]
            raise InputError(
                "sampled counts differ from the plan for classes "
                + ", ".join(f"{c} ({achieved[c]} vs {plan[c]})" for c in bad)
                + ": the 'id' column must be unique")
        if has_info(input):
            info = read_info(input)
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
            "max_copies": int(max(whole[c] + (1 if extra[c] else 0) for c in plan)),
            "method": "hash-rank: key=xxhash64(seed,'sample',id); per-class threshold from a "
                      f"2^{bits}-bin key histogram + exact boundary-bin rank; "
                      "copies = N//n (+1 for the N%n smallest keys)",
            "seconds": {"plan": round(t_plan - t0, 3), "thresholds": round(t_thr - t_plan, 3),
                        "write": round(t_write - t_thr, 3),
                        "total": round(time.time() - t0, 3)},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def format_manifest(manifest: Mapping) -> str:
    """A before/after table of class sizes (largest input class first) for the CLI."""
    before = manifest.get("input_counts", {})
    planned = manifest.get("planned", {})
    achieved = manifest.get("achieved", {})
    labels = sorted(planned, key=lambda k: (-int(before.get(k, 0)), str(k)))
    head = (f"strategy {manifest.get('strategy')}  seed {manifest.get('seed')}  rows "
            f"{manifest.get('input_rows')} -> {manifest.get('output_rows')}")
    w = max([5] + [len(str(k)) for k in labels])
    lines = [head, f"{'class':>{w}}  {'before':>10}  {'planned':>10}  {'after':>10}  {'x':>8}"]
    for k in labels:
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
