"""Pass 1 of the evaluate stage in Spark: open a predictions table, validate every row, aggregate.

:func:`scan_predictions` runs one ``mapInArrow`` + a small ``groupBy`` over the table (a threshold-moving
rule, when given, is scored here too): it validates every row (ragged / NaN / negative /
non-normalised ``probs``, labels and predictions outside the class range) and aggregates per partition
the confusion matrix (K×K), the Brier sum, the calibration partials and, per class, a histogram of the
scores over fixed, monotone buckets (:func:`pipeline.evaluation.metric_math.score_bucket`). The driver
receives O(K² + K·buckets) numbers, independent of the row count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.data.prior_correction import correct_probs
from pipeline.data.schema import has_info, read_info
from pipeline.errors import InputError
from pipeline.evaluation.calibration import ECE_BINS, brier_units, from_fixed, reliability_partials
from pipeline.evaluation.metric_math import N_BUCKETS, check_probs, score_bucket
from pipeline.io import local_path, spark_uri

PROBS_COL = "probs"
ADJUSTED_COL = "pred_adjusted"


@dataclass
class Loaded:
    df: object            # Spark DataFrame: label, probs (array<double>), pred, [pred_adjusted]
    n_classes: int
    class_names: Optional[list]
    has_adjusted: bool


def load_predictions(spark, predictions, label_col: str = "label", pred_col: Optional[str] = "pred",
                     n_classes: Optional[int] = None, class_names=None) -> Loaded:
    """Open a predictions table (path or DataFrame), check its schema, find the class count."""
    if isinstance(predictions, DataFrame):
        df = predictions
        info = None
    else:
        path = local_path(predictions)
        if "://" not in str(predictions) and not path.exists():
            raise InputError(f"predictions not found: {predictions}")
        try:
            df = spark.read.parquet(spark_uri(predictions))
        except Exception as e:  # noqa: BLE001 - Spark's AnalysisException and friends
            raise InputError(f"cannot read predictions {predictions} as Parquet: "
                             f"{str(e).splitlines()[0][:200]}") from None
        info = read_info(predictions) if has_info(predictions) else None

    cols = set(df.columns)
    needed = [label_col, PROBS_COL] + ([pred_col] if pred_col else [])
    missing = [c for c in needed if c not in cols]
    if missing:
        raise InputError(f"predictions lack column(s) {', '.join(missing)} (have: {', '.join(df.columns)})")
    fields = {f.name: f.dataType for f in df.schema.fields}
    ints = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    for c in [label_col] + ([pred_col] if pred_col else []) + ([ADJUSTED_COL] if ADJUSTED_COL in cols else []):
        if not isinstance(fields[c], ints):
            raise InputError(f"column '{c}' must hold integer class indices, found {fields[c].simpleString()}")
    pt = fields[PROBS_COL]
    if not (isinstance(pt, T.ArrayType) and isinstance(pt.elementType, (T.DoubleType, T.FloatType))):
        raise InputError(f"column '{PROBS_COL}' must be array<double>, found {pt.simpleString()}")

    has_adj = ADJUSTED_COL in cols and pred_col != ADJUSTED_COL
    sel = [F.col(label_col).cast("long").alias("label"),
           F.col(PROBS_COL).cast("array<double>").alias("probs")]
    if pred_col:
        sel.append(F.col(pred_col).cast("long").alias("pred"))
    if has_adj:
        sel.append(F.col(ADJUSTED_COL).cast("long").alias("pred_adjusted"))
    df = df.select(*sel)

    if n_classes is None and info is not None:
        n_classes = int(info.n_classes)
    if class_names is None and info is not None and info.labels:
        class_names = list(info.labels)
    if n_classes is None:
        first = df.select(F.size("probs").alias("k")).where(F.col("probs").isNotNull()).first()
        if first is None:
            raise InputError("predictions table is empty")
        n_classes = int(first["k"])
    if n_classes < 2:
        raise InputError(f"need at least 2 classes, probs have {n_classes}")
    if class_names is not None and len(class_names) != n_classes:
        raise InputError(f"{len(class_names)} class names for {n_classes} classes")
    return Loaded(df, int(n_classes), class_names, has_adj)


# xh, xl: an exact sum in 2⁻⁴⁰ units (see pipeline.evaluation.calibration), split as xh·2³⁰ + xl so
# that Spark's long sums of them cannot overflow and add to the same bits in any order
_SCAN_SCHEMA = "kind string, i long, j long, a long, b long, xh long, xl long, msg string"
_SPLIT = 30


def _split(units: int) -> tuple[int, int]:
    return units >> _SPLIT, units & ((1 << _SPLIT) - 1)


def _join(xh, xl) -> float:
    return from_fixed((int(xh) << _SPLIT) + int(xl))


def arrow_probs(col, k: int):
    """(n, k) float64 view of an Arrow list<double> column, or an error message."""
    if isinstance(col, pa.ChunkedArray):
        col = pa.concat_arrays(col.chunks)
    if col.null_count:
        return None, f"{col.null_count} row(s) with null probs"
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != k or lengths.max() != k):
        bad = int(np.sum(lengths != k))
        return None, (f"ragged probs: {bad} row(s) do not have {k} probabilities "
                      f"(lengths {int(lengths.min())}..{int(lengths.max())})")
    values = col.flatten()
    if values.null_count:
        return None, f"{values.null_count} null value(s) inside probs"
    probs = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(len(col), k)
    return probs, None


def _int_column(batch, name):
    col = batch.column(name)
    if col.null_count:
        return None, f"{col.null_count} null value(s) in column '{name}'"
    return col.to_numpy(zero_copy_only=False).astype(np.int64), None



_SCAN_COLUMNS = ("kind", "i", "j", "a", "b", "xh", "xl", "msg")
_SCAN_ARROW = pa.schema([("kind", pa.string()), ("i", pa.int64()), ("j", pa.int64()), ("a", pa.int64()),
                         ("b", pa.int64()), ("xh", pa.int64()), ("xl", pa.int64()), ("msg", pa.string())])


def _read_block(batch, k: int, has_pred: bool, read_adjusted: bool):
    """``(labels, {name: predictions}, probs, error)`` of one Arrow batch, validated."""
    labels, err = _int_column(batch, "label")
    if err:
        return None, None, None, err
    preds = {}
    for name, on in (("pred", has_pred), ("pred_adjusted", read_adjusted)):
        if on:
            preds[name], err = _int_column(batch, name)
            if err:
                return None, None, None, err
    probs, err = arrow_probs(batch.column("probs"), k)
    if err:
        return None, None, None, err
    return labels, preds, probs, check_probs(probs, labels, preds, k)


class _Partials:
    """One partition's aggregates: confusion matrices, Brier sum, score histograms, calibration bins."""

    def __init__(self, k: int, has_pred: bool, has_adj: bool, variants: Sequence):
        self.k, self.has_pred, self.variants = k, has_pred, variants
        self.n = 0
        self.brier = 0            # exact sums in 2⁻⁴⁰ units (see pipeline.evaluation.calibration)
        self.cm = np.zeros(k * k, np.int64)
        self.cma = np.zeros(k * k, np.int64) if has_adj else None
        self.hist_tot = np.zeros(k * N_BUCKETS, np.int64)
        self.hist_pos = np.zeros(k * N_BUCKETS, np.int64)
        self.cls_off = (np.arange(k, dtype=np.int64) * N_BUCKETS)[None, :]
        self.cal = [np.zeros((ECE_BINS, 3), dtype=object) for _ in variants]
        self.cal_brier = [0] * len(variants)

    def add(self, labels, preds: dict, probs) -> None:
        k = self.k
        self.n += len(labels)
        self.brier += brier_units(probs, labels)
        if self.has_pred:
            self.cm += np.bincount(labels * k + preds["pred"], minlength=k * k)
        if self.cma is not None:
            self.cma += np.bincount(labels * k + preds["pred_adjusted"], minlength=k * k)
        B = score_bucket(probs) + self.cls_off
        self.hist_tot += np.bincount(B.ravel(), minlength=k * N_BUCKETS)
        self.hist_pos += np.bincount(B[np.arange(len(labels)), labels], minlength=k * N_BUCKETS)
        for v, (_, weights, temperature) in enumerate(self.variants):
            Q = correct_probs(probs, weights, temperature)
            self.cal_brier[v] += brier_units(Q, labels)
            self.cal[v] += reliability_partials(Q, labels)

    def rows(self, out: dict) -> None:
        """Append the aggregates to the columns of :data:`_SCAN_SCHEMA` (only non-zero cells)."""
        def add(kind, i=0, j=0, *, a=0, b=0, x=0):
            for key, v in zip(out, (kind, i, j, a, b, *_split(x), None)):
                out[key].append(v)

        k = self.k
        add("n", a=self.n, x=self.brier)
        for name, arr in (("cm", self.cm), ("cma", self.cma)):
            if arr is not None:
                for idx in np.flatnonzero(arr):
                    add(name, int(idx // k), int(idx % k), a=int(arr[idx]))
        for idx in np.flatnonzero(self.hist_tot):
            add("hist", int(idx // N_BUCKETS), int(idx % N_BUCKETS),
                a=int(self.hist_pos[idx]), b=int(self.hist_tot[idx] - self.hist_pos[idx]))
        for v, cal in enumerate(self.cal):
            add("calbrier", v, x=self.cal_brier[v])
            for m in range(ECE_BINS):
                if cal[m, 0]:
                    # rows and correct rows in a, b; the confidence sum in x
                    add("cal", v, m, a=int(cal[m, 0]), b=int(cal[m, 1]), x=int(cal[m, 2]))


def _scan_fn(k: int, has_pred: bool, has_adj: bool, adjust: Optional[Callable] = None,
             variants: Sequence = ()):
    """Per-partition validation and aggregates (confusion matrices, Brier sum, score histograms).

    ``adjust``: a function (n, k) probs → n class indices (a threshold-moving rule); its decisions
    are counted as ``pred_adjusted`` in this same pass instead of being read from a column.
    ``variants``: (name, prior weights or None, temperature) per calibration column; each adds its
    Brier sum and reliability bins (:mod:`pipeline.evaluation.calibration`) of the corrected probs.
    """

    def fn(batches: Iterator) -> Iterator:
        partials = _Partials(k, has_pred, has_adj, variants)
        err = None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            labels, preds, probs, err = _read_block(batch, k, has_pred, has_adj and adjust is None)
            if err:
                break
            if adjust is not None:
                preds["pred_adjusted"] = np.asarray(adjust(probs), dtype=np.int64)
            partials.add(labels, preds, probs)
        out = {c: [] for c in _SCAN_COLUMNS}
        if err:
            for key, v in zip(out, ("err", 0, 0, 1, 0, 0, 0, err)):
                out[key].append(v)
        else:
            partials.rows(out)
        yield pa.RecordBatch.from_pydict(out, schema=_SCAN_ARROW)

    return fn


@dataclass
class Scan:
    n: int
    brier_sum: float
    cm: Optional[np.ndarray]
    cm_adjusted: Optional[np.ndarray]
    hist_pos: np.ndarray      # (K, N_BUCKETS)
    hist_neg: np.ndarray
    cal_brier: Optional[np.ndarray] = None    # (variants,) Brier sums of the calibration variants
    cal_bins: Optional[np.ndarray] = None     # (variants, ECE_BINS, 3): rows, correct, Σ confidence (units)


def scan_predictions(loaded: Loaded, adjust: Optional[Callable] = None, variants: Sequence = ()) -> Scan:
    """Pass 1: validate every row and aggregate what is O(classes) (raises InputError on bad rows).

    ``adjust``: a threshold-moving rule as a function of the probs block (see :func:`_scan_fn`);
    its confusion matrix is ``cm_adjusted``, as if the table had a ``pred_adjusted`` column.
    ``variants``: the calibration columns to score (see :func:`_scan_fn`).
    """
    k = loaded.n_classes
    has_pred = "pred" in loaded.df.columns
    has_adj = loaded.has_adjusted or adjust is not None
    df = loaded.df.drop("pred_adjusted") if adjust is not None else loaded.df
    # every partial is an integer (float sums in 2⁻⁴⁰ units), so Spark adds them exactly in any order
    # and however rows fall into partitions: the same predictions give the same bits of every sum
    agg = (df.mapInArrow(_scan_fn(k, has_pred, has_adj, adjust, variants), _SCAN_SCHEMA)
           .groupBy("kind", "i", "j")
           .agg(*(F.sum(c).alias(c) for c in ("a", "b", "xh", "xl")),
                F.first("msg", ignorenulls=True).alias("msg"))
           .toPandas())
    agg["x"] = [_join(h, l) for h, l in zip(agg.xh, agg.xl)]
    agg["units"] = [(int(h) << _SPLIT) + int(l) for h, l in zip(agg.xh, agg.xl)]
    errs = agg[agg.kind == "err"]
    if len(errs):
        raise InputError(str(errs.msg.iloc[0]))
    nrow = agg[agg.kind == "n"]
    n = int(nrow.a.sum()) if len(nrow) else 0
    if n == 0:
        raise InputError("predictions table is empty")

    def matrix(kind):
        m = np.zeros((k, k), np.int64)
        part = agg[agg.kind == kind]
        m[part.i.to_numpy(), part.j.to_numpy()] = part.a.to_numpy()
        return m

    h = agg[agg.kind == "hist"]
    hp = np.zeros((k, N_BUCKETS), np.int64)
    hn = np.zeros((k, N_BUCKETS), np.int64)
    hp[h.i.to_numpy(), h.j.to_numpy()] = h.a.to_numpy()
    hn[h.i.to_numpy(), h.j.to_numpy()] = h.b.to_numpy()
    cal_brier = np.zeros(len(variants))
    cal_bins = np.zeros((len(variants), ECE_BINS, 3), dtype=object)
    cb = agg[agg.kind == "calbrier"]
    cal_brier[cb.i.to_numpy()] = cb.x.to_numpy()
    cr = agg[agg.kind == "cal"]
    vi, mi = cr.i.to_numpy(), cr.j.to_numpy()
    for v, m, rows, correct, units in zip(vi, mi, cr.a, cr.b, cr.units):
        cal_bins[v, m] = [int(rows), int(correct), units]
    return Scan(n=n, brier_sum=from_fixed(sum(nrow.units)), cm=matrix("cm") if has_pred else None,
                cm_adjusted=matrix("cma") if has_adj else None, hist_pos=hp, hist_neg=hn,
                cal_brier=cal_brier, cal_bins=cal_bins)
