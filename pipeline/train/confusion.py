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
