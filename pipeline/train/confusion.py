"""Confusion matrices and the metrics the training loop reads from them (validation, method searches)."""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """C×C counts: row = true class, column = predicted class."""
    idx = y_true.long() * n_classes + y_pred.long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Accuracy, macro-F1, balanced accuracy, G-mean and per-class recall/F1 from a confusion matrix.

    Averages run over the classes present in the data (support > 0), as the evaluate stage does;
    a class never predicted has precision 0 (scikit-learn's ``zero_division=0``).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    n = cm.sum()
    rec_p = recall[present]
    return {
        "n": int(n),
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(rec_p.mean()) if present.any() else 0.0,
        "macro_recall": float(rec_p.mean()) if present.any() else 0.0,
        "g_mean": float(np.exp(np.mean(np.log(np.maximum(rec_p, 1e-300))))) if present.any() and rec_p.min() > 0
        else 0.0,
        "recall": [float(r) if s > 0 else None for r, s in zip(recall, support)],
        "f1": [float(v) if s > 0 else None for v, s in zip(f1, support)],
        "support": [int(s) for s in support],
    }


# ------------------------------------------------------------------ binned ranking (two-class validation)
#: Validation scores are binned on the log-odds of the positive class, ``log p1 − log p0`` (for a
#: two-class softmax, the logit margin), in steps of 1/64 over [−32, 32]; beyond it, in the end bins.
MARGIN_RANGE = 32.0
MARGIN_BINS = 4096


def margin_histogram(margin: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
    """2 × :data:`MARGIN_BINS` counts (row 0: negatives, row 1: positives) of the rows' log-odds
    ``margin``; histograms of two shards add up to the histogram of both."""
    width = 2 * MARGIN_RANGE / MARGIN_BINS
    b = torch.clamp(((margin.double() + MARGIN_RANGE) / width).floor().long(), 0, MARGIN_BINS - 1)
    return torch.bincount(is_positive.long() * MARGIN_BINS + b, minlength=2 * MARGIN_BINS).reshape(2, MARGIN_BINS)


def ranking_from_histogram(hist: np.ndarray) -> dict:
    """Average precision and ROC AUC of the positive class from a :func:`margin_histogram`.

    Each bin is one threshold: rows in one bin count as tied, as scikit-learn treats equal scores, so
    for scores that are constant within bins these equal ``average_precision_score`` and
    ``roc_auc_score`` exactly; otherwise they differ by the ordering lost inside a bin (Keras's
    ``AUC(num_thresholds=…)`` makes the same trade). With thresholds t_k from the highest bin down,

        AP  = Σ_k (R_k − R_{k−1}) · P_k,            P_k = TP_k / (TP_k + FP_k),  R_k = TP_k / P
        AUC = Σ_b neg_b · (pos above b + pos_b / 2) / (P · N)

    Either is ``None`` when the table lacks a class it needs (no positives; no negatives for AUC).
    """
    neg, pos = (np.asarray(h, np.float64)[::-1] for h in hist)     # highest margins first
    P, N = pos.sum(), neg.sum()
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    keep = pos + neg > 0
    ap = None
    if P > 0:
        precision = tp[keep] / (tp[keep] + fp[keep])
        recall = tp[keep] / P
        ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    auc = float(np.sum(neg * (tp - pos + pos / 2)) / (P * N)) if P > 0 and N > 0 else None
    return {"pr_auc": ap, "roc_auc": auc}
