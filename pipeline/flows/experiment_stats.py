"""Statistics of the experiment harness: summaries, Friedman test, post-hoc tests, plots, report.

The survey's closing complaint is that methods for class imbalance were never compared on the same
data, across imbalance levels, with repetitions. The experiment harness runs a grid of
methods × imbalance levels × seeds; this module turns its one-row-per-trial table into the
comparison, following Demšar (2006), "Statistical comparisons of classifiers over multiple data
sets", JMLR 7:1-30:

- :func:`summarize_trials` — mean, standard deviation (ddof=1), n and a Student-t 95% confidence
  interval of each metric per method and level;
- :func:`friedman_test` — the Friedman test across methods, blocks = (level, seed), with the
  Iman–Davenport F correction and each method's average rank (rank 1 = best);
- :func:`nemenyi` — the Nemenyi critical difference CD = q_α·sqrt(k(k+1)/(6N)) and the pairs of
  methods whose average ranks differ by at least CD;
- :func:`wilcoxon_holm` — pairwise Wilcoxon signed-rank tests over the blocks with Holm's
  step-down correction (:func:`holm`);
- :func:`plot_critical_difference`, :func:`plot_metric_vs_rho` — the usual figures;
- :func:`write_experiment_report` — ``results.csv``, ``summary.csv``, ``stats.json``,
  ``report.md`` and a self-contained ``report.html``.

Everything here is pure pandas/numpy/scipy/matplotlib (Agg, no global backend change) on a table
of size trials × metrics, so nothing depends on Spark or Ray. Degenerate inputs (one method, one
block, all values equal) give a result marked ``applicable: false`` with the reason, never a crash.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import math
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.errors import InputError

#: The metrics the experiment harness reports (column names of the trials table).
DEFAULT_METRICS = ["macro_f1", "g_mean", "balanced_accuracy", "macro_roc_auc", "macro_pr_auc",
                   "l5_f1", "rest_f1"]

#: Metrics for which a lower value is better (ranked the other way round). Everything else: higher.
LOWER_IS_BETTER = {"brier", "log_loss", "error", "loss"}


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------

def _require_columns(df: pd.DataFrame, cols: Iterable[str], what: str = "trials table") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def t_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, half_width, n)`` of a Student-t interval ``mean ± t_{(1+c)/2, n-1} · s/√n``.

    NaN values are ignored; with fewer than two values the half width is NaN (no spread known).
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), 1
    s = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * s / math.sqrt(n))
    return mean, half, n


BOUNDED_HINTS = ("f1", "accuracy", "auc", "recall", "precision", "g_mean", "specificity")
LOGIT_EPS = 1e-3   # values are clipped to [eps, 1 - eps] before the logit (a 0 or 1 would be infinite)


def is_bounded(metric: str) -> bool:
    """Whether a headline metric is a rate in [0, 1] (F1, accuracies, AUCs, recall, G-mean...)."""
    return any(h in metric.lower() for h in BOUNDED_HINTS)


def logit_t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` for a metric bounded in [0, 1]: the Student-t interval of
    logit(x) = ln(x / (1 − x)), mapped back by the logistic function.

    A t-interval on the raw scale over a few seeds can leave [0, 1] (two seeds: t₀.₉₇₅,₁ = 12.7, so
    [−0.35, 0.51] for values 0.05 and 0.11); on the logit scale the interval is as wide in
    evidence but always inside (0, 1), and asymmetric near the bounds as a rate's uncertainty is.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), 1
    z = np.log(np.clip(x, LOGIT_EPS, 1 - LOGIT_EPS) / (1 - np.clip(x, LOGIT_EPS, 1 - LOGIT_EPS)))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * z.std(ddof=1) / math.sqrt(n))
    lo, hi = 1 / (1 + math.exp(-(z.mean() - half))), 1 / (1 + math.exp(-(z.mean() + half)))
    return mean, float(min(lo, mean)), float(max(hi, mean)), n


def summarize_trials(df: pd.DataFrame, metrics: list[str], by: Sequence[str] = ("method", "level"),
                     confidence: float = 0.95) -> pd.DataFrame:
    """Per group of ``by`` and per metric: ``n, mean, std, ci_low, ci_high, ci_half``.

    One output row per (group, metric), in long form (columns ``*by, metric, n, mean, std,
    ci_low, ci_high, ci_half``). ``std`` uses ddof=1; the interval is Student t at ``confidence``
    (95% by default) with n-1 degrees of freedom — for a metric bounded in [0, 1]
    (:func:`is_bounded`) taken on the logit scale and mapped back (:func:`logit_t_interval`), so it
    stays inside [0, 1]; ``ci_half`` is then half its width. ``n`` counts the non-missing values only (a metric
    that is null for a trial — e.g. ROC AUC of a class absent from the test data — is left out of
    that group's figures, not counted as 0). Groups of one trial get NaN std and interval.
    """
    by = list(by)
    if len(df) == 0:
        raise InputError("trials table is empty: nothing to summarize")
    _require_columns(df, by + list(metrics))
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float)
            if is_bounded(m):
                mean, lo, hi, n = logit_t_interval(vals, confidence)
                half = (hi - lo) / 2
            else:
                mean, half, n = t_confidence_interval(vals, confidence)
                lo, hi = mean - half, mean + half
            std = float(np.nanstd(vals, ddof=1)) if n >= 2 else float("nan")
            rows.append({**dict(zip(by, key)), "metric": m, "n": int(n), "mean": mean, "std": std,
                         "ci_low": lo, "ci_high": hi, "ci_half": half})
    return pd.DataFrame(rows, columns=by + ["metric", "n", "mean", "std", "ci_low", "ci_high", "ci_half"])


# --------------------------------------------------------------------------------------------
# Friedman test with Iman–Davenport correction
# --------------------------------------------------------------------------------------------

def _block_table(df: pd.DataFrame, metric: str, block_cols: Sequence[str], method_col: str
                 ) -> pd.DataFrame:
    """Blocks × methods table of ``metric``; raises on duplicate (block, method) trials."""
    block_cols = list(block_cols)
    _require_columns(df, block_cols + [method_col, metric])
    dup = df.duplicated(subset=block_cols + [method_col], keep=False)
    if dup.any():
        first = df.loc[dup, block_cols + [method_col]].iloc[0].to_dict()
        raise InputError(f"trials table has {int(dup.sum())} rows sharing a (block, method), e.g. {first}: "
                         "each method must have one trial per block")
    vals = df[block_cols + [method_col]].copy()
    vals[metric] = pd.to_numeric(df[metric], errors="coerce")
    return vals.pivot(index=block_cols, columns=method_col, values=metric).sort_index(axis=1)


def average_ranks(table: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean over blocks (rows) of each method's (column's) rank; rank 1 = best, ties averaged."""
    t = np.asarray(table, dtype=float)
    r = stats.rankdata(-t if higher_is_better else t, method="average", axis=1)
    return r.mean(axis=0)


def friedman_statistic(table: np.ndarray) -> tuple[float, float]:
    """Friedman χ²_F of an N×k table (blocks × treatments) with the tie correction, and its p-value.

    χ²_F = [12/(N k (k+1)) Σ_j R_j² − 3 N (k+1)] / C,  R_j = rank sum of treatment j,
    C = 1 − Σ_blocks Σ_ties (t³ − t) / (N k (k² − 1))  (Friedman 1937; Demšar 2006 Eq. for χ²_F).
    p from the χ² distribution with k−1 degrees of freedom. C = 0 (every block all tied) → NaN.
    """
    t = np.asarray(table, dtype=float)
    n, k = t.shape
    ranks = stats.rankdata(t, method="average", axis=1)
    ties = 0.0
    for row in t:
        _, counts = np.unique(row, return_counts=True)
        ties += float(np.sum(counts.astype(float) ** 3 - counts))
    c = 1.0 - ties / (n * k * (k * k - 1))
    if c <= 1e-12:
        return float("nan"), float("nan")
    ssbn = float(np.sum(ranks.sum(axis=0) ** 2))
    chisq = (12.0 / (n * k * (k + 1)) * ssbn - 3.0 * n * (k + 1)) / c
    chisq = max(chisq, 0.0)
    return chisq, float(stats.chi2.sf(chisq, k - 1))


def iman_davenport(chisq: float, n_blocks: int, k: int) -> dict:
    """Iman–Davenport F_F = (N−1)χ²_F / (N(k−1) − χ²_F) ~ F(k−1, (k−1)(N−1)) (Demšar 2006)."""
    df1, df2 = k - 1, (k - 1) * (n_blocks - 1)
    denom = n_blocks * (k - 1) - chisq
    if not np.isfinite(chisq) or df2 <= 0:
        return {"statistic": None, "df1": df1, "df2": df2, "p_value": None}
    if denom <= 1e-12:
        # every block ranks the methods identically: F_F's denominator (the within-block rank
        # disagreement) is 0, so F is undefined rather than evidence; with few blocks Friedman's
        # exact-ish p stays the number to read
        return {"statistic": None, "df1": df1, "df2": df2, "p_value": None, "degenerate": True}
    f = (n_blocks - 1) * chisq / denom
    return {"statistic": float(f), "df1": df1, "df2": df2, "p_value": float(stats.f.sf(f, df1, df2))}


def friedman_test(df: pd.DataFrame, metric: str, block_cols: Sequence[str] = ("level", "seed"),
                  method_col: str = "method", higher_is_better: bool | None = None) -> dict:
    """Friedman test of ``metric`` across methods, one block per distinct ``block_cols`` value.

    Returns a dict with ``applicable`` (false with a ``reason`` when the test cannot be made: fewer
    than two methods, fewer than two complete blocks, or every block all tied), ``methods``,
    ``k``, ``n_blocks``, ``n_blocks_dropped`` (blocks lacking a value for some method are left out
    so that every block ranks every method), ``avg_ranks`` (method → average rank, 1 = best),
    ``statistic``/``p_value`` (χ²_F, see :func:`friedman_statistic`) and ``iman_davenport``
    (the less conservative F form Demšar recommends). ``higher_is_better`` defaults to true unless
    the metric is in :data:`LOWER_IS_BETTER`.
    """
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_BETTER
    table = _block_table(df, metric, block_cols, method_col)
    complete = table.dropna(axis=0, how="any")
    methods = [str(m) for m in table.columns]
    k, n = len(methods), len(complete)
    out: dict[str, Any] = {"metric": metric, "test": "friedman", "methods": methods, "k": k,
                           "n_blocks": n, "n_blocks_dropped": int(len(table) - n),
                           "block_cols": list(block_cols), "higher_is_better": bool(higher_is_better),
                           "avg_ranks": {}, "statistic": None, "p_value": None,
                           "iman_davenport": None, "applicable": False, "reason": None}
    if n >= 1 and k >= 1:
        out["avg_ranks"] = dict(zip(methods, map(float, average_ranks(complete.to_numpy(), higher_is_better))))
    if k < 2:
        out["reason"] = f"only {k} method(s): nothing to compare"
        return out
    if n < 2:
        out["reason"] = (f"only {n} complete block(s) of {list(block_cols)} "
                         f"({out['n_blocks_dropped']} incomplete dropped): at least 2 needed")
        return out
    chisq, p = friedman_statistic(complete.to_numpy())
    if not np.isfinite(chisq):
        out["reason"] = "every block has all methods tied (all values equal): no ranking to test"
        return out
    out.update(applicable=True, statistic=chisq, p_value=p, iman_davenport=iman_davenport(chisq, n, k))
    return out


# --------------------------------------------------------------------------------------------
# Post-hoc: Nemenyi critical difference
# --------------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_α of the Nemenyi test: the studentized range quantile q(1−α; k, ∞) divided by √2.

    Reproduces Demšar (2006) Table 5a, e.g. α=0.05: k=2 → 1.960, 3 → 2.343, 5 → 2.728, 10 → 3.164.
    """
    if k < 2:
        raise InputError(f"the Nemenyi test needs at least 2 methods, got {k}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def cd_cliques(avg_ranks: dict, cd: float) -> list[list[str]]:
    """Maximal groups of methods whose average ranks all lie within CD of each other (the bars of
    a CD diagram), each listed best rank first; single methods are not groups."""
    items = sorted(avg_ranks.items(), key=lambda kv: kv[1])
    names, r = [k for k, _ in items], [v for _, v in items]
    groups, last_j = [], 0
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and j > last_j:
            groups.append(names[i:j + 1])
            last_j = j
    return groups


def nemenyi(avg_ranks: dict, n_blocks: int, alpha: float = 0.05) -> dict:
    """Nemenyi post-hoc test: CD = q_α · sqrt(k(k+1) / (6N)) (Demšar 2006, Sec. 3.2.2).

    Two methods differ significantly when their average ranks differ by at least CD. Returns
    ``cd``, ``q_alpha``, ``alpha``, ``k``, ``n_blocks``, ``avg_ranks``, ``significant_pairs``
    (list of ``{a, b, rank_diff}``, a the better-ranked) and ``groups`` (:func:`cd_cliques`).
    """
    k = len(avg_ranks)
    if n_blocks < 1:
        raise InputError(f"the Nemenyi test needs at least one block, got {n_blocks}")
    q = nemenyi_q(k, alpha)
    cd = q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))
    pairs = []
    for a, b in itertools.combinations(sorted(avg_ranks, key=avg_ranks.get), 2):
        diff = float(avg_ranks[b] - avg_ranks[a])
        if diff >= cd:
            pairs.append({"a": a, "b": b, "rank_diff": diff})
    return {"test": "nemenyi", "alpha": alpha, "k": k, "n_blocks": int(n_blocks), "q_alpha": q,
            "cd": cd, "avg_ranks": dict(avg_ranks), "significant_pairs": pairs,
            "groups": cd_cliques(avg_ranks, cd)}


# --------------------------------------------------------------------------------------------
# Post-hoc: pairwise Wilcoxon signed-rank with Holm's correction
# --------------------------------------------------------------------------------------------

def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's (1979) step-down correction: adjusted p-values and rejections, in input order.

    Sort the m p-values ascending p_(1) ≤ … ≤ p_(m); the adjusted value is
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)); reject H_(i) iff p̃_(i) ≤ α (equivalently: reject
    while p_(i) ≤ α/(m − i + 1), stop at the first that is not). NaN p-values (tests that could not
    be made) are not counted in m and get NaN / False.
    """
    p = np.asarray(p_values, dtype=float)
    adj = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="mergesort")]
        running = 0.0
        for i, idx in enumerate(order):
            running = max(running, min(1.0, (m - i) * p[idx]))
            adj[idx] = running
    reject = np.zeros(p.shape, dtype=bool)
    reject[ok] = adj[ok] <= alpha
    return adj, reject


