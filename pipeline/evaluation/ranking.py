"""Pass 2 of the evaluate stage in Spark: exact one-vs-rest ROC AUC and average precision at scale.

1. **Groups**: the driver cuts each class's score histogram (from :mod:`pipeline.evaluation.scan`),
   walking from the highest score down, into contiguous *groups* of at most ``target_group_rows`` rows
   (:func:`pipeline.evaluation.metric_math.plan_groups`). Because the buckets are monotone in the
   score and their exact (pos, neg) totals are known, every group knows the number of positives and
   negatives of its class that score *strictly above* it. A class with 3.4M distinct scores is
   therefore split over many tasks (no window over a whole class in one task), and tiny classes cost
   one small group.
2. **Rank** (``mapInArrow`` + ``groupBy(group).applyInPandas``): every partition collapses its rows to
   distinct ``(class, score)`` pairs with positive/negative counts (this removes ties before the
   shuffle), the pairs are shuffled by group — packed as raw arrays, one shuffle row per group and
   batch rather than one per pair — and each group sorts its distinct scores descending and adds its
   exact contribution (:func:`pipeline.evaluation.metric_math.group_contributions`).

Both sums have as their only non-local inputs the offsets, so the result is exact whatever the
partitioning. Only one row per group (and ≤ ~200 PR-curve points of a few rare classes, for the
report) comes back to the driver.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.evaluation.binary import combine, group_partials
from pipeline.evaluation.binary_bootstrap import binary_intervals, group_segments, join_segments
from pipeline.evaluation.metric_math import (CURVE_POINTS, BinarySpec, dedupe_pairs, group_contributions,
                                             plan_groups, score_bucket, threshold_metric)
from pipeline.evaluation.scan import Loaded, Scan, arrow_probs, load_predictions, scan_predictions

log = logging.getLogger(__name__)

_DEDUP_FLUSH_ROWS = 2_000_000

_RANK_PAIRS_SCHEMA = "g int, score binary, pos binary, neg binary"


def _pack_runs(g: np.ndarray, s: np.ndarray, p: np.ndarray, q: np.ndarray):
    """One Arrow row per run of equal group ``g``: the run's scores (float64) and positive /
    negative counts (int64) as raw little-endian bytes.

    The (score, pos, neg) pairs are sorted by (class, score) and a group is a contiguous score
    range of one class, so a partition sends about one row per group through the shuffle
    instead of one row per pair — millions of rows would otherwise each cross the JVM.
    """
    starts = np.concatenate([[0], np.flatnonzero(np.diff(g)) + 1])
    offsets = pa.py_buffer((np.append(starts, len(g)) * 8).astype(np.int32))   # ≤ _DEDUP_FLUSH_ROWS·2 pairs
    cols = {"g": pa.array(g[starts].astype(np.int32))}
    for name, arr in (("score", s.astype("<f8")), ("pos", p.astype("<i8")), ("neg", q.astype("<i8"))):
        cols[name] = pa.Array.from_buffers(pa.binary(), len(starts), [None, offsets, pa.py_buffer(arr)])
    return pa.RecordBatch.from_pydict(cols)


def _unpack(col, dtype) -> np.ndarray:
    """Concatenate the raw arrays of one packed column (see :func:`_pack_runs`)."""
    return np.concatenate([np.frombuffer(b, dtype=dtype) for b in col]) if len(col) else np.zeros(0, dtype)


def _rank_map_fn(classes: np.ndarray, b2g: np.ndarray):
    """Per partition: distinct (group, score) pairs with positive / negative counts, packed per group."""

    def fn(batches: Iterator) -> Iterator:
        buf: list = []
        held = 0
        m = len(classes)

        def emit(parts):
            c, s, p, t = dedupe_pairs(*[np.concatenate([x[i] for x in parts]) for i in range(4)])
            g = b2g[classes[c], score_bucket(s)]
            return c, s, p, t, _pack_runs(g, s, p, t - p)

        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            probs, err = arrow_probs(batch.column("probs"), int(b2g.shape[0]))
            if err:  # validated in the scan pass; a changed table between passes is a bug
                raise RuntimeError(err)
            S = np.ascontiguousarray(probs[:, classes].T) + 0.0          # (m, n)
            order = np.argsort(S, axis=1)
            S = np.take_along_axis(S, order, axis=1)
            pos = (labels[order] == classes[:, None]).ravel().astype(np.int64)
            new = np.ones(S.shape, bool)
            new[:, 1:] = S[:, 1:] != S[:, :-1]
            starts = np.flatnonzero(new.ravel())
            tot = np.diff(np.append(starts, m * n))
            part = (starts // n, S.ravel()[starts], np.add.reduceat(pos, starts), tot)
            if len(starts) > m * n // 2:
                # mostly distinct scores (a model's softmax): merging them with other batches would
                # not shrink them, so the batch goes out as it is, already sorted by (class, score)
                yield _pack_runs(b2g[classes[part[0]], score_bucket(part[1])], part[1], part[2], part[3] - part[2])
                continue
            buf.append(part)
            held += len(starts)
            if held > _DEDUP_FLUSH_ROWS:
                c, s, p, t, rb = emit(buf)
                if len(c) > _DEDUP_FLUSH_ROWS // 2:   # ties do not shrink it further: ship it
                    yield rb
                    buf, held = [], 0
                else:
                    buf, held = [(c, s, p, t)], len(c)
        if buf:
            yield emit(buf)[-1]

    return fn


_RANK_SCHEMA = "kind string, g long, cls long, auc2 long, ap double, x double, y double, t long"


_BINARY_KINDS = ("rap", "par", "patk")


def _rank_group_fn(groups: list, curve: set, tune: Optional[str], points: int,
                   binary: Optional[BinarySpec] = None):
    """Per group: exact AUC/AP contributions, thinned PR-curve points, best tuned threshold, and
    for the positive class of two-class data its share of the rare-event metrics."""
    def fn(pdf: "pd.DataFrame") -> "pd.DataFrame":
        g = int(pdf["g"].iloc[0])
        c, pos_above, neg_above, n_pos, n_neg = groups[g]
        s, p, q, tp, fp, auc2, ap = group_contributions(
            _unpack(pdf["score"], "<f8"), _unpack(pdf["pos"], "<i8"), _unpack(pdf["neg"], "<i8"),
            pos_above, neg_above)
        rows = [("sum", g, c, auc2, ap, float("nan"), float("nan"), 0)]
        if c in curve and n_pos > 0:
            hit = p > 0
            lvl_now = (tp * points) // n_pos
            lvl_before = ((tp - p) * points) // n_pos
            keep = np.flatnonzero(hit & (lvl_now > lvl_before))
            for i in keep:
                rows.append(("pt", g, c, 0, 0.0, float(tp[i]) / n_pos, float(tp[i]) / float(tp[i] + fp[i]),
                             int(tp[i])))
        if binary is not None and c == binary.positive:
            part = group_partials(tp, fp, pos_above + neg_above, n_pos, precision_levels=binary.precision_levels,
                                  recall_levels=binary.recall_levels, alert_m=binary.alert_m)
            for kind in _BINARY_KINDS:
                rows += [(kind, g, c, 0, 0.0, v, float("nan"), i) for i, v in enumerate(part[kind]) if v is not None]
            # the group's segments, for the bootstrap (pipeline.evaluation.binary_bootstrap): one row per
            # distinct positive score (t = positives, auc2 = tied negatives, ap = negatives above), then its tail
            sp, st, sb, tail = group_segments(p, q)
            rows += [("seg", g, c, int(st[i]), float(sb[i]), float(i), 0.0, int(sp[i])) for i in range(len(sp))]
            rows.append(("tail", g, c, tail, 0.0, float("inf"), 0.0, 0))
        if tune is not None:
            vals = threshold_metric(tune, tp, fp, n_pos, n_neg)
            i = int(np.argmax(vals))           # first maximum = the largest threshold
            rows.append(("best", g, c, 0, 0.0, float(vals[i]), float(s[i]), int(tp[i])))
        return pd.DataFrame(rows, columns=["kind", "g", "cls", "auc2", "ap", "x", "y", "t"])

    return fn


def default_group_rows(spark, n_pairs: int) -> int:
    """Rows per group: ~4 groups per core, between 50k and 2M rows (bounded pandas memory)."""
    cores = max(1, int(spark.sparkContext.defaultParallelism))
    return int(min(2_000_000, max(50_000, n_pairs // (4 * cores))))


@dataclass
class Ranking:
    """What the rank pass found: per class ROC AUC and AP (None where undefined), thinned PR curves
    ``{c: {"recall": [...], "precision": [...]}}``, the best tuned ``(metric, threshold)`` and, for
    two-class data, the rare-event metrics of :func:`pipeline.evaluation.binary.combine` with their
    bootstrap ``intervals``."""
    roc_auc: dict = field(default_factory=dict)
    pr_auc: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    best: Optional[tuple] = None
    binary: Optional[dict] = None


def ranking_stats(spark, loaded: Loaded, scan: Scan, classes: Sequence[int], *,
                  curve_classes: Sequence[int] = (), tune: Optional[str] = None,
                  target_group_rows: Optional[int] = None, points: int = CURVE_POINTS,
                  binary: Optional[BinarySpec] = None) -> Ranking:
    """Pass 2: exact one-vs-rest ROC AUC / AP of ``classes`` (plus optional curves / tuning)."""
    classes = np.array(sorted(set(int(c) for c in classes)), dtype=np.int64)
    out = Ranking()
    if len(classes) == 0:
        return out
    target = target_group_rows or default_group_rows(spark, scan.n * len(classes))
    b2g, groups = plan_groups(scan.hist_pos, scan.hist_neg, classes, target)
    log.info("ranking %d classes in %d groups (≤%d rows each)", len(classes), len(groups), target)
    res = (loaded.df.select("label", "probs")
           .mapInArrow(_rank_map_fn(classes, b2g), _RANK_PAIRS_SCHEMA)
           .groupBy("g")
           .applyInPandas(_rank_group_fn(groups, set(int(c) for c in curve_classes), tune, points, binary),
                          _RANK_SCHEMA)
           .toPandas())
    sums = res[res.kind == "sum"]
    for c in classes:
        c = int(c)
        n_pos, n_neg = int(scan.hist_pos[c].sum()), int(scan.hist_neg[c].sum())
        part = sums[sums.cls == c]
        auc2 = int(part.auc2.astype("int64").sum())
        out.roc_auc[c] = auc2 / (2.0 * n_pos * n_neg) if n_pos > 0 and n_neg > 0 else None
        out.pr_auc[c] = math.fsum(part.ap) / n_pos if n_pos > 0 else None     # exact: any group order
    pts = res[res.kind == "pt"].sort_values(["cls", "t"])
    for c, part in pts.groupby("cls"):
        out.curves[int(c)] = {"recall": [0.0] + part.x.tolist(),
                              "precision": [1.0] + part.y.tolist()}
    if binary is not None:
        out.binary = _binary_partials(res, binary)
        out.binary["intervals"] = _binary_intervals(res, binary)
    best = res[res.kind == "best"]
    if len(best):
        b = best.sort_values(["x", "y"], ascending=[False, False]).iloc[0]
        out.best = (float(b.x), float(b.y))
    return out


def _binary_partials(res, binary: BinarySpec) -> dict:
    """The rank pass's rare-event rows, combined over groups (:func:`pipeline.evaluation.binary.combine`)."""
    levels = {"rap": binary.precision_levels, "par": binary.recall_levels, "patk": binary.alert_fractions}
    partials = []
    for g, rows in res[res.kind.isin(_BINARY_KINDS)].groupby("g"):
        part = {kind: [None] * len(levels[kind]) for kind in _BINARY_KINDS}
        for kind, i, x in zip(rows.kind, rows.t, rows.x):
            part[kind][int(i)] = float(x)
        partials.append(part)
    return combine(partials, binary.precision_levels, binary.recall_levels, binary.alert_fractions)


