"""Bootstrap intervals of the rare-event metrics over the test rows, from the positive class's segments.

Every rare-event metric of :mod:`pipeline.evaluation.binary` is fixed by the positive class's
*segments*: walking the scores from the highest down, segment j ends at the j-th distinct score
held by a positive and counts ``pos_j`` (positives at that score), ``tie_j`` (negatives at exactly
that score) and ``before_j`` (negatives strictly between it and the segment above); ``tail``
counts the negatives below the lowest positive. There are at most as many segments as positives,
so for rare classes they are few, whatever the number of negatives.

The Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty for
massive data streams") gives every row an independent Poisson(1) weight. A sum of c such weights
is Poisson(c), so a replicate needs only one Poisson draw per segment count, not one per row, and
the replicate's metrics follow from cumulative sums exactly as the metrics do:

* TP_j = Σ_{i≤j} pos_i, FP_j = Σ_{i≤j} (before_i + tie_i), P = TP_J, N = FP_J + tail;
* AP = Σ_j pos_j / P · TP_j / (TP_j + FP_j);  ROC AUC = Σ_j pos_j · (N − FP_j + tie_j / 2) / (P · N);
* recall at precision p, precision at recall r: the best over the segment ends (a threshold between
  them only adds negatives);
* precision in the top k: m = ⌈k·n⌉; if the m-th row is a negative inside a ``before`` block the
  precision is TP_{j−1} / m (ties among negatives ignored), else that of the segment end reached.

On the unresampled counts these are the exact metrics (a test checks them against scikit-learn);
the intervals are the 2.5 and 97.5 percentiles over the replicates.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pipeline.evaluation.binary import alert_rows, level_key

DEFAULT_REPLICATES = 200
MAX_SEGMENTS = 200_000          # beyond this many distinct positive scores, no intervals (memory)
_CHUNK = 20                     # replicates per vectorised block


def group_segments(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One group's segments from its distinct scores (descending) with positive / negative counts.

    Returns ``(pos, tie, before, tail)``: per positive score its counts, ``before`` counting only
    the group's own negatives above it, and ``tail`` the group's negatives below its last positive
    (they belong to the ``before`` of the next group's first segment)."""
    p = np.asarray(p, np.int64)
    q = np.asarray(q, np.int64)
    idx = np.flatnonzero(p > 0)
    negs_above = np.concatenate([[0], np.cumsum(q)])       # negatives at indices < i
    start = np.concatenate([[0], idx[:-1] + 1]) if len(idx) else np.zeros(0, np.int64)
    before = negs_above[idx] - negs_above[start]
    tail = int(negs_above[-1] - (negs_above[idx[-1] + 1] if len(idx) else 0))
    return p[idx], q[idx], before, tail


def join_segments(groups: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Join :func:`group_segments` of contiguous groups, highest scores first, into one walk."""
    pos, tie, before = [], [], []
    carry = 0
    for p, t, b, tail in groups:
        b = np.array(b, np.int64, copy=True)
        if len(b):
            b[0] += carry
            carry = 0
        carry += int(tail)
        pos.append(np.asarray(p, np.int64))
        tie.append(np.asarray(t, np.int64))
        before.append(b)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return cat(pos), cat(tie), cat(before), carry


def segment_metrics(pos, tie, before, tail, *, precision_levels: Sequence[float],
                    recall_levels: Sequence[float], alert_fractions: Sequence[float]) -> dict:
    """The metrics of one or many replicates: arrays (replicates, segments) → a dict of (replicates,) arrays."""
    pos, tie, before = (np.atleast_2d(np.asarray(x, np.float64)) for x in (pos, tie, before))
    tail = np.atleast_1d(np.asarray(tail, np.float64))
    tp = np.cumsum(pos, axis=1)
    fp = np.cumsum(before + tie, axis=1)
    P = tp[:, -1]
    N = fp[:, -1] + tail
    flagged = tp + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(flagged > 0, tp / flagged, 0.0)
        rec = tp / P[:, None]
        out = {"pr_auc": np.sum(pos * prec, axis=1) / P,
               "roc_auc": np.sum(pos * (N[:, None] - fp + tie / 2), axis=1) / (P * N)}
    for p in precision_levels:
        out[("recall_at_precision", level_key(p))] = np.max(np.where(prec >= p, rec, 0.0), axis=1)
    for r in recall_levels:
        out[("precision_at_recall", level_key(r))] = np.max(np.where(rec >= r, prec, -np.inf), axis=1)
    n = P + N
    for a in alert_fractions:
        out[("precision_at_k", level_key(a))] = _precision_at_k(tp, flagged, before, n, a)
    return out


def _precision_at_k(tp, flagged, before, n, fraction) -> np.ndarray:
    res = np.empty(len(tp))
    for b in range(len(tp)):
        m = alert_rows(fraction, int(n[b]))
        j = int(np.searchsorted(flagged[b], m))            # the first segment end flagging ≥ m rows
        if j == len(tp[b]):                                 # the m-th row lies in the tail
            res[b] = tp[b, -1] / m
            continue
        above = flagged[b, j - 1] if j else 0.0
        prev_tp = tp[b, j - 1] if j else 0.0
        res[b] = prev_tp / m if above + before[b, j] >= m else tp[b, j] / flagged[b, j]
    return res


def binary_intervals(pos, tie, before, tail: int, *, precision_levels: Sequence[float],
                     recall_levels: Sequence[float], alert_fractions: Sequence[float],
                     replicates: int = DEFAULT_REPLICATES, seed: int = 0, level: float = 0.95) -> Optional[dict]:
    """95% percentile intervals of every binary metric under the Poisson bootstrap of the test rows.

    Returns ``{"pr_auc": [lo, hi], "roc_auc": [...], "recall_at_precision": {level: [lo, hi]}, …,
    "replicates": B}``, or None when there are more than :data:`MAX_SEGMENTS` segments."""
    pos, tie, before = (np.asarray(x, np.int64) for x in (pos, tie, before))
    if len(pos) == 0 or len(pos) > MAX_SEGMENTS:
        return None
    rng = np.random.default_rng(seed)
    samples: dict = {}
    for start in range(0, replicates, _CHUNK):
        b = min(_CHUNK, replicates - start)
        draw = [rng.poisson(np.broadcast_to(x, (b, len(x)))) for x in (pos, tie, before)]
        got = segment_metrics(*draw, rng.poisson(float(tail), size=b), precision_levels=precision_levels,
                              recall_levels=recall_levels, alert_fractions=alert_fractions)
        for k, v in got.items():
            samples.setdefault(k, []).append(v)
    a = (1 - level) / 2
    out: dict = {"replicates": int(replicates), "level": level}
    for k, parts in samples.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        ci = [float(np.percentile(v, 100 * a)), float(np.percentile(v, 100 * (1 - a)))] if len(v) else None
        if isinstance(k, tuple):
            out.setdefault(k[0], {})[k[1]] = ci
        else:
            out[k] = ci
    return out


__all__ = ["DEFAULT_REPLICATES", "MAX_SEGMENTS", "group_segments", "join_segments", "segment_metrics",
           "binary_intervals"]