def wilcoxon_holm(df: pd.DataFrame, metric: str, block_cols: Sequence[str] = ("level", "seed"),
                  method_col: str = "method", *, alpha: float = 0.05, zero_method: str = "wilcox",
                  higher_is_better: bool | None = None) -> list[dict]:
    """Pairwise two-sided Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``) with Holm's correction.

    Each pair of methods is compared over the blocks where both have a value (paired by
    ``block_cols``). One dict per pair: ``a``, ``b``, ``n`` (paired blocks), ``median_diff``
    (median of a − b), ``better`` (the method with the better mean, by ``higher_is_better``),
    ``statistic``, ``p_value``, ``p_holm``, ``reject`` and ``note``. A pair whose differences are
    all zero gets p = 1 (no evidence of a difference); a pair with no paired block gets NaN and is
    left out of Holm's m.
    """
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_BETTER
    table = _block_table(df, metric, block_cols, method_col)
    results = []
    for a, b in itertools.combinations(list(table.columns), 2):
        pair = table[[a, b]].dropna()
        d = (pair[a] - pair[b]).to_numpy(dtype=float)
        res = {"a": str(a), "b": str(b), "n": int(d.size), "median_diff": None, "better": None,
               "statistic": None, "p_value": float("nan"), "note": None}
        if d.size == 0:
            res["note"] = "no block with both methods"
        else:
            res["median_diff"] = float(np.median(d))
            mean_d = float(d.mean())
            if mean_d != 0:
                res["better"] = str(a) if (mean_d > 0) == bool(higher_is_better) else str(b)
            if np.all(d == 0):
                res.update(p_value=1.0, note="all differences are zero")
            else:
                w = stats.wilcoxon(pair[a].to_numpy(float), pair[b].to_numpy(float),
                                   zero_method=zero_method, alternative="two-sided")
                res.update(statistic=float(w.statistic), p_value=float(w.pvalue))
        results.append(res)
    adj, rej = holm([r["p_value"] for r in results], alpha)
    for r, pa, rj in zip(results, adj, rej):
        r["p_holm"] = None if np.isnan(pa) else float(pa)
        r["reject"] = bool(rj)
        if np.isnan(r["p_value"]):
            r["p_value"] = None
    return results


