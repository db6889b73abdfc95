"""Class-wise evaluation in Spark: exact one-vs-rest ROC AUC and average precision at scale.

The survey's central demand is that a model trained on imbalanced data be judged class by class,
never by accuracy alone. :func:`evaluate_predictions` reads a predictions table (``id``, ``label``
index, ``probs`` array<double>, ``pred``, optional ``pred_adjusted``) and writes ``metrics.json``
(the contract in DESIGN.md) and ``metrics.parquet`` (one row per class).

How it scales without collecting predictions (two passes over the table, one shuffle):

1. **Scan** (``mapInArrow`` + a small ``groupBy``; a threshold-moving rule, when given, is
   scored here too): validates every row (ragged / NaN /
   negative / non-normalised ``probs``, labels and predictions outside the class range), and
   aggregates per partition the confusion matrix (K×K), the Brier sum and, per class, a
   histogram of the scores over *fixed, monotone buckets* (the top bits of the IEEE-754 pattern:
   exponent + 4 mantissa bits, i.e. 16 buckets per octave). The driver receives O(K² + K·buckets)
   numbers, independent of the row count.
2. **Groups**: the driver cuts each class's buckets, walking from the highest score down, into
   contiguous *groups* of at most ``target_group_rows`` rows. Because the buckets are monotone in
   the score and their exact (pos, neg) totals are known, every group knows its exact offsets: the
   number of positives ``T`` and negatives ``F`` of its class that score *strictly above* it.
   A class with 3.4M distinct scores is therefore split over many tasks (no window over a whole
   class in one task), and tiny classes cost one small group.
3. **Rank** (``mapInArrow`` + ``groupBy(group).applyInPandas``): every partition collapses its
   rows to distinct ``(class, score)`` pairs with positive/negative counts (this removes ties
   before the shuffle), the pairs are shuffled by group — packed as raw arrays, one shuffle row
   per group and batch rather than one per pair — and each group sorts its distinct scores
   descending and adds its exact contribution:

   * ROC AUC (Mann–Whitney with mid-ranks): ``AUC = Σ_k neg_k·(TP_{<k} + pos_k/2) / (P·N)``, where
     ``TP_{<k}`` counts positives scoring strictly above threshold k (``T`` + the group's own
     cumulative count). Kept as an exact integer (×2) until the final division. This equals the
     trapezoidal area under scikit-learn's ``roc_curve`` (``roc_auc_score``), ties included.
   * Average precision: ``AP = Σ_k (R_k − R_{k−1})·P_k = Σ_k pos_k/P · TP_k/(TP_k + FP_k)`` over
     distinct thresholds in descending order, ``TP_k = T + cumsum(pos)``, ``FP_k = F +
     cumsum(neg)`` — scikit-learn's ``average_precision_score`` (step-wise, not trapezoidal).

   Both are sums of per-threshold terms whose only non-local inputs are the offsets, so the result
   is exact whatever the partitioning. Only one row per group (and ≤ ~200 PR-curve points of a few
   rare classes, for the report) comes back to the driver.

Conventions (as scikit-learn / imbalanced-learn, and DESIGN.md): rows of ``confusion_matrix`` are
true classes, columns predicted ones; a class absent from the labels gets ``null`` for rates that
divide by its zero support (recall, F1, G-mean, balanced accuracy, ROC AUC, PR AUC); a present
class that is never predicted has precision 0 (scikit-learn's ``zero_division`` default); macro and
weighted averages and the multiclass ``balanced_accuracy`` / ``g_mean`` run over classes with
support > 0.

Two different "balanced accuracies" live in ``metrics.json``, so each has a second, unambiguous
name (docs/metrics.md documents every field):

* ``balanced_accuracy`` = ``mean_recall`` = (1/K) Σ_c recall_c — the multiclass balanced accuracy
  of scikit-learn's ``balanced_accuracy_score``;
* ``macro.balanced_accuracy`` = ``mean_ovr_balanced_accuracy`` = (1/K) Σ_c (recall_c +
  specificity_c)/2 — the mean of the per-class one-vs-rest values, much higher than the first
  when there are many classes (every class's specificity is near 1).

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
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from pipeline.data.schema import has_info, read_info
from pipeline.errors import InputError
from pipeline.evaluation.binary import (DEFAULT_ALERT_FRACTIONS, DEFAULT_PRECISION_LEVELS, DEFAULT_RECALL_LEVELS,
                                        alert_rows, combine, group_partials, positive_class)
from pipeline.evaluation.binary_bootstrap import binary_intervals, group_segments, join_segments
from pipeline.evaluation.calibration import (ECE_BINS, brier_units, ece_from_partials, from_fixed, reliability_bins,
                                             reliability_partials)
from pipeline.io import local_path, spark_uri, write_json
from pipeline.data.prior_correction import correct_probs, scoring_transform

log = logging.getLogger(__name__)

PROBS_COL = "probs"
ADJUSTED_COL = "pred_adjusted"
PROB_TOLERANCE = 1e-4          # |Σ probs − 1| allowed (float32 softmax over 1000 classes stays well within)
RATE_KEYS = ("precision", "recall", "specificity", "f1", "g_mean", "balanced_accuracy",
             "roc_auc", "pr_auc")
COUNT_KEYS = ("support", "tp", "fp", "fn", "tn")
CURVE_POINTS = 200
# What the two easily confused fields mean, written into metrics.json beside them.
FIELD_NOTES = {
    "balanced_accuracy": "multiclass balanced accuracy = mean_recall = mean over present classes of recall "
                         "(scikit-learn balanced_accuracy_score)",
    "macro.balanced_accuracy": "mean_ovr_balanced_accuracy = mean over present classes of the one-vs-rest "
                               "(recall + specificity) / 2; not the multiclass balanced accuracy",
    "docs": "docs/metrics.md",
}

# Score buckets: top bits of the IEEE-754 double (exponent + MANTISSA_BITS), monotone in the value
# for non-negative doubles. Scores below 2**-127 share bucket 0; [1, 2) and above share the last.
MANTISSA_BITS = 4
_SHIFT = 52 - MANTISSA_BITS
_BASE = (1023 - 127) << MANTISSA_BITS
N_BUCKETS = 129 << MANTISSA_BITS


def score_bucket(scores: np.ndarray) -> np.ndarray:
    """Monotone bucket index of non-negative float64 scores (equal scores share a bucket)."""
    s = np.ascontiguousarray(scores, dtype=np.float64) + 0.0     # -0.0 -> 0.0
    bits = s.view(np.int64) >> _SHIFT
    return np.clip(bits - _BASE, 0, N_BUCKETS - 1)


# ------------------------------------------------------------------------------ pure metric math
def _div(a: float, b: float) -> Optional[float]:
    return None if b == 0 else float(a) / float(b)


def classwise_from_confusion(cm: np.ndarray) -> list[dict]:
    """Per-class counts and threshold rates from a K×K confusion matrix (rows true, cols predicted).

    precision = tp/(tp+fp) (0 for a present class never predicted, null for an absent class never
    predicted); recall = tp/support; specificity = tn/(tn+fp); F1 = 2tp/(2tp+fp+fn);
    G-mean = √(recall·specificity) and balanced accuracy = (recall+specificity)/2 in
    imbalanced-learn's per-class (one-vs-rest) sense. Rates dividing by a zero support are null.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    rows = []
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        support = int(cm[c, :].sum())
        predicted = int(cm[:, c].sum())
        fn, fp = support - tp, predicted - tp
        tn = n - tp - fn - fp
        present = support > 0
        recall = _div(tp, support)
        spec = _div(tn, tn + fp)
        if predicted > 0:
            precision = tp / predicted
        else:
            precision = 0.0 if present else None
        f1 = _div(2 * tp, 2 * tp + fp + fn) if present else None
        gm = math.sqrt(recall * spec) if recall is not None and spec is not None else None
        ba = (recall + spec) / 2 if recall is not None and spec is not None else None
        rows.append(dict(label=c, support=support, tp=tp, fp=fp, fn=fn, tn=tn,
                         precision=precision, recall=recall, specificity=spec, f1=f1,
                         g_mean=gm, balanced_accuracy=ba, roc_auc=None, pr_auc=None))
    return rows


