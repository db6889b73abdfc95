"""Read-time per-class sampling: which rows a streaming reader emits, and how many times, in one
epoch given per-class sampling rates, without writing any duplicate to disk —
:func:`epoch_sampling_plan`, :func:`row_multiplicity`. The decision for a row depends only on
``(seed, epoch, id)`` through a 64-bit hash (:func:`splitmix64`), so every worker, every
partitioning and every rerun agree.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import InputError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray | int) -> np.ndarray:
    """SplitMix64 (Steele, Lea & Flood 2014; Vigna's reference C): mix(x + 0x9E3779B97F4A7C15).

    Vectorised over uint64 arrays, wrapping arithmetic mod 2⁶⁴. ``splitmix64(s)`` is the first
    output of a SplitMix64 generator whose state is ``s``.
    """
    z = np.array(x, dtype=np.uint64, copy=True) if not isinstance(x, int) else np.array(x & _MASK64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return z


def row_uniforms(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One uniform in [0, 1) per row, a pure function of ``(seed, epoch, id)``.

    u = top 53 bits of splitmix64(splitmix64(splitmix64(seed) ⊕ epoch) ⊕ id) / 2⁵³. The key of
    (seed, epoch) is hashed first so that consecutive seeds or epochs give unrelated streams.
    Negative ids are taken as their 64-bit two's complement.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise InputError(f"row ids must be integers, got dtype {ids.dtype}")
    key = splitmix64(splitmix64(int(seed) & _MASK64) ^ np.uint64(int(epoch) & _MASK64))
    h = splitmix64(ids.astype(np.int64, copy=False).view(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _as_rates(rates: Sequence[float] | dict, n_classes: int | None = None) -> np.ndarray:
    if isinstance(rates, dict):
        if n_classes is None:
            n_classes = max(int(k) for k in rates) + 1 if rates else 0
        r = np.ones(n_classes, dtype=float)  # classes not named keep rate 1 (left as they are)
        for k, v in rates.items():
            r[int(k)] = float(v)
    else:
        r = np.asarray(rates, dtype=float).ravel()
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise InputError(f"sampling rates must be finite and >= 0, got {r[~np.isfinite(r) | (r < 0)][:5].tolist()}")
    return r


def epoch_sampling_plan(class_counts: Sequence[float], rates: Sequence[float] | dict, seed: int,
                        epoch: int) -> dict:
    """What read-time sampling with ``rates`` draws from each class in one epoch (no data read).

    For class c with n_c rows and rate r_c every row is emitted ⌊r_c⌋ times plus once more with
    probability frac(r_c) (:func:`row_multiplicity`), so the class yields between ⌊r_c⌋·n_c
    (``min``) and ⌈r_c⌉·n_c (``max``) rows, ``expected`` = r_c·n_c on average, with binomial
    standard deviation sqrt(n_c·frac·(1−frac)). Totals over classes are given too, so the loop can
    size its steps per epoch before reading. ``seed`` and ``epoch`` are recorded (the draws
    themselves depend on them, the expectations do not). ``rates`` is an array indexed by label
    or a dict label → rate (unnamed classes keep rate 1).
    """
    counts = np.asarray(class_counts, dtype=float).ravel()
    if np.any(~np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise InputError("class counts must be non-negative integers")
    r = _as_rates(rates, counts.size)
    if r.size != counts.size:
        raise InputError(f"got {r.size} sampling rates for {counts.size} classes")
    whole = np.floor(r)
    frac = r - whole
    classes = []
    for c in range(counts.size):
        n = int(counts[c])
        classes.append({"label": c, "rows": n, "rate": float(r[c]), "copies_always": int(whole[c]),
                        "p_extra": float(frac[c]), "min": int(whole[c]) * n,
                        "max": int(whole[c]) * n + (n if frac[c] > 0 else 0),
                        "expected": float(r[c] * n), "std": float(np.sqrt(n * frac[c] * (1 - frac[c])))})
    return {"seed": int(seed), "epoch": int(epoch), "classes": classes,
            "input_rows": int(counts.sum()),
            "expected_total": float(sum(c["expected"] for c in classes)),
            "min_total": int(sum(c["min"] for c in classes)),
            "max_total": int(sum(c["max"] for c in classes)),
            "std_total": float(np.sqrt(sum(c["std"] ** 2 for c in classes)))}


def row_multiplicity(ids: np.ndarray, labels: np.ndarray, rates: Sequence[float] | dict, seed: int,
                     epoch: int) -> np.ndarray:
    """How many times each row is emitted this epoch: ⌊r⌋ + [u < frac(r)], r = rates[label].

    u is :func:`row_uniforms` of ``(seed, epoch, id)``, so the answer for a row is the same on every
    worker and in every batch or partition it falls in, and changes from epoch to epoch. Rates below
    1 undersample (a row is kept with probability r), above 1 oversample (⌊r⌋ copies always, one
    more with probability frac(r)); integer rates are exact. ``rates`` is an array indexed by label
    or a dict label → rate (classes below the largest named label that are not named keep rate 1).
    Returns int64 counts (0 = skip).
    """
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise InputError(f"ids and labels must be 1-D of equal length, got {ids.shape} and {labels.shape}")
    r = _as_rates(rates)
    if labels.size and (labels.min() < 0 or labels.max() >= r.size):
        raise InputError(f"labels must lie in 0..{r.size - 1} (one rate per class); got range "
                         f"{labels.min()}..{labels.max()}")
    rr = r[labels.astype(np.int64, copy=False)]
    whole = np.floor(rr)
    u = row_uniforms(ids, seed, epoch)
    return whole.astype(np.int64) + (u < (rr - whole)).astype(np.int64)


__all__ = ["splitmix64", "row_uniforms", "epoch_sampling_plan", "row_multiplicity"]