# --------------------------------------------------------------------------------------------
# Plots (matplotlib Figure + Agg canvas: no global backend or pyplot state)
# --------------------------------------------------------------------------------------------

def _new_figure(w: float, h: float):
    # deferred: matplotlib is slow to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def plot_critical_difference(avg_ranks: dict, cd: float, path: str | os.PathLike,
                             title: str | None = None) -> Path:
    """Demšar's critical-difference diagram: a rank axis (1 = best, on the left), the better half of
    the methods labelled on the left and the rest on the right, a bar of length CD, and thick bars
    joining groups of methods whose ranks differ by less than CD (not significantly different)."""
    if not avg_ranks:
        raise InputError("no methods to plot")
    items = sorted(avg_ranks.items(), key=lambda kv: kv[1])
    k = len(items)
    lo, hi = 1, max(k, int(math.ceil(max(v for _, v in items))))
    groups = cd_cliques(avg_ranks, cd) if cd is not None and np.isfinite(cd) else []
    n_left = (k + 1) // 2
    line_h = 0.35
    height = 1.2 + 0.15 * len(groups) + line_h * max(n_left, k - n_left) + 0.2
    fig = _new_figure(7.0, height)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    span = hi - lo if hi > lo else 1
    x0, x1 = 0.25, 0.75  # axis extent in figure fractions

    def xpos(rank: float) -> float:
        return x0 + (rank - lo) / span * (x1 - x0)

    ax.set_xlim(0, 1)
    ax.set_ylim(height, 0)  # y grows downwards (inches from the top)
    y_axis = 0.9
    ax.plot([x0, x1], [y_axis, y_axis], color="k", lw=1)
    for t in range(lo, hi + 1):
        ax.plot([xpos(t)] * 2, [y_axis, y_axis - 0.08], color="k", lw=1)
        ax.text(xpos(t), y_axis - 0.12, str(t), ha="center", va="bottom", fontsize=9)
    if title:
        ax.text(0.5, 0.05, title, ha="center", va="top", fontsize=10, fontweight="bold")
    if groups or (cd is not None and np.isfinite(cd)):
        cx0 = xpos(lo)
        cx1 = cx0 + cd / span * (x1 - x0)
        ax.plot([cx0, cx1], [0.45, 0.45], color="k", lw=1.5)
        for xx in (cx0, cx1):
            ax.plot([xx, xx], [0.40, 0.50], color="k", lw=1)
        ax.text((cx0 + cx1) / 2, 0.38, f"CD = {cd:.3f}", ha="center", va="bottom", fontsize=9)
    # cliques: thick bars just below the axis
    for g_i, g in enumerate(groups):
        y = y_axis + 0.18 + 0.15 * g_i
        ax.plot([xpos(avg_ranks[g[0]]) - 0.005, xpos(avg_ranks[g[-1]]) + 0.005], [y, y], color="k", lw=3,
                solid_capstyle="round")
    y_start = y_axis + 0.3 + 0.15 * len(groups)
    for i, (name, r) in enumerate(items):
        if i < n_left:
            y = y_start + line_h * i
            ax.plot([xpos(r), xpos(r), x0 - 0.03], [y_axis, y, y], color="k", lw=0.8)
            ax.text(x0 - 0.04, y, f"{name} ({r:.2f})", ha="right", va="center", fontsize=9)
        else:
            y = y_start + line_h * (k - 1 - i)
            ax.plot([xpos(r), xpos(r), x1 + 0.03], [y_axis, y, y], color="k", lw=0.8)
            ax.text(x1 + 0.04, y, f"({r:.2f}) {name}", ha="left", va="center", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _numeric_levels(levels: Iterable) -> bool:
    try:
        vals = [float(v) for v in levels]
    except (TypeError, ValueError):
        return False
    return all(np.isfinite(v) and v > 0 for v in vals)


def plot_metric_vs_rho(summary_df: pd.DataFrame, metric: str, path: str | os.PathLike,
                       level_col: str = "level", method_col: str = "method") -> Path:
    """Each method's mean ± confidence interval of ``metric`` against the imbalance level ρ.

    ``summary_df`` is :func:`summarize_trials` output. The x axis is logarithmic when every level is
    a positive number (ρ), otherwise the levels are placed as categories in sorted order.
    """
    _require_columns(summary_df, [level_col, method_col, "metric", "mean", "ci_half"], "summary table")
    s = summary_df[summary_df["metric"] == metric]
    if s.empty:
        raise InputError(f"summary table has no rows for metric {metric!r}")
    levels = sorted(s[level_col].unique(), key=lambda v: (str(type(v)), v))
    numeric = _numeric_levels(levels)
    pos = {lv: (float(lv) if numeric else i) for i, lv in enumerate(levels)}
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for method, g in s.groupby(method_col, sort=True):
        g = g.assign(_x=g[level_col].map(pos)).sort_values("_x")
        mean = g["mean"].to_numpy(float)
        if "ci_low" in g:   # asymmetric: bounded metrics have logit-scale intervals
            lo, hi = mean - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - mean
        else:
            lo = hi = g["ci_half"].to_numpy(dtype=float)
        err = np.vstack([np.where(np.isnan(lo), 0.0, np.maximum(lo, 0)), np.where(np.isnan(hi), 0.0, np.maximum(hi, 0))])
        ax.errorbar(g["_x"].to_numpy(float), mean,
                    yerr=err, marker="o", capsize=3, label=str(method))
    if numeric:
        ax.set_xscale("log")
        ax.set_xticks([pos[lv] for lv in levels])
        ax.set_xticklabels([f"{float(lv):g}" for lv in levels])
        ax.minorticks_off()
        ax.set_xlabel("imbalance level ρ (log scale)")
    else:
        ax.set_xticks(list(range(len(levels))))
        ax.set_xticklabels([str(lv) for lv in levels])
        ax.set_xlabel("imbalance level")
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    if is_bounded(metric):
        ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf floats → None (strict JSON), numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—" if x is None or np.isnan(x) else ("∞" if x > 0 else "−∞")
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _level_label(v: Any) -> str:
    try:
        return f"ρ={float(v):g}"
    except (TypeError, ValueError):
        return str(v)


def _stats_for_metric(trials: pd.DataFrame, metric: str, block_cols: Sequence[str], method_col: str,
                      alpha: float) -> dict:
    fr = friedman_test(trials, metric, block_cols, method_col)
    out: dict[str, Any] = {"friedman": fr, "nemenyi": None, "wilcoxon_holm": []}
    if fr["k"] >= 2 and fr["n_blocks"] >= 1:
        out["nemenyi"] = nemenyi(fr["avg_ranks"], fr["n_blocks"], alpha)
    if fr["k"] >= 2:
        out["wilcoxon_holm"] = wilcoxon_holm(trials, metric, block_cols, method_col, alpha=alpha)
    return out


def _blocks_to_md(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            header, rows = b[1], b[2]
            esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines.append("| " + " | ".join(map(esc, header)) + " |")
            lines.append("|" + "|".join(["---"] * len(header)) + "|")
            lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{b[2]}]({b[1].name})", ""]
    return "\n".join(lines)


def _blocks_to_html(blocks: list[tuple], title: str) -> str:
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
             "img{max-width:100%}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _deltas_blocks(deltas: list[dict]) -> list[tuple]:
    """The report's table of method − reference per level, with the two-level intervals."""
    def cell(d, k):
        lo, hi = d[f"{k}_delta_ci"]
        return f"{d[f'{k}_delta']:+.4f} [{_fmt(lo)}, {_fmt(hi)}]"

    def verdict(d):
        lo, hi = d["macro_f1_delta_ci"]
        return "better" if lo is not None and lo > 0 else "worse" if hi is not None and hi < 0 else "no clear change"

    ref = deltas[0]["reference"]
    text = (f"Each method against {ref} on the same level, on raw argmax decisions: the mean difference over the seeds "
            "and its 95% two-level bootstrap interval (seeds drawn with replacement, then each seed's test rows "
            "resampled, paired across the two models), which covers the training and split randomness of the seeds "
            "as well as the test sample (with one seed: the test rows only). Better / worse: the macro-F1 interval "
            "excludes 0.")
    rows = [[_level_label(d["level"]), d["method"], len(d["seeds"]), cell(d, "macro_f1"), cell(d, "balanced_accuracy"),
             verdict(d)] for d in deltas]
    return [("h2", f"Difference to {ref} per level (two-level bootstrap)"), ("p", text),
            ("table", ["level", "method", "seeds", "Δ macro F1 [95% CI]", "Δ balanced accuracy [95% CI]",
                       "macro F1"], rows)]


def paired_differences(df: pd.DataFrame, metric: str, reference: str, block_cols: Sequence[str],
                       method_col: str = "method", confidence: float = 0.95) -> list[dict]:
    """Each method − ``reference`` on ``metric``, paired within blocks (level, seed): the mean
    difference over the blocks both have, with its Student-t interval over those blocks. When every
    seed draws its own data and split (as the experiment's shared data stages do), the spread of
    the blocks covers the data, the split, training and the test rows at once."""
    cols = list(block_cols)
    ref = df[df[method_col].astype(str) == reference].set_index(cols)[metric]
    out = []
    for method in dict.fromkeys(df[method_col].astype(str)):
        if method == reference:
            continue
        mine = df[df[method_col].astype(str) == method].set_index(cols)[metric]
        diff = (mine - ref).dropna()
        mean, half, n = t_confidence_interval(diff.to_numpy(), confidence)
        out.append({"method": method, "reference": reference, "metric": metric, "n": int(n), "mean": mean,
                    "ci": [mean - half, mean + half] if np.isfinite(half) else [None, None]})
    return out


def _cost_blocks(df: pd.DataFrame, method_col: str) -> list[tuple]:
    """A table of what each method's training cost: rows read, epochs run, training-stage seconds."""
    cols = [c for c in ("train_rows_seen", "epochs_run", "train_seconds", "trial_seconds") if c in df]
    if "train_rows_seen" not in cols:
        return []
    means = df.groupby(df[method_col].astype(str))[cols].mean()
    rows = [[m] + [f"{means.loc[m, c]:,.0f}" if c == "train_rows_seen" else _fmt(means.loc[m, c], 1) for c in cols]
            for m in means.index]
    return [("h2", "Training cost (mean per trial)"),
            ("p", "Rows the training loop read over all its epochs, the epochs it ran (early stopping may end it "
                  "before train.epochs), and the seconds of the training stage and of the whole trial."),
            ("table", ["method"] + cols, rows)]


def _paired_blocks(df: pd.DataFrame, metrics: list[str], reference: str, block_cols: Sequence[str],
                   method_col: str) -> tuple[list[tuple], list[dict]]:
    found = [d for m in metrics for d in paired_differences(df, m, reference, block_cols, method_col)]
    if not found:
        return [], []
    rows = [[d["metric"], d["method"], d["n"], f"{d['mean']:+.4f}",
             "n/a" if d["ci"][0] is None else f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]",
             "n/a" if d["ci"][0] is None else "better" if d["ci"][0] > 0 else "worse" if d["ci"][1] < 0
             else "no clear change"] for d in found]
    text = (f"Each method − {reference} within each block ({', '.join(block_cols)}): the mean difference and its "
            "95% Student-t interval over the blocks. Better / worse: the interval excludes 0.")
    return [("h2", f"Paired difference to {reference}"), ("p", text),
            ("table", ["metric", "method", "blocks", "mean difference", "95% CI", "verdict"], rows)], found


