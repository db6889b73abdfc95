"""Which synthetic row gets which label: exact class counts and a permutation of the ids.

Every synthetic preset gives class c exactly ``counts[c]`` rows and spreads each class over all ids
(and so over all files): row ``id`` takes the label of its position in the affine permutation
``(id · step + 12345) mod rows``, ``step`` coprime with ``rows``.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.errors import InputError


def exact_counts(fractions: np.ndarray, rows: int) -> np.ndarray:
    """Integer counts summing to ``rows`` (largest remainder), each class at least 1."""
    k = len(fractions)
    if rows < k:
        raise InputError(f"--rows {rows} is smaller than the number of classes ({k})")
    raw = fractions * rows
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: rows - counts.sum()]] += 1
    for i in np.nonzero(counts == 0)[0]:        # every class keeps at least one row
        counts[i] = 1
        counts[np.argmax(counts)] -= 1
    return counts



def coprime_step(rows: int) -> int:
    """A multiplier coprime with ``rows`` near rows·(√5−1)/2, for an affine permutation."""
    a = max(1, int(rows * 0.6180339887)) | 1
    while math.gcd(a, rows) != 1:
        a += 2
    return a


def positions(ids: np.ndarray, rows: int, step: int) -> np.ndarray:
    """Each id's position in the affine permutation of ``0..rows-1`` (its rank in label order)."""
    return (ids.astype(np.int64) * step + 12345) % rows  # object-free int64: rows*step < 2**63 for rows < 3e9


def labels_for(ids: np.ndarray, cum: np.ndarray, rows: int, step: int) -> np.ndarray:
    return np.searchsorted(cum, positions(ids, rows, step), side="right").astype(np.int64)


__all__ = ["exact_counts", "coprime_step", "positions", "labels_for"]
