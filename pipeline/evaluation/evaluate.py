"""The evaluate stage: a predictions table in, ``metrics.json`` (+ ``metrics.parquet``, and the report
when asked) out, written atomically. The metrics themselves are :mod:`pipeline.evaluation.metrics`."""
from __future__ import annotations

from typing import Optional

from pipeline.evaluation.metrics import compute_metrics, write_metrics
from pipeline.evaluation.report import write_report
from pipeline.io import atomic_dir


def evaluate_predictions(spark, predictions, out, *, label_col: str = "label", pred_col: str = "pred",
                         n_classes: Optional[int] = None, class_names=None,
                         report: bool = False, distribution=None, curve_classes: int = 4,
                         target_group_rows: Optional[int] = None, adjust=None, calibration=None,
                         train_counts: Optional[dict] = None, binary_levels: Optional[dict] = None) -> dict:
    """Evaluate a predictions table; write ``out/metrics.json`` and ``out/metrics.parquet``.

    ``out`` is replaced atomically (and, with ``report=True``, holds ``report.md``/``report.html``
    too); on bad input an :class:`InputError` is raised and nothing is written. ``n_classes``
    defaults to the table's ``_dataset.json`` or the length of ``probs``. ``adjust``: a
    threshold-moving rule (:func:`pipeline.evaluation.thresholds.rule_adjuster`) scored as
    ``adjusted`` in the same pass over the table. ``calibration``: the model's
    ``model.json["calibration"]`` block, whose corrections are scored beside the raw probabilities.
    ``train_counts``: training rows per class, which L5/Rest are taken by (else by test support).
    ``binary_levels``: the levels of two-class data's ``binary`` section (``evaluate.precision_levels``,
    ``recall_levels``, ``alert_fractions``).
    """
    metrics = compute_metrics(spark, predictions, label_col=label_col, pred_col=pred_col, n_classes=n_classes,
                              class_names=class_names, curve_classes=curve_classes, target_group_rows=target_group_rows, adjust=adjust,
                              calibration=calibration, train_counts=train_counts, binary_levels=binary_levels)
    with atomic_dir(out) as tmp:
        write_metrics(metrics, tmp)
        if report:
            write_report(tmp, tmp, distribution=distribution)
    return metrics


__all__ = ["evaluate_predictions"]