def write_experiment_report(trials_df: pd.DataFrame, out_dir: str | os.PathLike, *,
                            metrics: list[str] | None = None, by: Sequence[str] = ("method", "level"),
                            seed_col: str = "seed", alpha: float = 0.05,
                            title: str = "Experiment report", deltas: list[dict] | None = None,
                            reference: str | None = None) -> dict:
    """Write the experiment's tables, tests, plots and report into ``out_dir``.

    Files: ``results.csv`` (the trials as given), ``summary.csv`` (:func:`summarize_trials`),
    ``stats.json`` (per metric: Friedman with Iman–Davenport, Nemenyi, Wilcoxon–Holm), one PNG per
    metric against ρ and one CD diagram per metric where the Friedman test applies, ``report.md``
    (PNGs linked beside it) and ``report.html`` (self-contained: PNGs inlined as base64).
    ``metrics=None`` reports every metric of :data:`DEFAULT_METRICS` present in the table; named
    metrics must be present. Blocks for the tests are (level, seed). Files are written in a temporary
    directory and moved into ``out_dir`` at the end (``report.html`` last), so a crash leaves no
    half-written report; other files in ``out_dir`` are left alone. ``deltas``: each method − the
    reference on each level with two-level bootstrap intervals (:func:`pipeline.flows.experiment.level_deltas`),
    written to ``stats.json`` ``two_level_deltas`` and tabled in the report. ``reference`` (default:
    the first method by name): the method every other is paired with (:func:`paired_differences`,
    ``stats.json`` ``paired_differences``). A training-cost table is added when the trials have
    ``train_rows_seen``. Returns ``{"paths": {...},
    "stats": ..., "summary": DataFrame}``.
    """
    by = list(by)
    method_col, level_cols = by[0], by[1:]
    metrics = _checked_metrics(trials_df, metrics, by + [seed_col])
    block_cols = level_cols + [seed_col]
    summary = summarize_trials(trials_df, metrics, by)
    methods = sorted(map(str, trials_df[method_col].unique()))
    all_stats: dict[str, Any] = {
        "alpha": alpha, "block_cols": block_cols, "method_col": method_col, "n_trials": int(len(trials_df)),
        "methods": methods,
        "metrics": {m: _stats_for_metric(trials_df, m, block_cols, method_col, alpha) for m in metrics},
        "two_level_deltas": deltas or []}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".report.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        blocks = [("h1", title), ("p", _intro_text(trials_df, methods, level_cols, seed_col, block_cols, alpha))]
        if deltas:
            blocks += _deltas_blocks(deltas)
        paired, all_stats["paired_differences"] = _paired_blocks(trials_df, metrics, reference or methods[0],
                                                                 block_cols, method_col)
        blocks += paired + _cost_blocks(trials_df, method_col) + _rank_blocks(all_stats, metrics, methods)
        levels = sorted(trials_df[level_cols[0]].unique(), key=lambda v: (str(type(v)), v)) if level_cols else []
        for m in metrics:
            blocks += _metric_blocks(m, summary[summary["metric"] == m], all_stats["metrics"][m], methods=methods,
                                     levels=levels, method_col=method_col, level_cols=level_cols, alpha=alpha, tmp=tmp)
        paths = _write_report_files(trials_df, summary, all_stats, blocks, title=title, tmp=tmp, out=out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"paths": paths, "stats": _clean(all_stats), "summary": summary}


