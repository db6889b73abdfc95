"""Calibration metrics of a predictions table: Brier score, top-label ECE and the reliability diagram.

Pure NumPy partial sums: the evaluate stage's scan adds them over blocks of rows, so nothing is
collected. The corrections themselves (prior, temperature) are :mod:`pipeline.data.prior_correction`.

**Metrics.** The Brier score here is Brier's (1950) multiclass form, the mean over rows of
Σ_c (p_c − y_c)² (twice scikit-learn's binary ``brier_score_loss``). The expected calibration error
is Guo et al.'s top-label ECE with M = 15 equal-width confidence bins B_m = ((m−1)/M, m/M]:

    ECE = Σ_m |B_m| / n · | acc(B_m) − conf(B_m) |

with conf the row's largest probability and acc whether that class is the true one.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15

# ------------------------------------------------------------------ calibration metrics (partials)
def brier_sum(probs: np.ndarray, labels: np.ndarray) -> float:
    """Σ over rows of Σ_c (p_c − y_c)²; divide by the row count for the Brier score."""
    d = np.array(probs, np.float64, copy=True)
    d[np.arange(len(labels)), labels] -= 1.0
    return float(np.einsum("ij,ij->", d, d))


def confidence_bin(conf: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Index m − 1 of the bin ((m−1)/M, m/M] holding each confidence (0 goes to the first bin)."""
    return np.clip(np.ceil(np.asarray(conf, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability_partials(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Per confidence bin: (rows, correct rows, Σ confidence), shape (bins, 3); sums across blocks."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    b = confidence_bin(conf, bins)
    return np.stack([np.bincount(b, minlength=bins).astype(np.float64),
                     np.bincount(b, weights=correct, minlength=bins),
                     np.bincount(b, weights=conf, minlength=bins)], axis=1)


def ece_from_partials(partials: np.ndarray) -> float:
    """ECE = Σ_m |B_m| / n · |acc(B_m) − conf(B_m)| from :func:`reliability_partials` sums."""
    p = np.asarray(partials, np.float64)
    n = p[:, 0].sum()
    if n == 0:
        raise ValueError("ece_from_partials: no rows")
    return float(np.sum(np.abs(p[:, 1] - p[:, 2])) / n)


def reliability_bins(partials: np.ndarray) -> list[dict]:
    """The reliability diagram's points: per bin its range, rows, accuracy and mean confidence."""
    p = np.asarray(partials, np.float64)
    m = len(p)
    out = []
    for i, (n, correct, conf) in enumerate(p):
        out.append({"lo": i / m, "hi": (i + 1) / m, "count": int(n),
                    "accuracy": None if n == 0 else float(correct / n),
                    "confidence": None if n == 0 else float(conf / n)})
    return out


__all__ = ["ECE_BINS", "brier_sum", "confidence_bin", "reliability_partials", "ece_from_partials",
           "reliability_bins"]
