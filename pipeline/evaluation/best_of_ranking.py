"""The rare-event metrics of two-class data under the paired bootstrap of :mod:`pipeline.evaluation.best_of`.

``pr_auc`` (average precision), ``roc_auc``, ``binary.recall_at_precision.<p>``,
``binary.precision_at_recall.<r>`` and ``binary.precision_at_k.<fraction>`` rank the rows by the
positive class's probability, so unlike macro F1 they are not sums of per-row counts. They are,
though, fixed by the positive class's *segments* (:mod:`pipeline.evaluation.binary_bootstrap`):
with u_1 > … > u_S the distinct scores of the positives, segment j counts the positives scoring
u_j (``pos_j``), the negatives scoring exactly u_j (``tie_j``) and the negatives strictly between
u_j and u_{j−1} (``before_j``); ``tail`` counts the negatives below u_S.

A bootstrap replicate b weights every row with the Poisson(1) weight w_b(id) of
:func:`pipeline.evaluation.intervals.poisson_weights`, a pure function of (seed, b, id): the same
rows weigh the same for every model, so differences between models are paired. A replicate's
segment counts are weighted sums, pos_bj = Σ_{positives at u_j} w_b(id) and so on, and the metric
follows from them exactly as from the plain counts (:func:`binary_bootstrap.segment_metrics`).
The bootstrap is stratified like the confusion counts': per replicate the positives' weights are
scaled to sum to P and the negatives' to N, so every replicate keeps the table's class shares.

Only the positives' ids and scores reach the driver (a rare class: few rows); each partition of
the negatives returns its (S + 1) × (B + 1) weighted sums, never rows.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from pipeline.errors import InputError
from pipeline.evaluation.binary_bootstrap import MAX_SEGMENTS, segment_metrics
from pipeline.evaluation.intervals import poisson_weights

#: metric name → (segment_metrics key, whether it takes a level)
RANKING = {"pr_auc": ("pr_auc", False), "roc_auc": ("roc_auc", False),
           "binary.pr_auc": ("pr_auc", False), "binary.roc_auc": ("roc_auc", False),
           "binary.recall_at_precision": ("recall_at_precision", True),
           "binary.precision_at_recall": ("precision_at_recall", True),
           "binary.precision_at_k": ("precision_at_k", True)}


def ranking_metric(metric: str) -> Optional[tuple[str, Optional[float]]]:
    """``(kind, level)`` of a ranking metric name (``binary.recall_at_precision.0.9`` →
    ``("recall_at_precision", 0.9)``), or None when ``metric`` is not one."""
    if metric in RANKING and not RANKING[metric][1]:
        return RANKING[metric][0], None
    for name, (kind, levelled) in RANKING.items():
        if levelled and metric.startswith(name + "."):
            try:
                level = float(metric[len(name) + 1:])
            except ValueError:
                return None
            return (kind, level) if 0 < level <= 1 else None
    return None


def _value(kind: str, level: Optional[float], pos, tie, before, tail) -> np.ndarray:
    """The metric of (replicates, segments) counts, one value per replicate."""
    out = segment_metrics(pos, tie, before, tail,
                          precision_levels=[level] if kind == "recall_at_precision" else [],
                          recall_levels=[level] if kind == "precision_at_recall" else [],
                          alert_fractions=[level] if kind == "precision_at_k" else [])
    if level is None:
        return out[kind]
    return next(v for k, v in out.items() if isinstance(k, tuple) and k[0] == kind)


def _negative_sums(u_asc: np.ndarray, B: int, seed: int):
    """A ``mapInArrow`` function over (``_id``, ``_s``) batches of negatives: per partition, the
    weighted ``before`` (with ``tail`` last) and ``tie`` sums, (S + 1) × (B + 1) each (the last
    column unweighted)."""
    S = len(u_asc)

    def fn(batches):
        before = np.zeros((B + 1) * (S + 1))
        tie = np.zeros((B + 1) * (S + 1))
        offset = np.arange(B + 1)[:, None] * (S + 1)
        for batch in batches:
            ids = batch.column(0).to_numpy(zero_copy_only=False)
            s = batch.column(1).to_numpy(zero_copy_only=False).astype(np.float64)
            if not len(s):
                continue
            k = np.searchsorted(u_asc, s, side="left")        # positives scoring below s
            tied = (k < S) & (u_asc[np.minimum(k, S - 1)] == s)
            seg = np.where(tied, S - 1 - k, np.where(k == 0, S, S - k))
            w = np.vstack([poisson_weights(ids, B, seed), np.ones(len(s))])      # (B + 1, rows)
            for acc, mask in ((tie, tied), (before, ~tied)):
                if mask.any():
                    acc += np.bincount((offset + seg[mask][None, :]).ravel(), weights=w[:, mask].ravel(),
                                       minlength=(B + 1) * (S + 1))
        yield pa.RecordBatch.from_arrays([pa.array([before.tobytes()], pa.binary()),
                                          pa.array([tie.tobytes()], pa.binary())], names=["before", "tie"])
    return fn


def segment_counts(df, positive: int, replicates: int, seed: int, *, score_col: str = "probs",
                   label_col: str = "label", id_col: str = "id") -> dict:
    """The positive class's segments of ``df`` (module docstring), plain and in ``replicates``
    stratified bootstrap replicates: ``{"scores": u_1 > … > u_S, "pos", "tie", "before": (B + 1, S)
    arrays, "tail": (B + 1,)}``, the last row of each the plain counts."""
    B = int(replicates)
    integral = df.schema[id_col].dataType.typeName() in ("byte", "short", "integer", "long")
    rid = F.col(id_col).cast("long") if integral else F.xxhash64(F.col(id_col))
    narrow = df.select(rid.alias("_id"), F.element_at(F.col(score_col), positive + 1).cast("double").alias("_s"),
                       (F.col(label_col).cast("long") == positive).alias("_y"))
    pos_rows = narrow.filter(F.col("_y")).select("_id", "_s").collect()
    if not pos_rows:
        raise InputError(f"the validation rows hold no row of the positive class {positive}")
    ids = np.array([r["_id"] for r in pos_rows], np.int64)
    scores = np.array([r["_s"] for r in pos_rows], np.float64)
    u_asc, inverse = np.unique(scores, return_inverse=True)
    S = len(u_asc)
    if S > MAX_SEGMENTS:
        raise InputError(f"{S} distinct positive scores, more than the bootstrap's {MAX_SEGMENTS}")
    seg = S - 1 - inverse                                            # descending segment of each positive
    w = np.vstack([poisson_weights(ids, B, seed), np.ones(len(ids))])                     # (B + 1, P)
    pos = np.stack([np.bincount(seg, weights=row, minlength=S) for row in w])            # (B + 1, S)
    parts = narrow.filter(~F.col("_y")).select("_id", "_s").mapInArrow(
        _negative_sums(u_asc, B, seed), "before binary, tie binary").collect()
    before = sum((np.frombuffer(r["before"], np.float64) for r in parts), np.zeros((B + 1) * (S + 1)))
    tie = sum((np.frombuffer(r["tie"], np.float64) for r in parts), np.zeros((B + 1) * (S + 1)))
    before, tie = before.reshape(B + 1, S + 1), tie.reshape(B + 1, S + 1)[:, :S]
    n_pos, n_neg = pos[-1].sum(), before[-1].sum() + tie[-1].sum()
    # stratified: every replicate keeps P positives and N negatives
    with np.errstate(invalid="ignore", divide="ignore"):
        fp = np.where(pos.sum(1) > 0, n_pos / pos.sum(1), 0.0)[:, None]
        wn = before.sum(1) + tie.sum(1)
        fn = np.where(wn > 0, n_neg / np.where(wn > 0, wn, 1.0), 0.0)[:, None]
    return {"scores": u_asc[::-1].copy(), "pos": pos * fp, "tie": tie * fn, "before": (before * fn)[:, :S],
            "tail": (before * fn)[:, S]}


def ranking_replicates(df, metric: str, positive: int, replicates: int, seed: int, *, score_col: str = "probs",
                       label_col: str = "label", id_col: str = "id") -> tuple[float, np.ndarray]:
    """One model's ``metric`` on all of ``df``'s rows and in each of ``replicates`` stratified
    bootstrap replicates (module docstring): ``(exact value, (B,) array)``."""
    kind, level = ranking_metric(metric) or (None, None)
    if kind is None:
        raise ValueError(f"not a ranking metric: {metric!r}")
    try:
        seg = segment_counts(df, positive, replicates, seed, score_col=score_col, label_col=label_col,
                             id_col=id_col)
    except InputError as e:
        raise InputError(f"{metric}: {e}") from None
    values = _value(kind, level, seg["pos"], seg["tie"], seg["before"], seg["tail"])
    return float(values[-1]), values[:-1]


__all__ = ["RANKING", "ranking_metric", "ranking_replicates", "segment_counts"]