def _checked_metrics(trials_df: pd.DataFrame, metrics: list[str] | None, cols: list[str]) -> list[str]:
    """The metrics to report (default: those of :data:`DEFAULT_METRICS` the table has), after checking
    that the table has rows and every column named."""
    if len(trials_df) == 0:
        raise InputError("trials table is empty: no trial finished, nothing to report")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in trials_df.columns]
        if not metrics:
            raise InputError(f"trials table has none of the metrics {DEFAULT_METRICS}")
    _require_columns(trials_df, cols + list(metrics))
    return list(metrics)


def _intro_text(trials_df: pd.DataFrame, methods: list[str], level_cols: list[str], seed_col: str,
                block_cols: list[str], alpha: float) -> str:
    levels = trials_df[level_cols[0]].unique() if level_cols else []
    seeds = trials_df[seed_col].unique()
    return (f"{len(trials_df)} trials: {len(methods)} method(s) ({', '.join(methods)}) × "
            f"{len(levels)} level(s) × {len(seeds)} seed(s). Cells are mean ± std (ddof=1) "
            f"with the 95% Student-t confidence interval and the number of trials n. "
            f"Tests: Friedman across methods with blocks = ({', '.join(block_cols)}), "
            f"Iman–Davenport F, Nemenyi critical difference and pairwise Wilcoxon "
            f"signed-rank with Holm's correction, all at α = {alpha}.")


