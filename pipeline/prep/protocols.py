"""The survey's imbalance protocols, imposed on any labelled table by exact random under-sampling.

``step`` (Buda et al.): a fraction μ of the classes are minority. Every majority class is cut to
n = the size of the smallest class (a balanced base), every minority class to ``round(n/ρ)``
(at least 1), so max/min = ρ up to rounding. Which classes are minority is drawn from the seed.

``linear`` (Dist. C of Zhang et al.; Buda et al.'s "linear imbalance"): class sizes fall linearly
from n to n/ρ over the classes in a seeded random order: n_i = round(n·(1 − i/(C−1)·(1 − 1/ρ))).

Rows are kept by hash rank of (seed, id) within each class (:mod:`pipeline.prep.keys`), so the result
is exact and independent of partitioning.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import InputError
from pipeline.prep.keys import BUCKET, KEY, assign_buckets, exact_counts

PROTOCOLS = ("step", "linear")


def protocol_targets(class_counts: dict, protocol: str, rho: float, mu: float = 0.5, seed: int = 0) -> dict:
    """Target size per class for a protocol (pure)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown imbalance protocol '{protocol}' (choose from: {', '.join(PROTOCOLS)})")
    if rho < 1:
        raise InputError(f"protocol rho must be >= 1, got {rho}")
    labels = sorted(class_counts, key=lambda v: (str(type(v)), v))
    if len(labels) < 2:
        raise InputError("an imbalance protocol needs at least 2 classes")
    n = min(class_counts.values())
    order = np.random.default_rng(seed).permutation(len(labels))
    targets = {}
    if protocol == "step":
        if not 0 < mu < 1:
            raise InputError(f"step protocol mu must be in (0, 1), got {mu}")
        n_min_classes = max(1, int(round(mu * len(labels))))
        minority = {labels[i] for i in order[:n_min_classes]}
        for lab in labels:
            targets[lab] = max(1, int(round(n / rho))) if lab in minority else n
    else:
        c = len(labels)
        for rank, i in enumerate(order):
            size = n * (1 - rank / (c - 1) * (1 - 1 / rho))
            targets[labels[i]] = max(1, int(round(size)))
    return targets


def impose_protocol(df, protocol: str, rho: float, mu: float = 0.5, seed: int = 0, label_col: str = "label"):
    """Return ``df`` under-sampled (exactly, by hash rank) to the protocol's class sizes."""
    counts = exact_counts(df, label_col)
    targets = protocol_targets(counts, protocol, rho, mu, seed)
    cut = {lab: [targets[lab]] for lab in counts}
    kept = assign_buckets(df, label_col, counts, cut, seed, salt="protocol")
    return kept.where(f"{BUCKET} = 0").drop(BUCKET, KEY)
