"""How uncertain each number is: Wilson intervals and a stratified bootstrap computed in Spark.

Wilson score interval (per-class recall = tp/support and precision = tp/predicted are binomial
proportions k/n). With z the 1 − α/2 normal quantile (1.96 for 95%) and p̂ = k/n::

    centre = (k + z²/2) / (n + z²)
    half   = z / (n + z²) · √(k(n − k)/n + z²/4)
    [lo, hi] = [centre − half, centre + half]          (always inside [0, 1])

Unlike the normal (Wald) interval it does not collapse to a point at k = 0 or k = n, which is
what a class with 4 test rows and recall 0 needs.

F1, macro F1 and balanced accuracy are not proportions; their intervals come from a *stratified
Poisson bootstrap* done on Spark's executors over the predictions table, with no row collected:

1. every row gets, for each replicate b = 0..B−1, a weight w ~ Poisson(1) computed from a hash of
   (seed, b, id) — the inverse Poisson CDF of u = splitmix64(seed, b, id) / 2⁵³
   (:func:`poisson_weights`) — so the replicates are the same whatever the partitioning and
   however often they are recomputed;
2. pass 1 sums the weights per (replicate, true class), s_bc, and the rows per class, n_c; each
   true class is rescaled so its total weight equals its support (row weight w · n_c / s_bc; 1
   where the class drew no weight at all), as a bootstrap that resamples n_c rows within each
   class: *stratified by class*;
3. pass 2 sums per (replicate, class) the rescaled tp, fp and fn. Both passes are NumPy over
   Arrow batches (``mapInArrow``); each partition returns B × C sums, added up on the driver;
4. the driver computes each replicate's per-class F1 = 2tp/(2tp+fp+fn), macro F1 (mean over the
   present classes) and balanced accuracy (mean recall), and takes the 2.5 and 97.5 percentiles.

Percentile intervals of bounded statistics stay inside [0, 1]. For a difference between two
models (method − reference) both prediction tables are joined on ``id`` and every replicate
weighs the same rows in both (a *paired* bootstrap), so the interval of the difference reflects
how differently the two models treat the same test rows.

When each model was trained with several seeds, one test-row bootstrap describes one trained
model, not the method. The comparison then uses a *two-level* bootstrap (Davison & Hinkley 1997,
§3.8, resampling at both stages of a two-stage design): in replicate b, level 1 draws S seeds
with replacement out of a model's S trained copies and level 2 weighs the test rows with the
replicate's weights, the same weights for every seed and both models; a statistic is the mean over
the drawn seeds (:func:`seed_resampled`). Its interval covers the training randomness as well as
the test sample; with one seed it is the paired bootstrap above. Where every seed has its own test
rows (an experiment draws a split per seed), level 2 is each seed's own paired bootstrap and level 1
draws seeds (:func:`blocked_deltas`).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

Z95 = 1.959963984540054
LOW_SUPPORT = 20          # fewer test rows than this: the report warns that the class's numbers are noisy
DEFAULT_REPLICATES = 200

# Poisson(1) cumulative probabilities P(W ≤ k), k = 0..9: w = #{k : u ≥ P(W ≤ k)}
_POISSON1_CDF = [sum(math.exp(-1) / math.factorial(j) for j in range(k + 1)) for k in range(10)]


def wilson(k: float, n: float, z: float = Z95) -> tuple[Optional[float], Optional[float]]:
    """Wilson score interval of the proportion k/n (None, None when n = 0)."""
    if n <= 0:
        return None, None
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(max(k * (n - k) / n, 0.0) + z * z / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_per_class(per_class: list[dict], z: float = Z95) -> list[dict]:
    """Recall and precision Wilson intervals per class of a ``metrics.json`` ``per_class`` list."""
    out = []
    for r in per_class:
        tp, support, predicted = r["tp"], r["support"], r["tp"] + r["fp"]
        out.append({"label": r["label"], "recall_ci": list(wilson(tp, support, z)),
                    "precision_ci": list(wilson(tp, predicted, z)),
                    "low_support": 0 < support < LOW_SUPPORT})
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective mix of uint64 values."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def poisson_weights(ids: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(B, n) Poisson(1) weights of the rows ``ids`` in replicates b = 0..B−1, a pure function of
    (seed, b, id): any partitioning or recomputation gives the same weights.

    u = top 53 bits of mix64(id·φ ⊕ mix64(seed·2³² + b)) / 2⁵³,  w = #{k : u ≥ P(W ≤ k)}.
    """
    with np.errstate(over="ignore"):
        rep = _mix64(np.uint64(int(seed) & 0xFFFFFFFF) * np.uint64(1 << 32)
                     + np.arange(int(replicates), dtype=np.uint64))
        h = _mix64((np.asarray(ids).astype(np.int64).view(np.uint64) * _GOLDEN)[None, :] ^ rep[:, None])
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float64)


