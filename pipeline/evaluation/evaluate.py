"""The evaluate stage: a predictions table in, ``metrics.json`` (+ ``metrics.parquet``, and the report
when asked) out, written atomically. The metrics themselves are :mod:`pipeline.evaluation.metrics`;
the report's bootstrap intervals and PR curves are computed here too (``report_inputs.json``, beside
``metrics.json``), and :mod:`pipeline.evaluation.report` only renders them."""
from __future__ import annotations

import dataclasses
from typing import Optional

from pipeline.engines import get_spark
from pipeline.errors import InputError
from pipeline.evaluation.intervals import bootstrap_intervals
from pipeline.evaluation.metrics import compute_metrics, write_metrics
from pipeline.evaluation.ranking import pr_curves
from pipeline.evaluation.report import ReportInputs, render_report
from pipeline.evaluation.report_sections import read_run
from pipeline.evaluation.report_sections import train_counts as training_rows
from pipeline.io import atomic_dir, local_path, read_json, spark_uri, write_json

REPORT_INPUTS_FILE = "report_inputs.json"   # the report's intervals and PR curves, from the evaluate stage


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
    result = compute_metrics(spark, predictions, label_col=label_col, pred_col=pred_col, n_classes=n_classes,
                             class_names=class_names, curve_classes=curve_classes,
                             target_group_rows=target_group_rows, adjust=adjust,
                             calibration=calibration, train_counts=train_counts, binary_levels=binary_levels)
    with atomic_dir(out) as tmp:
        metrics = write_metrics(result, tmp)
        if report:
            write_report(tmp, tmp, distribution=distribution)
    return metrics


def report_inputs(metrics: dict, predictions=None, spark=None, *, label_col: str = "label",
                  run: Optional[dict] = None, sizes: Optional[dict] = None, curve_classes: int = 4) -> ReportInputs:
    """The report's Spark work: per-class F1 and macro bootstrap intervals, and the PR curves of the
    rarest classes when ``metrics.json`` does not already hold exactly those (both need ``predictions``).

    The rarest classes are taken by training rows (``sizes``) when known, as the test set may be
    balanced, else by test support; ties by class index.
    """
    intervals = None
    if predictions is not None and (spark is not None or local_path(predictions).exists()):
        # Spark aggregates of a stratified bootstrap (no collect)
        seed = int(run.get("config", {}).get("run", {}).get("seed", 0)) if run else 0
        intervals = bootstrap_intervals(spark or get_spark(), spark_uri(predictions), metrics["n_classes"],
                                        pred_col=metrics.get("pred_col", "pred"), label_col=label_col, seed=seed)
    per_class = metrics["per_class"]
    present = [r["label"] for r in per_class if r["support"] > 0]
    rarity = (lambda c: (sizes.get(c, 0), c)) if sizes else (lambda c: (per_class[c]["support"], c))
    rare = sorted(present, key=rarity)[:curve_classes]
    curves = metrics.get("pr_curves") or {}
    if predictions is not None and sorted(int(c) for c in curves) != sorted(rare):
        curves = {str(c): v for c, v in pr_curves(spark or get_spark(), predictions, rare, label_col=label_col,
                                                  n_classes=metrics["n_classes"]).items()}
    return ReportInputs(intervals=intervals, curves=curves, curves_by="training rows" if sizes else "test support")


def write_report(metrics_dir, out_dir, distribution=None, predictions=None, spark=None, *,
                 label_col: str = "label", curve_classes: int = 4, run_dir=None,
                 timings: Optional[dict] = None, source: Optional[dict] = None) -> dict:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    ``metrics_dir`` holds ``metrics.json``, and where the evaluate stage wrote it
    ``report_inputs.json`` (:func:`write_report_inputs`), which the report then only renders. Without
    that file the intervals and the PR curves of the rarest classes are computed here from
    ``predictions`` (:func:`report_inputs`); with neither, the report has no intervals and draws the
    curves ``metrics.json`` holds. ``distribution``: the profile stage's chart
    (PNG), its ``distribution.json`` (path or dict), or its output directory. Returns the paths written.
    """
    mpath = local_path(metrics_dir) / "metrics.json"
    if not mpath.is_file():
        raise InputError(f"no metrics.json in {metrics_dir}")
    metrics = read_json(mpath)
    run = read_run(local_path(run_dir)) if run_dir is not None else {}
    if source is not None:     # the run's data source (pipeline.data.describe_source), when the caller knows it
        run["source"] = source
    sizes = training_rows(run) if run else None
    saved = local_path(metrics_dir) / REPORT_INPUTS_FILE
    if saved.is_file():         # computed by the evaluate stage (write_report_inputs)
        inputs = ReportInputs(**read_json(saved))
    else:
        inputs = report_inputs(metrics, predictions, spark, label_col=label_col, run=run, sizes=sizes,
                               curve_classes=curve_classes)
    return render_report(metrics, out_dir, inputs, run=run, sizes=sizes, distribution=distribution,
                         timings=timings, predictions=predictions)


def write_report_inputs(metrics_dir, predictions, spark=None, *, label_col: str = "label", run_dir=None,
                        curve_classes: int = 4) -> ReportInputs:
    """The evaluate stage's work for the report: :func:`report_inputs` of ``metrics_dir/metrics.json``
    and ``predictions`` (the run's seed and training rows from ``run_dir``), written to
    ``metrics_dir/report_inputs.json``; returned."""
    metrics = read_json(local_path(metrics_dir) / "metrics.json")
    run = read_run(local_path(run_dir)) if run_dir is not None else {}
    inputs = report_inputs(metrics, predictions, spark, label_col=label_col, run=run,
                           sizes=training_rows(run) if run else None, curve_classes=curve_classes)
    write_json(local_path(metrics_dir) / REPORT_INPUTS_FILE, dataclasses.asdict(inputs))
    return inputs


__all__ = ["evaluate_predictions", "report_inputs", "write_report", "write_report_inputs", "REPORT_INPUTS_FILE"]