def _rank_blocks(all_stats: dict, metrics: list[str], methods: list[str]) -> list[tuple]:
    rows = []
    for m in metrics:
        fr = all_stats["metrics"][m]["friedman"]
        rows.append([m] + [_fmt(fr["avg_ranks"].get(meth), 2) for meth in methods]
                    + [_fmt_p(fr["p_value"]) if fr["applicable"] else "n/a"])
    return [("h2", "Average ranks (1 = best) and Friedman p-value"),
            ("table", ["metric"] + methods + ["Friedman p"], rows)]


def _summary_cell(s: pd.DataFrame, method_col: str, level_col: str, meth: str, lv: Any) -> str:
    sel = s[(s[method_col].astype(str) == meth) & (s[level_col] == lv)]
    if sel.empty or sel["n"].iloc[0] == 0:
        return "—"
    r = sel.iloc[0]
    cell = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"
    if np.isfinite(r["ci_half"]):
        cell += f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
    return cell + f" (n={int(r['n'])})"


def _friedman_text(fr: dict) -> str:
    idv = fr["iman_davenport"]
    if idv.get("degenerate"):
        idv_text = (f"Iman–Davenport F not computed: all {fr['n_blocks']} blocks rank the methods in "
                    "the same order, so the within-block disagreement it divides by is 0 (F would "
                    "be infinite). That agreement is all the data shows; with so few blocks it is "
                    "weak evidence, and the Friedman p above is the one to read.")
    else:
        idv_text = (f"Iman–Davenport F = {_fmt(idv['statistic'], 3)} ({idv['df1']}, {idv['df2']}), "
                    f"p = {_fmt_p(idv['p_value'])}.")
    return (f"Friedman χ²_F = {_fmt(fr['statistic'], 3)} (k = {fr['k']}, N = {fr['n_blocks']} blocks"
            + (f", {fr['n_blocks_dropped']} incomplete dropped" if fr['n_blocks_dropped'] else "")
            + f"), p = {_fmt_p(fr['p_value'])}; " + idv_text)