def _partial_sums(B: int, C: int, seed: int, n_preds: int, strata: Optional[tuple]):
    """A ``mapInArrow`` function over (``_id``, ``_t``, ``_p0``, …) batches: one row per partition.

    Without ``strata``: the partition's drawn weight per (replicate, true class), s[b, t], and its
    rows per class, n[t]. With ``strata`` = (s, n) of the whole table: per prediction column the
    stratified tp, fn, fp per (replicate, class), each row weighted w · n_t / s[b, t] (weight 1
    where its class drew no weight at all in that replicate).
    """
    def fn(batches):
        if strata is None:
            acc = [np.zeros(B * C), np.zeros(C)]
        else:
            s, n = strata
            drawn = s > 0
            factor = np.where(drawn, n[None, :] / np.where(drawn, s, 1.0), 0.0)   # (B, C)
            acc = [np.zeros(3 * B * C) for _ in range(n_preds)]
        offset = np.arange(B)[:, None] * C
        for batch in batches:
            t = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
            keep = (t >= 0) & (t < C)
            t = t[keep]
            if not len(t):
                continue
            w = poisson_weights(batch.column(0).to_numpy(zero_copy_only=False)[keep], B, seed)   # (B, rows)
            if strata is None:
                acc[0] += np.bincount((offset + t[None, :]).ravel(), weights=w.ravel(), minlength=B * C)
                acc[1] += np.bincount(t, minlength=C)
                continue
            scaled = np.where(drawn[:, t], w * factor[:, t], 1.0)
            for i in range(n_preds):
                p = batch.column(2 + i).to_numpy(zero_copy_only=False).astype(np.int64)[keep]
                hit = p == t
                for k, (mask, cls) in enumerate(((hit, t), (~hit, t), (~hit & (p >= 0) & (p < C), p))):
                    if mask.any():   # k: 0 tp (by true class), 1 fn (by true class), 2 fp (by predicted class)
                        idx = (k * B * C + offset + cls[mask][None, :]).ravel()
                        acc[i] += np.bincount(idx, weights=scaled[:, mask].ravel(), minlength=3 * B * C)
        yield pa.RecordBatch.from_arrays([pa.array([[a.tobytes() for a in acc]], pa.list_(pa.binary()))],
                                         names=["v"])
    return fn


def bootstrap_counts(df, pred_cols: Sequence[str], n_classes: int, *, replicates: int = DEFAULT_REPLICATES,
                     seed: int = 0, label_col: str = "label", id_col: str = "id") -> dict:
    """Per replicate and class, the stratified-bootstrap tp, fp, fn of each prediction column.

    ``df`` has ``id_col``, ``label_col`` and the integer ``pred_cols``. Returns
    ``{col: {"tp": (B, C), "fp": (B, C), "fn": (B, C)}}`` as float arrays (weighted counts), computed
    in two narrow passes on the executors; only B × C sums per partition reach the driver.
    """
    B, C = int(replicates), int(n_classes)
    # integer ids are used as they are; any other id type (strings, …) by its 64-bit hash
    integral = df.schema[id_col].dataType.typeName() in ("byte", "short", "integer", "long")
    rid = F.col(id_col).cast("long") if integral else F.xxhash64(F.col(id_col))
    narrow = df.select(rid.alias("_id"), F.col(label_col).cast("long").alias("_t"),
                       *[F.col(c).cast("long").alias(f"_p{i}") for i, c in enumerate(pred_cols)])

    def summed(strata):
        # one row per partition with a few B × C arrays; summed on the driver (partials, not rows)
        parts = narrow.mapInArrow(_partial_sums(B, C, seed, len(pred_cols), strata), "v array<binary>").collect()
        if not parts:
            return None
        return [sum(np.frombuffer(r["v"][i], dtype=np.float64) for r in parts) for i in range(len(parts[0]["v"]))]

    # pass 1: each replicate's drawn weight per true class, s[b, c], and the support n_c
    first = summed(None)
    if first is None:
        return {c: {k: np.zeros((B, C)) for k in ("tp", "fp", "fn")} for c in pred_cols}
    # pass 2: the stratified tp, fn, fp of every prediction column
    second = summed((first[0].reshape(B, C), first[1]))
    out = {}
    for c, v in zip(pred_cols, second):
        tp, fn, fp = v.reshape(3, B, C)
        out[c] = {"tp": tp.copy(), "fp": fp.copy(), "fn": fn.copy()}
    return out


