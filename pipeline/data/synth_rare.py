"""The ``rare`` synth preset: a fraud-shaped binary table (``id``, ``label`` 0/1, ``features``).

Size and classes
----------------
``rows`` = N rows, ``positive_rate`` = p (default 0.001), ``features`` = F (default 32, at least 4).
Label 1 (positive) has exactly round(N·p) rows (largest remainder via ``exact_counts``; at least
one), label 0 the rest. Row ``i`` gets its label from the same affine permutation of ``0..N-1``
as every preset (``labels_for`` / ``coprime_step`` of :mod:`pipeline.data.synth_rows`), so positives are
spread over ids and files.

Features (columns of the ``features`` array<float>, in this order)
-------------------------------------------------------------------
* ``n_inf = max(2, F // 4)`` informative columns (8 of 32): class-conditional Gaussian clusters;
* ``n_heavy = max(1, F // 8)`` heavy-tailed columns (4 of 32): the first ``ceil(n_heavy / 2)``
  lognormal, "amount"-like (exp(μ + σz): μ = 0, σ = 0.8 for the majority, μ = 0.8, σ = 1.0 for the
  easy and rare positives, μ = 0.2, σ = 0.85 for the overlapping ones), the rest Student-t with
  5 degrees of freedom (kurtosis 9), pure noise;
* the remaining ``F - n_inf - n_heavy`` columns (20 of 32): N(0, 1) nuisance, pure noise.

Sub-populations (``GROUPS``), in the informative columns; cluster centres and per-column scales are
drawn from ``seed`` alone (``rare_params``). Shares are exact: a row's rank within its class (its
position in the label permutation) picks its group, by largest remainder over the shares below.

* majority (label 0), a mixture: ``major_a`` 60%, ``major_b`` 30%, ``major_c`` 10% (centres
  N(0, 1) per column, per-column scales 0.8..1.4), less ``major_flipped``: 0.01% of the majority
  (at least one row) drawn from the easy positive cluster (label noise);
* positives (label 1): ``pos_easy`` 54%, a cluster 4.5 units from the majority centre (scale
  0.9: a linear model finds it); ``pos_overlap`` 40%, a tight cluster (scale 0.6) 0.5 units from
  ``major_a``'s centre, deep inside the majority (only density separates it); ``pos_rare`` 5%, a
  small tight cluster (scale 0.5) 3.5 units away in a direction orthogonal to the easy one (a rare
  group within the rare class, in its own region); ``pos_flipped`` 1%, drawn from ``major_a``
  (label noise).

A flipped row is drawn whole (informative and lognormal columns) from the other class's group.

Duplicates: a row whose id hash (splitmix64 of id and seed) falls below ``DUP_EXACT`` (0.2%)
copies the features of the nearest earlier row of the same label in its Arrow batch that is not
itself a copy (an exact duplicate, different id); one in the next ``DUP_NEAR`` (0.3%) copies it
plus N(0, ``JITTER`` = 0.01) jitter (a near-duplicate). A row with no such earlier row stays as drawn.

Everything else is a function of (seed, first id of the batch, batch length), as in the other
presets, so the table is determined by (preset, rows, seed, partitions, positive_rate, features);
per-row work is vectorised NumPy on the executors, nothing is collected to the driver.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from pipeline.data.synth_rows import coprime_step, exact_counts, labels_for, positions
from pipeline.errors import InputError

GROUPS = ("major_a", "major_b", "major_c", "major_flipped", "pos_easy", "pos_overlap", "pos_rare", "pos_flipped")
#: group shares within each class, in rank order (majority groups 0..3, positive groups 4..7)
NEG_SHARES = np.array([0.6, 0.3, 0.1 - 1e-4, 1e-4])
POS_SHARES = np.array([0.54, 0.40, 0.05, 0.01])
#: the group each group's features are drawn from (the flipped groups draw from the other class)
DRAW_AS = np.array([0, 1, 2, 4, 4, 5, 6, 0])
EASY_DIST, RARE_DIST, OVERLAP_DIST = 4.5, 3.5, 0.5
T_DOF = 5
DUP_EXACT, DUP_NEAR, JITTER = 0.002, 0.003, 0.01
# lognormal (mu, sigma) per group, by the group drawn as
LOGN_MU = np.array([0.0, 0.0, 0.0, 0.8, 0.8, 0.2, 0.8, 0.0])
LOGN_SIGMA = np.array([0.8, 0.8, 0.8, 1.0, 1.0, 0.85, 1.0, 0.8])


def check_rare_args(positive_rate: float, features: int) -> None:
    """One clear :class:`InputError` line for a bad ``positive_rate`` or ``features``."""
    if not (isinstance(positive_rate, (int, float)) and not isinstance(positive_rate, bool)
            and 0 < positive_rate < 0.5):
        raise InputError(f"positive rate (--positive-rate, data.positive_rate) must be between 0 and 0.5 "
                         f"(exclusive), got {positive_rate}")
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 4:
        raise InputError(f"features (--features, data.features) must be an integer of at least 4, got {features}")


def feature_layout(features: int) -> dict:
    """Column slices: ``informative``, ``lognormal``, ``student_t``, ``nuisance`` (see the module doc)."""
    n_inf = max(2, features // 4)
    n_heavy = max(1, features // 8)
    n_logn = math.ceil(n_heavy / 2)
    a, b, c = n_inf, n_inf + n_logn, n_inf + n_heavy
    return {"informative": slice(0, a), "lognormal": slice(a, b), "student_t": slice(b, c),
            "nuisance": slice(c, features)}


def rare_counts(rows: int, positive_rate: float) -> np.ndarray:
    """``[negatives, positives]``: positives = round(rows · positive_rate), at least 1."""
    return exact_counts(np.array([1.0 - positive_rate, positive_rate]), rows)


def _shares(fractions: np.ndarray, n: int) -> np.ndarray:
    """Exact group sizes of a class of ``n`` rows (largest remainder; all in the first group if n is tiny)."""
    if n >= len(fractions):
        return exact_counts(fractions, n)
    out = np.zeros(len(fractions), dtype=np.int64)
    out[0] = n
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def rare_params(rows: int, positive_rate: float, features: int, seed: int) -> dict:
    """Everything a batch needs (O(features) numbers): counts, permutation, cluster centres and scales."""
    rng = np.random.default_rng([30_000, seed])
    lay = feature_layout(features)
    d = lay["informative"].stop
    means = np.zeros((len(GROUPS), d))
    scales = np.ones((len(GROUPS), d))
    means[:3] = rng.normal(0.0, 1.0, (3, d))
    scales[:3] = rng.uniform(0.8, 1.4, (3, d))
    centre = (NEG_SHARES[:3, None] * means[:3]).sum(0) / NEG_SHARES[:3].sum()
    u = _unit(rng.normal(size=d))
    w = rng.normal(size=d)
    w = _unit(w - (w @ u) * u)                               # orthogonal to the easy direction
    means[4], scales[4] = centre + EASY_DIST * u, 0.9
    means[5], scales[5] = means[0] + OVERLAP_DIST * _unit(rng.normal(size=d)), 0.6
    means[6], scales[6] = centre + RARE_DIST * w, 0.5
    counts = rare_counts(rows, positive_rate)
    group_cum = [np.cumsum(_shares(NEG_SHARES, int(counts[0]))), np.cumsum(_shares(POS_SHARES, int(counts[1])))]
    return {"rows": rows, "features": features, "seed": seed, "layout": lay, "counts": counts,
            "cum": np.cumsum(counts), "step": coprime_step(rows), "group_cum": group_cum,
            "means": means[DRAW_AS].astype(np.float32), "scales": scales[DRAW_AS].astype(np.float32),
            "logn_mu": LOGN_MU.astype(np.float32), "logn_sigma": LOGN_SIGMA.astype(np.float32)}


def assign(ids: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, groups)`` of ``ids``: the label permutation, then each row's rank within its class."""
    rows, cum, step = params["rows"], params["cum"], params["step"]
    labels = labels_for(ids, cum, rows, step)
    rank = positions(ids, rows, step) - np.where(labels == 1, cum[0], 0)
    groups = np.where(labels == 1,
                      4 + np.searchsorted(params["group_cum"][1], rank, side="right"),
                      np.searchsorted(params["group_cum"][0], rank, side="right")).astype(np.int64)
    return labels, groups


