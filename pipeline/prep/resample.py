"""Exact, distributed class-level resampling of a Spark DataFrame: the rows of a sampling plan.

How the rows are chosen (:func:`fit_resample`) — exact, reproducible and skew-free:

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

The plan (how many rows each class gets) is :mod:`pipeline.prep.sampling_plan`'s; the stage that
reads and writes tables is :mod:`pipeline.prep.sampling`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from pyspark.sql import functions as F

from pipeline.errors import InputError
from pipeline.prep.keys import (CANDIDATE_LIMIT, bucket_col, expected_candidates, id_sql_type, key_id,
                                python_scalar, rank_thresholds, window_thresholds, with_hash_key)
from pipeline.prep.literals import int_lookup
from pipeline.prep.sampling_plan import SamplingRequest, check_request, planned_counts

SALT = "sample"            # keeps the sampling key independent of the split's (seed, id) key
METHODS = ("auto", "histogram")
_N = "_ncopies"


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


@dataclass(frozen=True)
class SamplingPlan:
    """What :func:`fit_resample` did: the checked request, the class counts it found, the rows each
    class gets (``planned``), the most copies of one row, how the thresholds were found (``path``)
    and the seconds spent on the plan and on the thresholds."""

    request: SamplingRequest
    sampling_strategy: Any
    random_state: int
    input_counts: dict
    planned: dict
    max_copies: int
    path: str
    seconds: dict


def resample_checked(df, request: SamplingRequest, sampling_strategy: Any = "auto", random_state: int = 0, *,
                     label_col: str = "label", class_counts: Optional[Mapping] = None, method: str = "auto"):
    """:func:`fit_resample` for a request already checked by :func:`check_request` (not checked again)."""
    if method not in METHODS:
        raise InputError(f"method must be auto or histogram, got {method!r}")
    _check_frame(df, label_col)

    def make_plan(counts):
        if not counts:
            raise InputError("the input has no rows")
        return planned_counts(counts, request, sampling_strategy)

    counts, plan, thr, path, seconds = _select(df, label_col, random_state, make_plan,
                                               class_counts=class_counts, method=method)
    sampled, max_copies = _resample_rows(df, label_col, random_state, counts, plan, thr)
    return sampled, SamplingPlan(request, sampling_strategy, int(random_state), counts, plan, max_copies, path,
                                 seconds)


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
    ``plan``: a :class:`SamplingPlan` (``input_counts``, ``planned`` label → rows, ``max_copies``,
    ``path``: how the thresholds were found, ``seconds``).
    """
    request = check_request(strategy, cap, floor)   # fail before touching data
    return resample_checked(df, request, sampling_strategy, random_state, label_col=label_col,
                            class_counts=class_counts, method=method)
