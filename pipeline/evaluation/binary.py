"""Rare-event metrics of two-class data: what a fraud or screening team reads off a model.

Pure NumPy over the exact operating points of the positive class. The evaluate stage's rank
pass (:mod:`pipeline.evaluation.ranking`) walks the distinct scores of the positive class from
the highest down in contiguous groups; each group knows the positives/negatives
scoring strictly above it, and hands its operating points ``(TP_k, FP_k)`` (cumulative counts at
threshold "score ≥ s_k") to :func:`group_partials`. The driver joins the small partials with
:func:`combine`. Nothing here depends on how the rows were partitioned.

Definitions (scikit-learn's ``precision_recall_curve`` operating points, its final point
precision 1, recall 0 included; P positives, n rows):

* ``recall_at_precision[p]`` = max { TP_k / P : TP_k / (TP_k + FP_k) ≥ p }, 0 when only the final
  point qualifies;
* ``precision_at_recall[r]`` = max { TP_k / (TP_k + FP_k) : TP_k / P ≥ r };
* ``precision_at_k[a]``: with m = ⌈a·n⌉ and s* the m-th highest score, the precision of the rows
  scoring ≥ s* (ties at s* included, so possibly more than m rows are flagged).

``pr_auc`` (average precision) and ``roc_auc`` are the class's exact values from the rank pass.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

from pipeline.data.schema import positive_class

DEFAULT_PRECISION_LEVELS = (0.5, 0.8, 0.9, 0.95)
DEFAULT_RECALL_LEVELS = (0.5, 0.8, 0.9, 0.95)
DEFAULT_ALERT_FRACTIONS = (0.001, 0.01)


def check_levels(values) -> list[float]:
    """A list of levels in (0, 1] (precisions, recalls or alert fractions), as floats; raises ValueError."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"expected a non-empty list of numbers in (0, 1], got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"level {v!r} is not a number in (0, 1]")
        out.append(float(v))
    return out


def level_key(level: float) -> str:
    """The metrics.json key of a level: ``0.9`` → ``"0.9"``, ``0.001`` → ``"0.001"``."""
    return repr(float(level))


def alert_rows(fraction: float, n: int) -> int:
    """m = ⌈fraction · n⌉ computed exactly (0.001 · 5,000,000 is 5000, not 5001), at least 1."""
    return max(1, math.ceil(Fraction(repr(float(fraction))) * n))


def group_partials(tp: np.ndarray, fp: np.ndarray, above: int, P: int, *, precision_levels: Sequence[float],
                   recall_levels: Sequence[float], alert_m: Sequence[int]) -> dict:
    """One group's share of the binary metrics, from its operating points (descending scores).

    ``tp``/``fp``: cumulative counts at each of the group's thresholds, everything above the group
    included; ``above``: the rows scoring above the group (T + F); ``alert_m``: the row counts of
    :func:`alert_rows`. Precision and recall are compared as floats, as scikit-learn's curve has
    them. Returns ``{"rap": [best recall or None per precision level], "par": [best precision or
    None per recall level], "patk": [precision at the m-th row when it falls in this group, or None]}``.
    """
    tp = np.asarray(tp, np.float64)
    flagged = tp + np.asarray(fp, np.float64)
    precision = tp / flagged                      # every threshold flags at least one row
    recall = tp / P if P else np.zeros_like(tp)
    rap = [float(recall[precision >= p].max()) if np.any(precision >= p) else None for p in precision_levels]
    par = [float(precision[recall >= r].max()) if np.any(recall >= r) else None for r in recall_levels]
    patk = []
    for m in alert_m:
        i = int(np.searchsorted(flagged, m))      # the first threshold flagging ≥ m rows
        patk.append(float(precision[i]) if above < m and i < len(flagged) else None)
    return {"rap": rap, "par": par, "patk": patk}


def combine(partials: Sequence[dict], precision_levels: Sequence[float], recall_levels: Sequence[float],
            alert_fractions: Sequence[float]) -> dict:
    """The binary section's threshold metrics from every group's :func:`group_partials`.

    The best over groups; ``recall_at_precision`` falls back to the curve's final point (recall 0)."""
    def best(key, i, default):
        vals = [g[key][i] for g in partials if g[key][i] is not None]
        return max(vals) if vals else default

    return {
        "recall_at_precision": {level_key(p): best("rap", i, 0.0) for i, p in enumerate(precision_levels)},
        "precision_at_recall": {level_key(r): best("par", i, None) for i, r in enumerate(recall_levels)},
        "precision_at_k": {level_key(a): best("patk", i, None) for i, a in enumerate(alert_fractions)},
    }


LEVEL_KEYS = ("precision_levels", "recall_levels", "alert_fractions")   # the evaluate section's keys


def format_binary(b: dict) -> str:
    """One console line of a ``binary`` section: the AUCs, then every level."""
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    parts = [f"positive class {b['positive_label']} ({b['positives']} of {b['rows']} rows): "
             f"PR AUC {f(b['pr_auc'])} | ROC AUC {f(b['roc_auc'])}"]
    parts += [f"recall at precision {k} {f(v)}" for k, v in b["recall_at_precision"].items()]
    parts += [f"precision at top {float(k):.3g} {f(v)}" for k, v in b["precision_at_k"].items()]
    return " | ".join(parts)


__all__ = ["DEFAULT_PRECISION_LEVELS", "DEFAULT_RECALL_LEVELS", "DEFAULT_ALERT_FRACTIONS", "check_levels",
           "level_key", "alert_rows", "group_partials", "combine", "positive_class", "LEVEL_KEYS", "format_binary"]
