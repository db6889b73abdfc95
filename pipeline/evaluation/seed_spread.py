"""How much a headline number moves from one training seed to the next: pure functions.

A model trained with S seeds (``run.seeds``) is S models. Each is scored on the same test rows;
these functions summarise the S ``metrics.json`` dicts:

* :func:`headline` picks the headline metrics of one ``metrics.json`` block;
* :func:`spread` gives, per metric, the mean over seeds, the sample standard deviation
  ``sd = sqrt(Σ_s (x_s − mean)² / (S − 1))`` (``None`` for one seed), the minimum and the maximum;
* :func:`average_metrics` averages the per-class F1 and recall and the summary metrics over the
  seeds, the point estimate of a method (the comparison's intervals are the two-level bootstrap's,
  :func:`pipeline.evaluation.intervals.paired_deltas`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

HEADLINE_NAMES = {"macro_f1": "macro F1", "balanced_accuracy": "balanced accuracy", "g_mean": "G-mean",
                  "macro_roc_auc": "macro ROC AUC", "macro_pr_auc": "macro PR AUC", "accuracy": "accuracy",
                  "l5_f1": "L5 F1", "rest_f1": "rest F1"}


def headline(m: dict, aucs_from: Optional[dict] = None) -> dict:
    """The headline metrics of a ``metrics.json`` block; ROC/PR AUC from ``aucs_from`` (default ``m``;
    for the threshold-moved block, the raw one: threshold moving moves decisions, not scores)."""
    aucs = (aucs_from or m).get("macro", {})
    groups = m.get("groups", {})
    return {"macro_f1": m.get("macro", {}).get("f1"), "balanced_accuracy": m.get("balanced_accuracy"),
            "g_mean": m.get("g_mean"), "macro_roc_auc": aucs.get("roc_auc"), "macro_pr_auc": aucs.get("pr_auc"),
            "accuracy": m.get("accuracy"), "l5_f1": groups.get("L5", {}).get("f1"),
            "rest_f1": groups.get("rest", {}).get("f1")}


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


def spread(per_seed: Sequence[dict]) -> dict:
    """``{metric: {"mean", "sd", "min", "max"}}`` over the seeds' headline dicts (a metric that is
    undefined for any seed is left out)."""
    out = {}
    for k in per_seed[0]:
        xs = [p.get(k) for p in per_seed]
        if any(x is None for x in xs):
            continue
        mu = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        out[k] = {"mean": mu, "sd": sd, "min": min(xs), "max": max(xs)}
    return out


def average_metrics(metrics: Sequence[dict]) -> dict:
    """A ``metrics.json``-shaped dict of the means over seeds: ``per_class`` F1 and recall (support and
    names as in the first), ``macro.f1``, ``balanced_accuracy`` and ``accuracy``. One seed: itself."""
    if len(metrics) == 1:
        return metrics[0]
    per_class = []
    for rows in zip(*(m["per_class"] for m in metrics)):
        r = dict(rows[0])
        r["f1"], r["recall"] = _mean([x["f1"] for x in rows]), _mean([x["recall"] for x in rows])
        per_class.append(r)
    return {"n_classes": metrics[0]["n_classes"], "per_class": per_class,
            "macro": {"f1": _mean([m["macro"]["f1"] for m in metrics])},
            "balanced_accuracy": _mean([m["balanced_accuracy"] for m in metrics]),
            "accuracy": _mean([m["accuracy"] for m in metrics])}