def _metric_blocks(m: str, s: pd.DataFrame, st: dict, *, methods: list[str], levels: list, method_col: str,
                   level_cols: list[str], alpha: float, tmp: Path) -> list[tuple]:
    """One metric's section: the summary table, its plot against ρ, Friedman, Nemenyi with the CD
    diagram, and the Wilcoxon–Holm pairs (PNGs are written into ``tmp``)."""
    rows = [[meth] + [_summary_cell(s, method_col, level_cols[0], meth, lv) for lv in levels] for meth in methods]
    blocks: list[tuple] = [("h2", m), ("table", ["method"] + [_level_label(lv) for lv in levels], rows)]
    if level_cols:
        png = tmp / f"{m}_vs_rho.png"
        plot_metric_vs_rho(s, m, png, level_col=level_cols[0], method_col=method_col)
        blocks.append(("img", png, f"{m} against imbalance level"))
    fr = st["friedman"]
    if not fr["applicable"]:
        blocks.append(("p", f"Friedman test not applicable: {fr['reason']}."))
    else:
        blocks.append(("p", _friedman_text(fr)))
        ne = st["nemenyi"]
        sig = ", ".join(f"{p['a']} > {p['b']} (Δrank {p['rank_diff']:.2f})" for p in ne["significant_pairs"])
        blocks.append(("p", f"Nemenyi: q_α = {ne['q_alpha']:.3f}, CD = {ne['cd']:.3f}; "
                            f"significantly different pairs: {sig or 'none'}."))
        png = tmp / f"cd_{m}.png"
        plot_critical_difference(fr["avg_ranks"], ne["cd"], png, title=f"{m}: critical difference (Nemenyi, α={alpha})")
        blocks.append(("img", png, f"critical-difference diagram for {m}"))
    if st["wilcoxon_holm"]:
        blocks.append(("table", ["pair", "n", "median diff", "better", "p", "p (Holm)", "reject"],
                       [[f"{w['a']} vs {w['b']}", w["n"], _fmt(w["median_diff"]), w["better"] or "—",
                         _fmt_p(w["p_value"]), _fmt_p(w["p_holm"]),
                         ("yes" if w["reject"] else "no") + (f" ({w['note']})" if w["note"] else "")]
                        for w in st["wilcoxon_holm"]]))
    return blocks