def id_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per id and seed (splitmix64 finaliser), independent of batches and partitions."""
    with np.errstate(over="ignore"):
        h = ids.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def draw_features(ids: np.ndarray, labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                  params: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(x, copied)``: the (n, F) float32 features of one batch, and 0 / 1 (exact) / 2 (near) per row."""
    n, lay = len(ids), params["layout"]
    x = rng.standard_normal((n, params["features"]), dtype=np.float32)
    inf, ln, st = lay["informative"], lay["lognormal"], lay["student_t"]
    x[:, inf] = params["means"][groups] + params["scales"][groups] * x[:, inf]
    x[:, ln] = np.exp(params["logn_mu"][groups][:, None] + params["logn_sigma"][groups][:, None] * x[:, ln])
    k = st.stop - st.start
    if k:
        chi = rng.chisquare(T_DOF, (n, k)).astype(np.float32)
        x[:, st] = x[:, st] / np.sqrt(chi / T_DOF)
    u = id_hash(ids, params["seed"])
    copied = np.where(u < DUP_EXACT, 1, np.where(u < DUP_EXACT + DUP_NEAR, 2, 0))
    for lab in (0, 1):
        is_lab = labels == lab
        targets = np.flatnonzero(is_lab & (copied > 0))
        if not len(targets):
            continue
        sources = np.flatnonzero(is_lab & (copied == 0))
        j = np.searchsorted(sources, targets) - 1        # the nearest earlier same-label original
        ok = j >= 0
        copied[targets[~ok]] = 0
        targets, src = targets[ok], sources[j[ok]]
        x[targets] = x[src]
        near = targets[copied[targets] == 2]
        x[near] += rng.normal(0.0, JITTER, (len(near), x.shape[1])).astype(np.float32)
    return x, copied