def replicate_metrics(counts: dict, support: np.ndarray) -> dict:
    """Per-replicate per-class recall, precision, F1 and macro F1 / balanced accuracy (driver side).

    ``support``: the test rows per class; classes with support 0 are left out of the macro means.
    """
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    present = np.asarray(support) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    recall[:, ~present] = np.nan
    f1[:, ~present] = np.nan
    precision[:, ~present] = np.nan
    return {"recall": recall, "precision": precision, "f1": f1,
            "macro_f1": np.nanmean(f1[:, present], axis=1) if present.any() else np.full(len(tp), np.nan),
            "balanced_accuracy": np.nanmean(recall[:, present], axis=1) if present.any()
            else np.full(len(tp), np.nan)}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple:
    """Percentile interval of bootstrap samples along axis 0 (NaN-safe)."""
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # an absent class: all-NaN column, NaN interval
        lo = np.nanpercentile(samples, 100 * a, axis=0)
        hi = np.nanpercentile(samples, 100 * (1 - a), axis=0)
    return lo, hi


def _nums(x) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in np.ravel(x)]


def bootstrap_intervals(spark, predictions, n_classes: int, *, pred_col: str = "pred",
                        replicates: int = DEFAULT_REPLICATES, seed: int = 0, label_col: str = "label",
                        id_col: str = "id") -> dict:
    """95% stratified-bootstrap intervals of per-class F1/recall and of macro F1 / balanced accuracy
    for one predictions table (a path or a DataFrame)."""
    df = predictions if not isinstance(predictions, str) else spark.read.parquet(predictions)
    support = _support(df, n_classes, label_col)
    counts = bootstrap_counts(df, [pred_col], n_classes, replicates=replicates, seed=seed, label_col=label_col,
                              id_col=id_col)[pred_col]
    m = replicate_metrics(counts, support)
    out = {"replicates": int(replicates), "seed": int(seed), "level": 0.95, "per_class": {}}
    for k in ("f1", "recall"):
        lo, hi = percentile_ci(m[k])
        out["per_class"][f"{k}_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
    for k in ("macro_f1", "balanced_accuracy"):
        lo, hi = percentile_ci(m[k])
        out[f"{k}_ci"] = [_nums(lo)[0], _nums(hi)[0]]
    return out


def _support(df, n_classes: int, label_col: str) -> np.ndarray:
    s = np.zeros(n_classes)
    for row in df.groupBy(F.col(label_col).cast("long").alias("c")).count().collect():  # ≤ C rows
        if 0 <= int(row["c"]) < n_classes:
            s[int(row["c"])] = int(row["count"])
    return s


def seed_resampled(per_seed: Sequence[dict], rng: np.random.Generator) -> dict:
    """Level 1 of the two-level bootstrap: for every replicate b, S seeds drawn with replacement
    out of the ``S = len(per_seed)`` trained models, and each statistic averaged over the draws.

    ``per_seed[s]``: :func:`replicate_metrics` of seed s, arrays with the replicate b on axis 0
    (the same row weights for every seed). Returns arrays of the same shapes. One seed: itself.
    """
    S = len(per_seed)
    B = len(next(iter(per_seed[0].values())))
    pick = rng.integers(0, S, size=(B, S))                     # (B, S) seed indexes
    rows = np.arange(B)[:, None]
    return {k: np.stack([m[k] for m in per_seed])[pick, rows].mean(axis=1) for k in per_seed[0]}


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def paired_deltas(spark, method_preds, reference_preds, n_classes: int, *, pred_col: str = "pred",
                  replicates: int = DEFAULT_REPLICATES, seed: int = 0, label_col: str = "label",
                  id_col: str = "id") -> dict:
    """Method − reference on the same test rows: per-class F1 and recall deltas and macro F1 /
    balanced-accuracy deltas, each with a 95% paired stratified-bootstrap interval.

    ``method_preds`` / ``reference_preds``: one predictions table (a path or a DataFrame) per
    trained seed, or a single one. All are joined on ``id_col`` (they must hold the same rows and
    labels); each replicate weighs the same rows in every table, so the interval is that of the
    difference, not of two independent estimates. With several seeds the intervals are the
    two-level bootstrap's (module docstring): they cover the seeds as well as the test rows.
    """
    def read(t):
        return t if not isinstance(t, str) else spark.read.parquet(t)

    ms, rs = [read(t) for t in _as_list(method_preds)], [read(t) for t in _as_list(reference_preds)]
    cols = [f"_pm{i}" for i in range(len(ms))] + [f"_pr{j}" for j in range(len(rs))]
    joined = ms[0].select(F.col(id_col), F.col(label_col), F.col(pred_col).alias(cols[0]))
    for t, c in zip(ms[1:] + rs, cols[1:]):
        joined = joined.join(t.select(F.col(id_col), F.col(pred_col).alias(c)), [id_col])
    support = _support(joined, n_classes, label_col)
    counts = bootstrap_counts(joined, cols, n_classes, replicates=replicates, seed=seed, label_col=label_col,
                              id_col=id_col)
    rng = np.random.default_rng([int(seed), 0x5EED])
    a = seed_resampled([replicate_metrics(counts[c], support) for c in cols[:len(ms)]], rng)
    b = seed_resampled([replicate_metrics(counts[c], support) for c in cols[len(ms):]], rng)
    out = {"replicates": int(replicates), "seed": int(seed), "level": 0.95, "n_rows": int(support.sum()),
           "support": [int(v) for v in support], "seeds": {"method": len(ms), "reference": len(rs)},
           "covers": "seeds and test rows" if max(len(ms), len(rs)) > 1 else "test rows", "per_class": {}}
    for k in ("f1", "recall"):
        lo, hi = percentile_ci(a[k] - b[k])
        out["per_class"][f"{k}_delta_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
        for name, mm in (("method", a), ("reference", b)):
            lo, hi = percentile_ci(mm[k])
            out["per_class"][f"{k}_{name}_ci"] = [list(p) for p in zip(_nums(lo), _nums(hi))]
    for k in ("macro_f1", "balanced_accuracy"):
        lo, hi = percentile_ci(a[k] - b[k])
        out[f"{k}_delta_ci"] = [_nums(lo)[0], _nums(hi)[0]]
        for name, mm in (("method", a), ("reference", b)):
            lo, hi = percentile_ci(mm[k])
            out[f"{k}_{name}_ci"] = [_nums(lo)[0], _nums(hi)[0]]
    return out


def blocked_deltas(spark, pairs: Sequence[tuple], n_classes: int, *, replicates: int = DEFAULT_REPLICATES,
                   seed: int = 0, label_col: str = "label", id_col: str = "id") -> dict:
    """Method − reference over seeds that each have *their own* test rows (an experiment's trials:
    a seed draws its own split): 95% two-level bootstrap intervals of the macro F1 and balanced
    accuracy deltas.

    ``pairs``: one ``(method_preds, method_col, reference_preds, reference_col)`` per seed (paths or
    DataFrames; the columns name the decisions, e.g. ``pred`` or ``pred_adjusted``). Level 2 is the
    paired stratified bootstrap of each seed's test rows; level 1 draws seeds with replacement and
    averages their replicate deltas (:func:`seed_resampled`). Returns the mean delta over the seeds
    of each metric, its interval, and the number of seeds.
    """
    def read(t):
        return t if not isinstance(t, str) else spark.read.parquet(t)

    per_seed = []
    for m_preds, m_col, r_preds, r_col in pairs:
        joined = read(m_preds).select(F.col(id_col), F.col(label_col), F.col(m_col).alias("_pm")).join(
            read(r_preds).select(F.col(id_col), F.col(r_col).alias("_pr")), [id_col])
        support = _support(joined, n_classes, label_col)
        counts = bootstrap_counts(joined, ["_pm", "_pr"], n_classes, replicates=replicates, seed=seed,
                                  label_col=label_col, id_col=id_col)
        a, b = replicate_metrics(counts["_pm"], support), replicate_metrics(counts["_pr"], support)
        per_seed.append({k: a[k] - b[k] for k in ("macro_f1", "balanced_accuracy")})
    drawn = seed_resampled(per_seed, np.random.default_rng([int(seed), 0xB10C]))
    out = {"replicates": int(replicates), "seed": int(seed), "level": 0.95, "seeds": len(pairs),
           "covers": "seeds and test rows" if len(pairs) > 1 else "test rows"}
    for k, v in drawn.items():
        lo, hi = percentile_ci(v)
        out[f"{k}_delta_ci"] = [_nums(lo)[0], _nums(hi)[0]]
    return out