def _write_report_files(trials_df: pd.DataFrame, summary: pd.DataFrame, all_stats: dict, blocks: list[tuple], *,
                        title: str, tmp: Path, out: Path) -> dict[str, str]:
    """Write the tables, stats and both reports into ``tmp``, then move them into ``out``
    (``report.html`` last); returns ``{file name: path}``."""
    trials_df.to_csv(tmp / "results.csv", index=False)
    summary.to_csv(tmp / "summary.csv", index=False)
    (tmp / "stats.json").write_text(json.dumps(_clean(all_stats), indent=2, allow_nan=False) + "\n")
    (tmp / "report.md").write_text(_blocks_to_md(blocks) + "\n")
    (tmp / "report.html").write_text(_blocks_to_html(blocks, title))
    paths = {}
    for name in sorted(p.name for p in tmp.iterdir() if p.name != "report.html") + ["report.html"]:
        os.replace(tmp / name, out / name)
        paths[name] = str(out / name)
    return paths


__all__ = ["DEFAULT_METRICS", "summarize_trials", "t_confidence_interval", "friedman_test",
           "friedman_statistic", "iman_davenport", "average_ranks", "nemenyi", "nemenyi_q", "cd_cliques",
           "holm", "wilcoxon_holm", "plot_critical_difference", "plot_metric_vs_rho",
           "paired_differences", "write_experiment_report"]
