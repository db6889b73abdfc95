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
* "The ``r`` smallest ranks" is one cut-off per class of the exact hash-rank selection of
  :mod:`pipeline.prep.keys` (the split's primitive too): the row of rank ``r`` is found from
  counts, without sorting a class, and a row is picked iff its ``(k, id)`` is below that row's.
  Main path, **one narrow pass** (reads only ``id`` and the label):

  1. class counts come from the table's ``_dataset.json`` (written by synth and split), else
     from one ``groupBy(label).count()``; the plan follows from them;
  2. the keys' ``window`` method: one grouped count returns the exact class counts (checking
     the hint) and the few candidates around each cut-off, from which the driver picks the row.

  Fallback (a stale hint is re-planned on the real counts; a missed window, a key shared by
  two candidates or too many candidates go here; ``method="histogram"`` forces it): the keys'
  ``bins`` method — a class count, a histogram of the keys per class, and a window over the
  few boundary bins; driver memory O(classes) bins whatever the size.

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
import numbers
import time
from typing import Any, Mapping, Optional


from pipeline.data.schema import has_info, read_info, write_info
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, label_key, local_path, read_json, spark_uri, write_json
from pipeline.prep.keys import (CANDIDATE_LIMIT, bucket_col, expected_candidates, id_sql_type, key_id,
                                python_scalar, rank_thresholds, window_thresholds, with_hash_key)
from pipeline.prep.literals import int_lookup

log = logging.getLogger(__name__)

STRATEGIES = ("none", "rus", "ros", "threshold", "floor", "hybrid")
TARGET_KINDS = ("auto", "majority", "minority", "not minority", "not majority", "all")
SALT = "sample"            # keeps the sampling key independent of the split's (seed, id) key

_N = "_ncopies"


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
    return _plan(class_counts, check_request(strategy, cap, floor), target)


def _plan(class_counts: Mapping, request: tuple, target: Any) -> dict:
    """:func:`plan_counts` for a request already checked by :func:`check_request`."""
    strategy, cap, floor = request
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


def _extra_cut(plan: Mapping, counts: Mapping) -> dict:
    """Per class, the one cut-off of the sampler: the ``N mod n`` rows of smallest rank get one more copy."""
    return {c: [plan[c] % counts[c]] for c in plan}


def _one_pass(keyed, label_col: str, hint: Optional[Mapping], make_plan):
    """Counts (the hint, else one count) and the threshold rows in one narrow pass when possible.

    Returns ``(counts, plan, thresholds or None, path)``; None thresholds leave the rest to the
    ``bins`` method (:func:`pipeline.prep.keys.rank_thresholds`) on real counts.
    """
    counts = dict(hint) if hint else None
    path = "one-pass (counts from _dataset.json)" if counts else "count + one-pass"
    if not counts:
        counts = _plain_counts(keyed, label_col)
    try:
        plan = make_plan(counts)
    except InputError:
        if path == "count + one-pass":
            raise
        return None, None, None, "histogram (stale _dataset.json counts)"  # decide on real counts
    if expected_candidates(counts, _extra_cut(plan, counts)) > CANDIDATE_LIMIT:
        return counts, plan, None, "histogram (too many candidates for one pass)"
    real, thr = window_thresholds(keyed, label_col, counts, _extra_cut(plan, counts), widen=True)
    if real != counts:                 # stale hint: plan again on the real counts
        counts, plan = real, make_plan(real)
        real, thr = window_thresholds(keyed, label_col, counts, _extra_cut(plan, counts), widen=True)
        path = "count + one-pass (stale _dataset.json counts)"
    if thr is None:
        path = "histogram (window missed)"
    return counts, plan, thr, path


def _select(df, label_col: str, seed: int, make_plan, *, class_counts=None, method: str = "auto"):
    """Class counts, the plan and the threshold rows (keys' plan) of the sampler; timings in seconds."""
    keyed = with_hash_key(df.select(label_col, "id"), seed, salt=SALT, widen=True)
    t0 = time.time()
    counts, plan, thr, path = None, None, None, "histogram"
    if method == "auto":
        counts, plan, thr, path = _one_pass(keyed, label_col, class_counts, make_plan)
    t_plan = time.time()
    if thr is None:
        if counts is None:
            counts = _plain_counts(keyed, label_col)
            plan = make_plan(counts)
            t_plan = time.time()
        thr = rank_thresholds(keyed, label_col, counts, _extra_cut(plan, counts), method="bins")
    return counts, plan, thr, path, {"plan": round(t_plan - t0, 3), "thresholds": round(time.time() - t_plan, 3)}


