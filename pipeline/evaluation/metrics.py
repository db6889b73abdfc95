"""The evaluate stage's metrics: a predictions table in, a typed :class:`Evaluation` (``metrics.json``) out.

The survey's central demand is that a model trained on imbalanced data be judged class by class,
never by accuracy alone. :func:`compute_metrics` reads a predictions table (``id``, ``label``
index, ``probs`` array<double>, ``pred``, optional ``pred_adjusted``) in two passes over the table
and one shuffle, without collecting predictions; :func:`write_metrics` writes ``metrics.json``
(the contract in DESIGN.md) and ``metrics.parquet`` (one row per class). The parts:

* :mod:`pipeline.evaluation.scan` — pass 1 (Spark): validation, confusion matrices, Brier sum,
  calibration partials and per-class score histograms;
* :mod:`pipeline.evaluation.ranking` — pass 2 (Spark): exact one-vs-rest ROC AUC and average
  precision, thinned PR curves, the rare-event metrics of two-class data;
* :mod:`pipeline.evaluation.metric_math` — the formulas, in NumPy only.

Conventions (as scikit-learn / imbalanced-learn, and DESIGN.md): rows of ``confusion_matrix`` are
true classes, columns predicted ones; a class absent from the labels gets ``null`` for rates that
divide by its zero support (recall, F1, G-mean, balanced accuracy, ROC AUC, PR AUC); a present
class that is never predicted has precision 0 (scikit-learn's ``zero_division`` default); macro and
weighted averages and the multiclass ``balanced_accuracy`` / ``g_mean`` run over classes with
support > 0.

Two different "balanced accuracies" live in ``metrics.json``, so each has a second, unambiguous
name (docs/metrics.md documents every field):

* ``balanced_accuracy`` = ``mean_recall`` = (1/K) Σ_c recall_c — the multiclass balanced accuracy
  of scikit-learn's ``balanced_accuracy_score``;
* ``macro.balanced_accuracy`` = ``mean_ovr_balanced_accuracy`` = (1/K) Σ_c (recall_c +
  specificity_c)/2 — the mean of the per-class one-vs-rest values, much higher than the first
  when there are many classes (every class's specificity is near 1).

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluation.binary import (DEFAULT_ALERT_FRACTIONS, DEFAULT_PRECISION_LEVELS, DEFAULT_RECALL_LEVELS,
                                        alert_rows, positive_class)
from pipeline.evaluation.calibration import ECE_BINS, ece_from_partials, reliability_bins
from pipeline.evaluation.metric_math import (COUNT_KEYS, RATE_KEYS, BinarySpec, binary_section,
                                             calibration_variants, classwise_table, summarize)
from pipeline.evaluation.ranking import ranking_stats
from pipeline.evaluation.scan import Loaded, Scan, load_predictions, scan_predictions
from pipeline.io import local_path, write_json


def _binary_spec(loaded: Loaded, scan: Scan, levels: Optional[dict]) -> BinarySpec:
    levels = levels or {}
    support = [int(scan.hist_pos[c].sum()) for c in range(2)]
    fractions = tuple(levels.get("alert_fractions", DEFAULT_ALERT_FRACTIONS))
    return BinarySpec(positive=positive_class(loaded.class_names, support),
                      precision_levels=tuple(levels.get("precision_levels", DEFAULT_PRECISION_LEVELS)),
                      recall_levels=tuple(levels.get("recall_levels", DEFAULT_RECALL_LEVELS)),
                      alert_fractions=fractions, alert_m=tuple(alert_rows(a, scan.n) for a in fractions))


def calibration_summary(scan: Scan, variants: Sequence, block: Optional[dict]) -> dict:
    """``metrics.json["calibration"]``: per variant ``{brier, ece, bins}``, and what was applied."""
    out = {}
    for v, (name, _, temperature) in enumerate(variants):
        entry = {"brier": float(scan.cal_brier[v] / scan.n), "ece": ece_from_partials(scan.cal_bins[v]),
                 "bins": reliability_bins(scan.cal_bins[v])}
        if name == "temperature":
            entry["T"] = float(temperature)
        out[name] = entry
    out["ece_bins"] = ECE_BINS
    if block:
        out["prior_correction"] = bool(block.get("prior_correction"))
        out["train_prior"] = block.get("train_prior")
        out["model_prior"] = block.get("model_prior")
    return out


@dataclass
class Evaluation:
    """The metrics of one predictions table before they are written (:meth:`to_json` is ``metrics.json``).

    ``summary``: :func:`pipeline.evaluation.metric_math.summarize` of the argmax decisions (per class,
    averages, groups, confusion matrix); ``pr_curves``: thinned PR curves of the rarest classes by
    class index; ``calibration``: Brier score, ECE and reliability bins per calibration variant;
    ``binary``: the rare-event section of two-class data; ``adjusted``: the summary of the
    threshold-moved decisions, without AUCs or Brier score.
    """
    pred_col: str
    summary: dict
    class_names: Optional[list] = None
    pr_curves: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    binary: Optional[dict] = None
    adjusted: Optional[dict] = None

    def to_json(self) -> dict:
        """The ``metrics.json`` dictionary (DESIGN.md's contract), keys in their written order."""
        out = {"pred_col": self.pred_col, **self.summary}
        if self.class_names is not None:
            out["class_names"] = self.class_names
        out["pr_curves"] = {str(c): v for c, v in self.pr_curves.items()}
        out["calibration"] = self.calibration
        if self.binary is not None:
            out["binary"] = self.binary
        if self.adjusted is not None:
            out["adjusted"] = self.adjusted
        return out


def _adjusted_summary(cm_adjusted, names, train_counts: Optional[dict]) -> dict:
    """The threshold-moved decisions' section: threshold rates only (no AUCs, no Brier score)."""
    adj = classwise_table(cm_adjusted, names)
    for r in adj:
        r.pop("roc_auc")
        r.pop("pr_auc")
    out = summarize(adj, cm_adjusted, brier=None, keys=tuple(k for k in RATE_KEYS if k not in ("roc_auc", "pr_auc")),
                    train_counts=train_counts)
    out.pop("brier")
    out.pop("field_notes")
    return out


def compute_metrics(spark, predictions, *, label_col: str = "label", pred_col: str = "pred",
                    n_classes: Optional[int] = None, class_names=None, curve_classes: int = 4,
                    target_group_rows: Optional[int] = None, adjust: Optional[Callable] = None,
                    calibration: Optional[dict] = None, train_counts: Optional[dict] = None,
                    binary_levels: Optional[dict] = None) -> Evaluation:
    """All metrics of a predictions table, without writing anything (see module docstring).

    ``adjust``: a threshold-moving rule (probs block → class indices, e.g.
    :func:`pipeline.evaluation.thresholds.rule_adjuster`) whose decisions are scored as
    ``adjusted`` in the same scan, so no adjusted table has to be written and read again.
    ``calibration``: the model's ``model.json["calibration"]`` block; the raw, prior-corrected
    and temperature-scaled probabilities are scored from ``probs`` in the same scan
    (``metrics["calibration"]``; only ``raw`` without a block). ``train_counts``: training rows
    per class index, which the L5/Rest groups are taken by (else by test support).
    ``binary_levels``: for two-class data, ``precision_levels``, ``recall_levels`` and
    ``alert_fractions`` of the ``binary`` section (:mod:`pipeline.evaluation.binary`; defaults there).
    """
    loaded = load_predictions(spark, predictions, label_col, pred_col, n_classes, class_names)
    variants = calibration_variants(calibration)
    scan = scan_predictions(loaded, adjust, variants)
    per_class = classwise_table(scan.cm, loaded.class_names)
    present = [r["label"] for r in per_class if r["support"] > 0]
    rare = sorted(present, key=lambda c: (per_class[c]["support"], c))[:max(0, curve_classes)]
    binary = _binary_spec(loaded, scan, binary_levels) if loaded.n_classes == 2 else None
    rank = ranking_stats(spark, loaded, scan, present, curve_classes=rare,
                         target_group_rows=target_group_rows, binary=binary)
    for r in per_class:
        r["roc_auc"] = rank.roc_auc.get(r["label"])
        r["pr_auc"] = rank.pr_auc.get(r["label"])
    assert len(per_class) == loaded.n_classes
    return Evaluation(
        pred_col=pred_col,
        summary=summarize(per_class, scan.cm, brier=scan.brier_sum / scan.n, train_counts=train_counts),
        class_names=loaded.class_names,
        pr_curves={c: rank.curves[c] for c in rare if c in rank.curves},
        calibration=calibration_summary(scan, variants, calibration),
        binary=binary_section(binary, per_class, rank.binary, loaded.class_names) if binary is not None else None,
        adjusted=(_adjusted_summary(scan.cm_adjusted, loaded.class_names, train_counts)
                  if scan.cm_adjusted is not None else None))


def _per_class_table(per_class: list[dict]):
    cols = ["label"] + (["name"] if per_class and "name" in per_class[0] else []) + list(COUNT_KEYS)
    cols += [k for k in RATE_KEYS if per_class and k in per_class[0]]
    data = {}
    for c in cols:
        vals = [r.get(c) for r in per_class]
        if c == "name":
            data[c] = pa.array([None if v is None else str(v) for v in vals], pa.string())
        elif c in ("label",) + COUNT_KEYS:
            data[c] = pa.array(vals, pa.int64())
        else:
            data[c] = pa.array(vals, pa.float64())
    return pa.table(data)


def write_metrics(evaluation: Evaluation, directory) -> dict:
    """``metrics.json`` plus ``metrics.parquet`` (one row per class; ``metrics_adjusted.parquet``);
    returns what ``metrics.json`` holds."""
    metrics = evaluation.to_json()
    d = local_path(directory)
    write_json(d / "metrics.json", metrics)
    pq.write_table(_per_class_table(metrics["per_class"]), d / "metrics.parquet")
    if "adjusted" in metrics:
        pq.write_table(_per_class_table(metrics["adjusted"]["per_class"]), d / "metrics_adjusted.parquet")
    return metrics