def size_groups(per_class: list[dict], train_counts: Optional[dict] = None) -> dict:
    """Mean F1 of the 5 largest classes (L5) and of the other present classes (Rest).

    Lee et al.'s L5 are the five most populous *training* classes: largest by ``train_counts``
    (training rows per class index) when given — on a balanced test set the test support cannot
    tell the head from the tail — else by test support; ties by class index. ``basis`` says which
    (``"training"`` or ``"support"``).
    """
    present = [r for r in per_class if r["support"] > 0]
    if train_counts:
        order = sorted(present, key=lambda r: (-train_counts.get(r["label"], 0), r["label"]))
    else:
        order = sorted(present, key=lambda r: (-r["support"], r["label"]))

    def mean_f1(rs):
        v = [r["f1"] for r in rs if r["f1"] is not None]
        return float(np.mean(v)) if v else None

    return {"L5": {"f1": mean_f1(order[:5]), "classes": [r["label"] for r in order[:5]]},
            "rest": {"f1": mean_f1(order[5:]), "classes": [r["label"] for r in order[5:]]},
            "basis": "training" if train_counts else "support"}


GROUP_BASIS_TEXT = {"training": "training rows", "support": "test support"}


def summarize(per_class: list[dict], cm: np.ndarray, brier: Optional[float] = None,
              keys: Sequence[str] = RATE_KEYS, train_counts: Optional[dict] = None) -> dict:
    """Macro/weighted averages, accuracy, multiclass balanced accuracy and G-mean, L5/rest F1.

    Averages run over classes with support > 0 (null rates, e.g. an undefined specificity, are
    skipped). ``g_mean`` is the geometric mean of the present classes' recalls (0 when any is 0),
    imbalanced-learn's multiclass ``geometric_mean_score``. ``groups``: :func:`size_groups`, L5 by
    ``train_counts`` (training rows per class) when given, else by support.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    present = [r for r in per_class if r["support"] > 0]
    macro, weighted = {}, {}
    for k in keys:
        vals = [(r[k], r["support"]) for r in present if r.get(k) is not None]
        macro[k] = float(np.mean([v for v, _ in vals])) if vals else None
        wsum = sum(w for _, w in vals)
        weighted[k] = float(sum(v * w for v, w in vals) / wsum) if wsum else None
    recalls = np.array([r["recall"] for r in present], dtype=np.float64)
    if len(recalls) == 0:
        g_mean = None
    elif np.any(recalls == 0):
        g_mean = 0.0
    else:
        g_mean = float(np.exp(np.mean(np.log(recalls))))
    sizes = [r["support"] for r in present]
    out = dict(
        n_rows=n,
        n_classes=int(cm.shape[0]),
        n_present=len(present),
        rho=(max(sizes) / min(sizes)) if sizes else None,
        accuracy=_div(int(np.trace(cm)), n),
        balanced_accuracy=float(np.mean(recalls)) if len(recalls) else None,
        mean_recall=float(np.mean(recalls)) if len(recalls) else None,
        mean_ovr_balanced_accuracy=macro.get("balanced_accuracy"),
        g_mean=g_mean,
        brier=brier,
        macro=macro,
        weighted=weighted,
        groups=size_groups(per_class, train_counts),
        confusion_matrix=cm.tolist(),
        per_class=per_class,
        field_notes=FIELD_NOTES,
    )
    return out


def group_contributions(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, T: int, F: int):
    """Exact AUC and AP contributions of one group of (score, pos, neg) rows (duplicates allowed).

    ``T``/``F``: positives/negatives of the class scoring strictly above every score in the group.
    Returns ``(distinct scores descending, pos_k, neg_k, TP_k, FP_k, auc2, ap_sum)`` with
    ``auc2 = Σ neg_k·(2·TP_{<k} + pos_k)`` (an exact integer: AUC = Σ auc2 / (2·P·N)) and
    ``ap_sum = Σ pos_k·TP_k/(TP_k+FP_k)`` (AP = Σ ap_sum / P).
    """
    uniq, inv = np.unique(np.asarray(scores, dtype=np.float64) + 0.0, return_inverse=True)
    p = np.bincount(inv, weights=pos, minlength=len(uniq)).astype(np.int64)[::-1]
    q = np.bincount(inv, weights=neg, minlength=len(uniq)).astype(np.int64)[::-1]
    s = uniq[::-1]
    tp = T + np.cumsum(p)
    fp = F + np.cumsum(q)
    auc2 = int(np.sum(q * (2 * (tp - p) + p)))
    hit = p > 0
    ap_sum = float(np.sum(p[hit] * (tp[hit] / (tp[hit] + fp[hit]))))
    return s, p, q, tp, fp, auc2, ap_sum


def threshold_metric(name: str, tp, fp, n_pos: int, n_neg: int):
    """Binary metric at thresholds from TP/FP counts (arrays): f1, balanced_accuracy, g_mean, accuracy."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "f1":
            return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        tpr = tp / n_pos if n_pos else np.zeros_like(tp)
        tnr = tn / n_neg if n_neg else np.zeros_like(tp)
        if name == "balanced_accuracy":
            return (tpr + tnr) / 2
        if name == "g_mean":
            return np.sqrt(tpr * tnr)
        if name == "accuracy":
            return (tp + tn) / (n_pos + n_neg)
    raise InputError(f"unknown threshold metric '{name}' (f1, balanced_accuracy, g_mean, accuracy)")