def _check_frame(df, label_col: str) -> None:
    for col in (label_col, "id"):
        if col not in df.columns:
            raise InputError(f"the DataFrame has no '{col}' column (columns: {', '.join(df.columns)})")
    if "copy" in df.columns:
        raise InputError("the DataFrame already has a 'copy' column: it was sampled already")


def _resample_rows(df, label_col: str, seed: int, counts: Mapping, plan: Mapping, thr: Mapping):
    """The sampled rows: ``N // n`` copies of every row, one more for the rows below the threshold."""
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    whole = {c: plan[c] // counts[c] for c in plan}       # copies every row gets
    extra = {c: plan[c] % counts[c] for c in plan}        # rows that get one more
    # The plan as per-class constants (O(classes) literals in the query): the write pass is
    # map-only, and the filter reads only label, id and the key, so rows that are not picked
    # never have their payload copied.
    below = bucket_col(thr, label_col, id_type=id_sql_type(df, "id", widen=True), id_column=key_id(df, widen=True))
    ncopies = int_lookup(label_col, whole).cast("long") + F.when(below == 0, F.lit(1)).otherwise(F.lit(0))
    cols = list(df.columns)
    kept = with_hash_key(df, seed, salt=SALT, widen=True).withColumn(_N, ncopies).filter(F.col(_N) > 0)
    max_copies = max(whole[c] + (1 if extra[c] else 0) for c in plan)
    if max_copies > 1:   # ROS: one output row per copy
        kept = kept.withColumn("copy", F.explode(F.sequence(F.lit(0), F.col(_N).cast("int") - 1)))
    else:                # RUS / cap only: no generator on the hot path
        kept = kept.withColumn("copy", F.lit(0))
    return kept.select(*cols, F.col("copy").cast("int").alias("copy")), int(max_copies)


def _counts_json(d: Mapping) -> dict:
    return {str(k): int(v) for k, v in d.items()}


def _fit(df, request: tuple, sampling_strategy: Any, random_state: int, *, label_col: str,
         class_counts: Optional[Mapping], method: str):
    """:func:`fit_resample` on a request already checked by :func:`check_request`."""
    if method not in ("auto", "histogram"):
        raise InputError(f"method must be auto or histogram, got {method!r}")
    strategy, cap, floor = request
    _check_frame(df, label_col)

    def make_plan(counts):
        if not counts:
            raise InputError("the input has no rows")
        return _plan(counts, request, sampling_strategy)

    counts, plan, thr, path, seconds = _select(df, label_col, random_state, make_plan,
                                               class_counts=class_counts, method=method)
    sampled, max_copies = _resample_rows(df, label_col, random_state, counts, plan, thr)
    return sampled, {"strategy": strategy, "target": sampling_strategy, "cap": cap, "floor": floor,
                     "seed": int(random_state), "input_counts": counts, "planned": plan, "max_copies": max_copies,
                     "path": path, "seconds": seconds}


def fit_resample(df, strategy: str, sampling_strategy: Any = "auto", cap: Optional[int] = None,
                 floor: Optional[int] = None, random_state: int = 0, *, label_col: str = "label",
                 class_counts: Optional[Mapping] = None, method: str = "auto"):
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
    ``method``: ``auto`` (the one-pass window method, falling back to key histograms when needed)
    or ``histogram`` (always key histograms; same rows).
    ``plan``: ``input_counts``, ``planned`` (label → rows), ``max_copies``, ``path`` (how the
    thresholds were found) and ``seconds``.
    """
    request = check_request(strategy, cap, floor)   # fail before touching data
    return _fit(df, request, sampling_strategy, random_state, label_col=label_col, class_counts=class_counts,
                method=method)


def sample_dataset(spark, table: str, out: str, strategy: str, target: Any = "auto",
                   cap: Optional[int] = None, floor: Optional[int] = None, seed: int = 0,
                   label_col: str = "label", method: str = "auto", use_hint: bool = True) -> dict:
    """Sample the Parquet table at ``table`` into ``out/data/`` and write ``out/manifest.json``.

    The rows are :func:`fit_resample`'s; achieved class sizes are measured on what was written
    and must equal the plan exactly. Atomic: a failure leaves ``out`` as it was. Returns the
    manifest.

    ``method``: ``auto`` (the one-pass window method, falling back to histograms when needed)
    or ``histogram`` (always histograms; same rows, used to cross-check). ``use_hint``: take
    the class counts from ``_dataset.json`` when present (they are verified).
    """
    request = check_request(strategy, cap, floor)   # fail before touching data
    t0 = time.time()
    df = _read_input(spark, table, label_col)
    sampled, fit = _fit(df, request, target, seed, label_col=label_col, method=method,
                        class_counts=_hint_counts(table, df, label_col) if use_hint else None)
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