def batch_rng(seed: int, ids: np.ndarray) -> np.random.Generator:
    return np.random.default_rng([seed, int(ids[0]), len(ids), 11])


def rare_table(rows: int, seed: int, positive_rate: float = 0.001, features: int = 32,
               batch: int = 10_000) -> dict:
    """The preset in NumPy alone, ids ``0..rows-1`` in batches of ``batch`` (as one partition):
    ``{"id", "label", "group", "copied", "x"}`` (for tests and inspection; Spark writes the table)."""
    check_rare_args(positive_rate, features)
    params = rare_params(rows, positive_rate, features, seed)
    parts = []
    for start in range(0, rows, batch):
        ids = np.arange(start, min(rows, start + batch), dtype=np.int64)
        labels, groups = assign(ids, params)
        x, copied = draw_features(ids, labels, groups, batch_rng(seed, ids), params)
        parts.append((ids, labels, groups, copied, x))
    return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(("id", "label", "group", "copied", "x"))}


def rare_batches(params: dict):
    """mapInArrow function: id batches → (id, label, features)."""
    seed = params["seed"]

    def gen(batches: Iterator) -> Iterator:
        # deferred: pyarrow is slow to import
        import pyarrow as pa

        for b in batches:
            ids = b.column("id").to_numpy()
            if len(ids) == 0:
                continue
            labels, groups = assign(ids, params)
            x, _ = draw_features(ids, labels, groups, batch_rng(seed, ids), params)
            offsets = np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)
            yield pa.RecordBatch.from_pydict({
                "id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                "features": pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.ravel()))})
    return gen