TUNE_METRICS = ("f1", "balanced_accuracy", "g_mean", "accuracy")


# ------------------------------------------------------------------------------ loading
@dataclass
class Loaded:
    df: object            # Spark DataFrame: label, probs (array<double>), pred, [pred_adjusted]
    n_classes: int
    class_names: Optional[list]
    has_adjusted: bool


def load_predictions(spark, predictions, label_col: str = "label", pred_col: Optional[str] = "pred",
                     n_classes: Optional[int] = None, class_names=None) -> Loaded:
    """Open a predictions table (path or DataFrame), check its schema, find the class count."""
    # deferred: pyspark is slow to import
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

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


# ------------------------------------------------------------------------------ pass 1: scan
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
    # deferred: pyarrow is slow to import
    import pyarrow as pa
    import pyarrow.compute as pc

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


def _check_block(probs, labels, preds: dict, k: int) -> Optional[str]:
    if not np.all(np.isfinite(probs)):
        return f"{int(np.sum(~np.all(np.isfinite(probs), axis=1)))} row(s) with NaN or infinite probs"
    if np.any(probs < 0):
        return f"{int(np.sum(np.any(probs < 0, axis=1)))} row(s) with negative probs"
    dev = np.abs(probs.sum(axis=1) - 1.0)
    if np.any(dev > PROB_TOLERANCE):
        return (f"probs not normalised: {int(np.sum(dev > PROB_TOLERANCE))} row(s) do not sum to 1 "
                f"(worst sum {float(probs.sum(axis=1)[np.argmax(dev)]):.6g})")
    for name, arr in [("label", labels)] + list(preds.items()):
        bad = (arr < 0) | (arr >= k)
        if np.any(bad):
            return (f"{int(bad.sum())} {name}(s) outside the class range 0..{k - 1} "
                    f"(e.g. {int(arr[bad][0])})")
    return None


def _int_column(batch, name):
    col = batch.column(name)
    if col.null_count:
        return None, f"{col.null_count} null value(s) in column '{name}'"
    return col.to_numpy(zero_copy_only=False).astype(np.int64), None