def _binary_intervals(res, binary: BinarySpec) -> Optional[dict]:
    """Poisson-bootstrap intervals of the binary metrics from the groups' segments, in score order."""
    segs = res[res.kind.isin(("seg", "tail"))].sort_values(["g", "x"])
    groups = []
    for _, rows in segs.groupby("g", sort=True):
        seg = rows[rows.kind == "seg"]
        groups.append((seg.t.to_numpy(np.int64), seg.auc2.to_numpy(np.int64), seg.ap.to_numpy().astype(np.int64),
                       int(rows[rows.kind == "tail"].auc2.sum())))
    pos, tie, before, tail = join_segments(groups)
    return binary_intervals(pos, tie, before, tail, precision_levels=binary.precision_levels,
                            recall_levels=binary.recall_levels, alert_fractions=binary.alert_fractions)


def pr_curves(spark, predictions, classes: Sequence[int], label_col: str = "label",
              n_classes: Optional[int] = None, points: int = CURVE_POINTS) -> dict:
    """Thinned exact PR-curve points of a few classes, computed in Spark (≤ ~``points`` each).

    Returns ``{class: {"recall": [...], "precision": [...]}}`` starting at (0, 1); a point per
    threshold where recall crosses a multiple of 1/points (every positive threshold when the
    class has ≤ ``points`` positives), so the step area equals the class's average precision.
    """
    loaded = load_predictions(spark, predictions, label_col, None, n_classes)
    scan = scan_predictions(loaded)
    present = [int(c) for c in classes if scan.hist_pos[int(c)].sum() > 0]
    return ranking_stats(spark, loaded, scan, present, curve_classes=present, points=points).curves
