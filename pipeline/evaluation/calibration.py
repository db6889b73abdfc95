"""Calibration metrics of a predictions table: Brier score, top-label ECE and the reliability diagram.

Pure NumPy partial sums: the evaluate stage's scan adds them over blocks of rows, so nothing is
collected. The corrections themselves (prior, temperature) are :mod:`pipeline.data.prior_correction`.

**Metrics.** The Brier score here is Brier's (1950) multiclass form, the mean over rows of
Σ_c (p_c − y_c)² (twice scikit-learn's binary ``brier_score_loss``). The expected calibration error
is Guo et al.'s top-label ECE with M = 15 equal-width confidence bins B_m = ((m−1)/M, m/M]:

    ECE = Σ_m |B_m| / n · | acc(B_m) − conf(B_m) |

with conf the row's largest probability and acc whether that class is the true one.

**Exact partial sums.** Spark adds the partials of its partitions in whatever order they finish,
and how rows fall into partitions and Arrow batches varies from run to run. Float sums would then
differ in their last bits between two runs on the same predictions. So every sum here is an integer:
each row's value is first rounded to a multiple of 2⁻⁴⁰ (an error of at most 2⁻⁴¹ ≈ 4.5·10⁻¹³ per
row), and integers add exactly in any order. The same predictions give the same bits of every metric.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15
FIXED_BITS = 40          # partial sums count units of 2⁻⁴⁰
FIXED_LIMIT = 2.0 ** 22  # |value| below this: one value is < 2⁶² units


# ------------------------------------------------------------------------- exact partial sums
def fixed_sum(values: np.ndarray) -> int:
    """Σ values as a Python int of 2⁻⁴⁰ units, each value rounded first; adds exactly across blocks.

    Values must be finite with |v| < 2²² (probabilities, confidences, per-row Brier and NLL terms)."""
    v = np.asarray(values, np.float64).ravel()
    if not len(v):
        return 0
    top = float(np.max(np.abs(v)))
    if not top < FIXED_LIMIT:
        raise ValueError(f"fixed_sum: value {top!r} is not finite or not below 2**22")
    q = np.rint(v * float(1 << FIXED_BITS)).astype(np.int64)
    chunk = max(1, (1 << 62) // (int(np.max(np.abs(q))) + 1))    # each int64 sum stays below 2⁶³
    return sum(int(q[i:i + chunk].sum()) for i in range(0, len(q), chunk))


def from_fixed(units: int) -> float:
    """The float nearest to ``units`` · 2⁻⁴⁰ (Python's int division rounds correctly)."""
    return int(units) / (1 << FIXED_BITS)


# ------------------------------------------------------------------ calibration metrics (partials)
def brier_units(probs: np.ndarray, labels: np.ndarray) -> int:
    """Σ over rows of Σ_c (p_c − y_c)², in 2⁻⁴⁰ units (:func:`fixed_sum`); exact across blocks."""
    d = np.array(probs, np.float64, copy=True)
    d[np.arange(len(labels)), labels] -= 1.0
    return fixed_sum(np.einsum("ij,ij->i", d, d))


def brier_sum(probs: np.ndarray, labels: np.ndarray) -> float:
    """Σ over rows of Σ_c (p_c − y_c)²; divide by the row count for the Brier score."""
    return from_fixed(brier_units(probs, labels))


def confidence_bin(conf: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Index m − 1 of the bin ((m−1)/M, m/M] holding each confidence (0 goes to the first bin)."""
    return np.clip(np.ceil(np.asarray(conf, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability_partials(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Per confidence bin: (rows, correct rows, Σ confidence in 2⁻⁴⁰ units), shape (bins, 3).

    Python ints (object dtype), so blocks add exactly: ``partials(a) + partials(b)`` has the same
    bits as ``partials(a ∪ b)``."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    b = confidence_bin(conf, bins)
    out = np.zeros((bins, 3), dtype=object)
    out[:, 0] = [int(c) for c in np.bincount(b, minlength=bins)]
    out[:, 1] = [int(c) for c in np.bincount(b[correct], minlength=bins)]
    order = np.argsort(b, kind="stable")
    edges = np.searchsorted(b[order], np.arange(bins + 1))
    out[:, 2] = [fixed_sum(conf[order[edges[m]:edges[m + 1]]]) for m in range(bins)]
    return out


def _as_floats(partials: np.ndarray) -> np.ndarray:
    """(bins, 3) floats: rows, correct rows, Σ confidence, from :func:`reliability_partials`."""
    p = np.asarray(partials)
    return np.array([[float(r), float(c), from_fixed(s)] for r, c, s in p], np.float64).reshape(-1, 3)


def ece_from_partials(partials: np.ndarray) -> float:
    """ECE = Σ_m |B_m| / n · |acc(B_m) − conf(B_m)| from :func:`reliability_partials` sums."""
    p = _as_floats(partials)
    n = p[:, 0].sum()
    if n == 0:
        raise ValueError("ece_from_partials: no rows")
    return float(np.sum(np.abs(p[:, 1] - p[:, 2])) / n)


def reliability_bins(partials: np.ndarray) -> list[dict]:
    """The reliability diagram's points: per bin its range, rows, accuracy and mean confidence."""
    p = _as_floats(partials)
    m = len(p)
    out = []
    for i, (n, correct, conf) in enumerate(p):
        out.append({"lo": i / m, "hi": (i + 1) / m, "count": int(n),
                    "accuracy": None if n == 0 else float(correct / n),
                    "confidence": None if n == 0 else float(conf / n)})
    return out


__all__ = ["ECE_BINS", "FIXED_BITS", "fixed_sum", "from_fixed", "brier_units", "brier_sum", "confidence_bin", "reliability_partials", "ece_from_partials",
           "reliability_bins"]