def _scan_fn(k: int, has_pred: bool, has_adj: bool, adjust: Optional[Callable] = None,
             variants: Sequence = ()):
    """Per-partition validation and aggregates (confusion matrices, Brier sum, score histograms).

    ``adjust``: a function (n, k) probs → n class indices (a threshold-moving rule); its decisions
    are counted as ``pred_adjusted`` in this same pass instead of being read from a column.
    ``variants``: (name, prior weights or None, temperature) per calibration column; each adds its
    Brier sum and reliability bins (:mod:`pipeline.evaluation.calibration`) of the corrected probs.
    """

    def fn(batches: Iterator) -> Iterator:
        # deferred: pyarrow is slow to import
        import pyarrow as pa

        n = 0
        brier = 0            # exact sums in 2⁻⁴⁰ units (see pipeline.evaluation.calibration)
        cm = np.zeros(k * k, np.int64)
        cma = np.zeros(k * k, np.int64) if has_adj else None
        hist_tot = np.zeros(k * N_BUCKETS, np.int64)
        hist_pos = np.zeros(k * N_BUCKETS, np.int64)
        cls_off = (np.arange(k, dtype=np.int64) * N_BUCKETS)[None, :]
        cal = [np.zeros((ECE_BINS, 3), dtype=object) for _ in variants]
        cal_brier = [0] * len(variants)
        err = None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            labels, err = _int_column(batch, "label")
            if err:
                break
            preds = {}
            for name, on in (("pred", has_pred), ("pred_adjusted", has_adj and adjust is None)):
                if on:
                    preds[name], err = _int_column(batch, name)
                    if err:
                        break
            if err:
                break
            probs, err = arrow_probs(batch.column("probs"), k)
            if err:
                break
            err = _check_block(probs, labels, preds, k)
            if err:
                break
            if adjust is not None:
                preds["pred_adjusted"] = np.asarray(adjust(probs), dtype=np.int64)
            m = len(labels)
            n += m
            rows = np.arange(m)
            brier += brier_units(probs, labels)
            if has_pred:
                cm += np.bincount(labels * k + preds["pred"], minlength=k * k)
            if has_adj:
                cma += np.bincount(labels * k + preds["pred_adjusted"], minlength=k * k)
            B = score_bucket(probs) + cls_off
            hist_tot += np.bincount(B.ravel(), minlength=k * N_BUCKETS)
            hist_pos += np.bincount(B[rows, labels], minlength=k * N_BUCKETS)
            for v, (_, weights, temperature) in enumerate(variants):
                Q = correct_probs(probs, weights, temperature)
                cal_brier[v] += brier_units(Q, labels)
                cal[v] += reliability_partials(Q, labels)
        out = {c: [] for c in ("kind", "i", "j", "a", "b", "xh", "xl", "msg")}

        def add(kind, i=0, j=0, a=0, b=0, x=0, msg=None):
            for key, v in zip(out, (kind, i, j, a, b, *_split(x), msg)):
                out[key].append(v)

        if err:
            add("err", msg=err, a=1)
        else:
            add("n", a=n, x=brier)
            for name, arr in (("cm", cm), ("cma", cma)):
                if arr is not None:
                    for idx in np.flatnonzero(arr):
                        add(name, int(idx // k), int(idx % k), int(arr[idx]))
            for idx in np.flatnonzero(hist_tot):
                add("hist", int(idx // N_BUCKETS), int(idx % N_BUCKETS),
                    int(hist_pos[idx]), int(hist_tot[idx] - hist_pos[idx]))
            for v in range(len(variants)):
                add("calbrier", v, x=cal_brier[v])
                for m in range(ECE_BINS):
                    if cal[v][m, 0]:
                        # rows and correct rows in a, b; the confidence sum in x
                        add("cal", v, m, int(cal[v][m, 0]), int(cal[v][m, 1]), int(cal[v][m, 2]))
        schema = pa.schema([("kind", pa.string()), ("i", pa.int64()), ("j", pa.int64()),
                            ("a", pa.int64()), ("b", pa.int64()), ("xh", pa.int64()), ("xl", pa.int64()),
                            ("msg", pa.string())])
        yield pa.RecordBatch.from_pydict(out, schema=schema)

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
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

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


# ------------------------------------------------------------------------------ pass 2: rank
def plan_groups(hist_pos: np.ndarray, hist_neg: np.ndarray, classes: Sequence[int],
                target_rows: int):
    """Cut each class's buckets (highest score first) into contiguous groups of ≤ target rows.

    Returns ``(bucket_to_group (K, N_BUCKETS) int32 with -1 for unselected classes, groups)``,
    where ``groups[g] = (class, pos_above, neg_above, n_pos, n_neg)``: ``pos_above``/``neg_above`` are the
    exact positives/negatives of the class in higher buckets (a single bucket is never split, so a group
    may exceed the target) and ``n_pos``/``n_neg`` the class's totals.
    """
    k = hist_pos.shape[0]
    b2g = np.full((k, N_BUCKETS), -1, np.int32)
    groups = []
    for c in classes:
        tot = hist_pos[c] + hist_neg[c]
        n_pos, n_neg = int(hist_pos[c].sum()), int(hist_neg[c].sum())
        pos_above = neg_above = 0
        acc = 0
        current = None
        for b in np.flatnonzero(tot)[::-1]:
            if current is None or acc + tot[b] > target_rows and acc > 0:
                current = len(groups)
                groups.append([c, pos_above, neg_above, n_pos, n_neg])
                acc = 0
            b2g[c, b] = current
            acc += int(tot[b])
            pos_above += int(hist_pos[c, b])
            neg_above += int(hist_neg[c, b])
        # buckets between occupied ones map to the nearest group below: never used (no rows there)
    return b2g, [tuple(g) for g in groups]


_DEDUP_FLUSH_ROWS = 2_000_000


def _dedupe(cls_idx, score, pos, tot):
    """Collapse equal (class, score) pairs, summing positive and total counts."""
    order = np.lexsort((score, cls_idx))
    c, s, p, t = cls_idx[order], score[order], pos[order], tot[order]
    new = np.ones(len(c), bool)
    new[1:] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    starts = np.flatnonzero(new)
    return c[starts], s[starts], np.add.reduceat(p, starts), np.add.reduceat(t, starts)


_RANK_PAIRS_SCHEMA = "g int, score binary, pos binary, neg binary"


def _pack_runs(g: np.ndarray, s: np.ndarray, p: np.ndarray, q: np.ndarray):
    """One Arrow row per run of equal group ``g``: the run's scores (float64) and positive /
    negative counts (int64) as raw little-endian bytes.

    The (score, pos, neg) pairs are sorted by (class, score) and a group is a contiguous score
    range of one class, so a partition sends about one row per group through the shuffle
    instead of one row per pair — millions of rows would otherwise each cross the JVM.
    """
    # deferred: pyarrow is slow to import
    import pyarrow as pa

    starts = np.concatenate([[0], np.flatnonzero(np.diff(g)) + 1])
    offsets = pa.py_buffer((np.append(starts, len(g)) * 8).astype(np.int32))   # ≤ _DEDUP_FLUSH_ROWS·2 pairs
    cols = {"g": pa.array(g[starts].astype(np.int32))}
    for name, arr in (("score", s.astype("<f8")), ("pos", p.astype("<i8")), ("neg", q.astype("<i8"))):
        cols[name] = pa.Array.from_buffers(pa.binary(), len(starts), [None, offsets, pa.py_buffer(arr)])
    return pa.RecordBatch.from_pydict(cols)


def _unpack(col, dtype) -> np.ndarray:
    """Concatenate the raw arrays of one packed column (see :func:`_pack_runs`)."""
    return np.concatenate([np.frombuffer(b, dtype=dtype) for b in col]) if len(col) else np.zeros(0, dtype)


def _rank_map_fn(classes: np.ndarray, b2g: np.ndarray):
    """Per partition: distinct (group, score) pairs with positive / negative counts, packed per group."""

    def fn(batches: Iterator) -> Iterator:
        buf: list = []
        held = 0
        m = len(classes)

        def emit(parts):
            c, s, p, t = _dedupe(*[np.concatenate([x[i] for x in parts]) for i in range(4)])
            g = b2g[classes[c], score_bucket(s)]
            return c, s, p, t, _pack_runs(g, s, p, t - p)

        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            probs, err = arrow_probs(batch.column("probs"), int(b2g.shape[0]))
            if err:  # validated in the scan pass; a changed table between passes is a bug
                raise RuntimeError(err)
            S = np.ascontiguousarray(probs[:, classes].T) + 0.0          # (m, n)
            order = np.argsort(S, axis=1)
            S = np.take_along_axis(S, order, axis=1)
            pos = (labels[order] == classes[:, None]).ravel().astype(np.int64)
            new = np.ones(S.shape, bool)
            new[:, 1:] = S[:, 1:] != S[:, :-1]
            starts = np.flatnonzero(new.ravel())
            tot = np.diff(np.append(starts, m * n))
            part = (starts // n, S.ravel()[starts], np.add.reduceat(pos, starts), tot)
            if len(starts) > m * n // 2:
                # mostly distinct scores (a model's softmax): merging them with other batches would
                # not shrink them, so the batch goes out as it is, already sorted by (class, score)
                yield _pack_runs(b2g[classes[part[0]], score_bucket(part[1])], part[1], part[2], part[3] - part[2])
                continue
            buf.append(part)
            held += len(starts)
            if held > _DEDUP_FLUSH_ROWS:
                c, s, p, t, rb = emit(buf)
                if len(c) > _DEDUP_FLUSH_ROWS // 2:   # ties do not shrink it further: ship it
                    yield rb
                    buf, held = [], 0
                else:
                    buf, held = [(c, s, p, t)], len(c)
        if buf:
            yield emit(buf)[-1]

    return fn


_RANK_SCHEMA = "kind string, g long, cls long, auc2 long, ap double, x double, y double, t long"


@dataclass(frozen=True)
class BinarySpec:
    """What the rank pass computes for two-class data (see :mod:`pipeline.evaluation.binary`)."""
    positive: int                      # class index of the positive class
    precision_levels: tuple = DEFAULT_PRECISION_LEVELS
    recall_levels: tuple = DEFAULT_RECALL_LEVELS
    alert_fractions: tuple = DEFAULT_ALERT_FRACTIONS
    alert_m: tuple = ()                # ⌈fraction · n⌉ per alert fraction, set from the row count


_BINARY_KINDS = ("rap", "par", "patk")


def _rank_group_fn(groups: list, curve: set, tune: Optional[str], points: int,
                   binary: Optional[BinarySpec] = None):
    """Per group: exact AUC/AP contributions, thinned PR-curve points, best tuned threshold, and
    for the positive class of two-class data its share of the rare-event metrics."""
    # deferred: pandas is slow to import
    import pandas as pd

    def fn(pdf: "pd.DataFrame") -> "pd.DataFrame":
        g = int(pdf["g"].iloc[0])
        c, pos_above, neg_above, n_pos, n_neg = groups[g]
        s, p, q, tp, fp, auc2, ap = group_contributions(
            _unpack(pdf["score"], "<f8"), _unpack(pdf["pos"], "<i8"), _unpack(pdf["neg"], "<i8"),
            pos_above, neg_above)
        rows = [("sum", g, c, auc2, ap, float("nan"), float("nan"), 0)]
        if c in curve and n_pos > 0:
            hit = p > 0
            lvl_now = (tp * points) // n_pos
            lvl_before = ((tp - p) * points) // n_pos
            keep = np.flatnonzero(hit & (lvl_now > lvl_before))
            for i in keep:
                rows.append(("pt", g, c, 0, 0.0, float(tp[i]) / n_pos, float(tp[i]) / float(tp[i] + fp[i]),
                             int(tp[i])))
        if binary is not None and c == binary.positive:
            part = group_partials(tp, fp, pos_above + neg_above, n_pos, binary.precision_levels,
                                  binary.recall_levels, binary.alert_m)
            for kind in _BINARY_KINDS:
                rows += [(kind, g, c, 0, 0.0, v, float("nan"), i) for i, v in enumerate(part[kind]) if v is not None]
            # the group's segments, for the bootstrap (pipeline.evaluation.binary_bootstrap): one row per
            # distinct positive score (t = positives, auc2 = tied negatives, ap = negatives above), then its tail
            sp, st, sb, tail = group_segments(p, q)
            rows += [("seg", g, c, int(st[i]), float(sb[i]), float(i), 0.0, int(sp[i])) for i in range(len(sp))]
            rows.append(("tail", g, c, tail, 0.0, float("inf"), 0.0, 0))
        if tune is not None:
            vals = threshold_metric(tune, tp, fp, n_pos, n_neg)
            i = int(np.argmax(vals))           # first maximum = the largest threshold
            rows.append(("best", g, c, 0, 0.0, float(vals[i]), float(s[i]), int(tp[i])))
        return pd.DataFrame(rows, columns=["kind", "g", "cls", "auc2", "ap", "x", "y", "t"])

    return fn


def default_group_rows(spark, n_pairs: int) -> int:
    """Rows per group: ~4 groups per core, between 50k and 2M rows (bounded pandas memory)."""
    cores = max(1, int(spark.sparkContext.defaultParallelism))
    return int(min(2_000_000, max(50_000, n_pairs // (4 * cores))))


def ranking_stats(spark, loaded: Loaded, scan: Scan, classes: Sequence[int],
                  curve_classes: Sequence[int] = (), tune: Optional[str] = None,
                  target_group_rows: Optional[int] = None, points: int = CURVE_POINTS,
                  binary: Optional[BinarySpec] = None) -> dict:
    """Pass 2: exact one-vs-rest ROC AUC / AP of ``classes`` (plus optional curves / tuning).

    Returns ``{"roc_auc": {c: float|None}, "pr_auc": {...}, "curves": {c: {"recall": [...],
    "precision": [...]}}, "best": (metric, threshold) | None, "binary": {...} | None}``; the last,
    with ``binary``, holds the rare-event metrics of :func:`pipeline.evaluation.binary.combine`.
    """
    classes = np.array(sorted(set(int(c) for c in classes)), dtype=np.int64)
    out: dict = {"roc_auc": {}, "pr_auc": {}, "curves": {}, "best": None, "binary": None}
    if len(classes) == 0:
        return out
    target = target_group_rows or default_group_rows(spark, scan.n * len(classes))
    b2g, groups = plan_groups(scan.hist_pos, scan.hist_neg, classes, target)
    log.info("ranking %d classes in %d groups (≤%d rows each)", len(classes), len(groups), target)
    res = (loaded.df.select("label", "probs")
           .mapInArrow(_rank_map_fn(classes, b2g), _RANK_PAIRS_SCHEMA)
           .groupBy("g")
           .applyInPandas(_rank_group_fn(groups, set(int(c) for c in curve_classes), tune, points, binary),
                          _RANK_SCHEMA)
           .toPandas())
    sums = res[res.kind == "sum"]
    for c in classes:
        c = int(c)
        n_pos, n_neg = int(scan.hist_pos[c].sum()), int(scan.hist_neg[c].sum())
        part = sums[sums.cls == c]
        auc2 = int(part.auc2.astype("int64").sum())
        out["roc_auc"][c] = auc2 / (2.0 * n_pos * n_neg) if n_pos > 0 and n_neg > 0 else None
        out["pr_auc"][c] = math.fsum(part.ap) / n_pos if n_pos > 0 else None     # exact: any group order
    pts = res[res.kind == "pt"].sort_values(["cls", "t"])
    for c, part in pts.groupby("cls"):
        out["curves"][int(c)] = {"recall": [0.0] + part.x.tolist(),
                                 "precision": [1.0] + part.y.tolist()}
    if binary is not None:
        out["binary"] = _binary_partials(res, binary)
        out["binary"]["intervals"] = _binary_intervals(res, binary)
    best = res[res.kind == "best"]
    if len(best):
        b = best.sort_values(["x", "y"], ascending=[False, False]).iloc[0]
        out["best"] = (float(b.x), float(b.y))
    return out


def _binary_partials(res, binary: BinarySpec) -> dict:
    """The rank pass's rare-event rows, combined over groups (:func:`pipeline.evaluation.binary.combine`)."""
    levels = {"rap": binary.precision_levels, "par": binary.recall_levels, "patk": binary.alert_fractions}
    partials = []
    for g, rows in res[res.kind.isin(_BINARY_KINDS)].groupby("g"):
        part = {kind: [None] * len(levels[kind]) for kind in _BINARY_KINDS}
        for kind, i, x in zip(rows.kind, rows.t, rows.x):
            part[kind][int(i)] = float(x)
        partials.append(part)
    return combine(partials, binary.precision_levels, binary.recall_levels, binary.alert_fractions)


def _binary_intervals(res, binary: BinarySpec) -> Optional[dict]:
    """Poisson-bootstrap intervals of the binary metrics from the groups' segments, in score order."""
    segs = res[res.kind.isin(("seg", "tail"))].sort_values(["g", "x"])
    groups = []
    for _, rows in segs.groupby("g", sort=True):
        seg = rows[rows.kind == "seg"]
        groups.append((seg.t.to_numpy(np.int64), seg.auc2.to_numpy(np.int64), seg.ap.to_numpy().astype(np.int64),
                       int(rows[rows.kind == "tail"].auc2.sum())))
    pos, tie, before, tail = join_segments(groups)
    return binary_intervals(pos, tie, before, tail, binary.precision_levels, binary.recall_levels,
                            binary.alert_fractions)


def pr_curves(spark, predictions, classes: Sequence[int], label_col: str = "label",
              n_classes: Optional[int] = None, points: int = CURVE_POINTS) -> dict:
    """Thinned exact PR-curve points of a few classes, computed in Spark (≤ ~``points`` each).

    Returns ``{class: {"recall": [...], "precision": [...]}}`` starting at (0, 1); a point per
    threshold where recall crosses a multiple of 1/points (every positive threshold when the
    class has ≤ ``points`` positives), so the step area equals the class's average precision.
    """
    loaded = load_predictions(spark, predictions, label_col, None, n_classes)
    scan = scan_predictions(loaded)
    present = [int(c) for c in classes if scan.hist_pos[int(c)].sum() > 0]
    return ranking_stats(spark, loaded, scan, present, curve_classes=present, points=points)["curves"]


# ------------------------------------------------------------------------------ the stage
def _threshold_block(cm: np.ndarray, names) -> dict:
    per_class = classwise_from_confusion(cm)
    if names is not None:
        for r in per_class:
            r["name"] = names[r["label"]]
    return per_class


def _binary_spec(loaded: Loaded, scan: Scan, levels: Optional[dict]) -> BinarySpec:
    levels = levels or {}
    support = [int(scan.hist_pos[c].sum()) for c in range(2)]
    fractions = tuple(levels.get("alert_fractions", DEFAULT_ALERT_FRACTIONS))
    return BinarySpec(positive=positive_class(loaded.class_names, support),
                      precision_levels=tuple(levels.get("precision_levels", DEFAULT_PRECISION_LEVELS)),
                      recall_levels=tuple(levels.get("recall_levels", DEFAULT_RECALL_LEVELS)),
                      alert_fractions=fractions, alert_m=tuple(alert_rows(a, scan.n) for a in fractions))


def _binary_section(spec: BinarySpec, per_class: list[dict], ranked: dict, names) -> dict:
    """``metrics.json["binary"]``: the positive class's AUCs and rare-event metrics."""
    pos = per_class[spec.positive]
    label = spec.positive if names is None else names[spec.positive]
    return {"positive_label": label, "positives": pos["support"], "rows": pos["support"] + pos["fp"] + pos["tn"],
            "pr_auc": pos["pr_auc"], "roc_auc": pos["roc_auc"], **ranked}


def calibration_variants(block: Optional[dict]) -> list:
    """The calibration columns a model's ``model.json["calibration"]`` block asks to score:
    ``raw`` always, ``prior_corrected`` when scoring applies the prior correction, and
    ``temperature`` (prior correction, then T) when a temperature was fitted."""
    weights, temperature = scoring_transform(block)
    out = [("raw", None, 1.0)]
    if weights is not None:
        out.append(("prior_corrected", weights, 1.0))
    if block and block.get("temperature") is not None:
        out.append(("temperature", weights, temperature))
    return out


def calibration_summary(scan: Scan, variants: Sequence, block: Optional[dict]) -> dict:
    """``metrics.json["calibration"]``: per variant ``{brier, ece, bins}``, and what was applied."""
    out = {}
    for v, (name, _, temperature) in enumerate(variants):
        entry = {"brier": float(scan.cal_brier[v] / scan.n), "ece": ece_from_partials(scan.cal_bins[v]),
                 "bins": reliability_bins(scan.cal_bins[v])}
        if name == "temperature":
            entry["T"] = float(temperature)
        out[name] = entry
    out["ece_bins"] = ECE_BINS
    if block:
        out["prior_correction"] = bool(block.get("prior_correction"))
        out["train_prior"] = block.get("train_prior")
        out["model_prior"] = block.get("model_prior")
    return out


def compute_metrics(spark, predictions, label_col: str = "label", pred_col: str = "pred",
                    n_classes: Optional[int] = None, class_names=None, curve_classes: int = 4,
                    target_group_rows: Optional[int] = None, adjust: Optional[Callable] = None,
                    calibration: Optional[dict] = None, train_counts: Optional[dict] = None,
                    binary_levels: Optional[dict] = None) -> dict:
    """All metrics of a predictions table, without writing anything (see module docstring).

    ``adjust``: a threshold-moving rule (probs block → class indices, e.g.
    :func:`pipeline.evaluation.thresholds.rule_adjuster`) whose decisions are scored as
    ``adjusted`` in the same scan, so no adjusted table has to be written and read again.
    ``calibration``: the model's ``model.json["calibration"]`` block; the raw, prior-corrected
    and temperature-scaled probabilities are scored from ``probs`` in the same scan
    (``metrics["calibration"]``; only ``raw`` without a block). ``train_counts``: training rows
    per class index, which the L5/Rest groups are taken by (else by test support).
    ``binary_levels``: for two-class data, ``precision_levels``, ``recall_levels`` and
    ``alert_fractions`` of the ``binary`` section (:mod:`pipeline.evaluation.binary`; defaults there).
    """
    loaded = load_predictions(spark, predictions, label_col, pred_col, n_classes, class_names)
    variants = calibration_variants(calibration)
    scan = scan_predictions(loaded, adjust, variants)
    k = loaded.n_classes
    per_class = _threshold_block(scan.cm, loaded.class_names)
    present = [r["label"] for r in per_class if r["support"] > 0]
    rare = sorted(present, key=lambda c: (per_class[c]["support"], c))[:max(0, curve_classes)]
    binary = _binary_spec(loaded, scan, binary_levels) if k == 2 else None
    rank = ranking_stats(spark, loaded, scan, present, curve_classes=rare,
                         target_group_rows=target_group_rows, binary=binary)
    for r in per_class:
        c = r["label"]
        r["roc_auc"] = rank["roc_auc"].get(c)
        r["pr_auc"] = rank["pr_auc"].get(c)
    metrics = summarize(per_class, scan.cm, brier=scan.brier_sum / scan.n, train_counts=train_counts)
    metrics = {"pred_col": pred_col, **metrics}
    if loaded.class_names is not None:
        metrics["class_names"] = loaded.class_names
    metrics["pr_curves"] = {str(c): rank["curves"][c] for c in rare if c in rank["curves"]}
    metrics["calibration"] = calibration_summary(scan, variants, calibration)
    if binary is not None:
        metrics["binary"] = _binary_section(binary, per_class, rank["binary"], loaded.class_names)
    if scan.cm_adjusted is not None:
        adj = _threshold_block(scan.cm_adjusted, loaded.class_names)
        for r in adj:
            r.pop("roc_auc")
            r.pop("pr_auc")
        metrics["adjusted"] = summarize(adj, scan.cm_adjusted, brier=None,
                                        keys=tuple(k_ for k_ in RATE_KEYS if k_ not in ("roc_auc", "pr_auc")),
                                        train_counts=train_counts)
        metrics["adjusted"].pop("brier")
        metrics["adjusted"].pop("field_notes")
    assert len(per_class) == k
    return metrics


def _per_class_table(per_class: list[dict]):
    # deferred: pyarrow is slow to import
    import pyarrow as pa

    cols = ["label"] + (["name"] if per_class and "name" in per_class[0] else []) + list(COUNT_KEYS)
    cols += [k for k in RATE_KEYS if per_class and k in per_class[0]]
    data = {}
    for c in cols:
        vals = [r.get(c) for r in per_class]
        if c == "name":
            data[c] = pa.array([None if v is None else str(v) for v in vals], pa.string())
        elif c in ("label",) + COUNT_KEYS:
            data[c] = pa.array(vals, pa.int64())
        else:
            data[c] = pa.array(vals, pa.float64())
    return pa.table(data)


def write_metrics(metrics: dict, directory) -> None:
    """``metrics.json`` plus ``metrics.parquet`` (one row per class; ``metrics_adjusted.parquet``)."""
    # deferred: pyarrow is slow to import
    import pyarrow.parquet as pq

    d = local_path(directory)
    write_json(d / "metrics.json", metrics)
    pq.write_table(_per_class_table(metrics["per_class"]), d / "metrics.parquet")
    if "adjusted" in metrics:
        pq.write_table(_per_class_table(metrics["adjusted"]["per_class"]), d / "metrics_adjusted.parquet")

