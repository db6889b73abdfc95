"""Scheduled retraining over a data lake (``imbalance retrain CONFIG``), with a promotion gate.

The lake is a partitioned Parquet table, ``<retrain.lake>/<partition_col>=<value>/…`` (e.g.
``ingest_date=2026-11-26``). One retrain:

1. lists the lake's partitions and compares them with those the production model was trained on
   (the ``partitions`` tag of the version that alias ``production`` names in the MLflow Model
   Registry); with no new partition it stops ("up to date");
2. runs the whole pipeline (:func:`pipeline.run.run_pipeline`) on the lake as it is now — profile,
   a fresh split (hash of (seed, id), so rows keep their split from one retrain to the next and
   test rows never leak into training), sampling, training warm-started from the production
   model (``retrain.warm_start``), prediction and evaluation — into ``<run.root>/retrain-<ts>/``;
3. reports drift of the class distribution against the production model's training data
   (``drift.json``: total-variation and Jensen–Shannon distances, ρ before/after, classes that
   appeared or vanished, the largest changes in class share). When the *new* partitions' class
   prior has moved from the production model's training data by more than
   ``retrain.prior_shift`` (total variation), the candidate's probabilities are corrected to the
   new partitions' prior (``evaluate.target_prior``; ``drift.json["prior_shift"]``), since those
   are the data it will score next;
4. scores the production model on the *same* fresh test split, so both are judged on equal terms;
5. registers the candidate as a new version of ``registry.model_name`` (always; the partitions it
   saw, the drift report and the gate's verdict as tags) and promotes it only if
   :func:`pipeline.flows.gate.gate` passes: macro-F1 and the mean recall of the minority classes
   may not be worse than production's beyond the configured tolerances.

Concurrent retrains are safe: each has its own run directory and MLflow run, and promotion is a
compare-and-set under the registry's lock: a candidate is promoted only if ``production`` still
names the version it was judged against (see :mod:`pipeline.flows.promotion`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

from pipeline.config import Config
from pipeline.data.source import read_table
from pipeline.engines import get_spark
from pipeline.errors import InputError
from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.flows import promotion
from pipeline.flows.gate import gate
from pipeline.flows.run import run_pipeline
from pipeline.flows.tracking import RECORD
from pipeline.flows.validate import validate_config
from pipeline.io import local_path, log, path_fingerprint, read_json, write_json
from pipeline.train.predict import predict


def lake_partitions(lake: str, partition_col: str) -> list[str]:
    """Sorted partition values present in the lake (directories ``<col>=<value>`` with data)."""
    root = local_path(lake)
    if not root.is_dir():
        raise InputError(f"lake not found: {lake}")
    prefix = f"{partition_col}="
    parts = sorted(p.name[len(prefix):] for p in root.iterdir()
                   if p.is_dir() and p.name.startswith(prefix) and any(p.glob("*.parquet")))
    if not parts:
        raise InputError(f"lake {lake} has no partitions named {partition_col}=<value> holding Parquet files")
    return parts


def class_drift(before: dict, after: dict) -> dict:
    """Distances between two class distributions given as label → count (pure)."""
    labels = sorted(set(before) | set(after), key=str)
    nb, na = sum(before.values()) or 1, sum(after.values()) or 1
    p = [before.get(k, 0) / nb for k in labels]
    q = [after.get(k, 0) / na for k in labels]
    tvd = 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(x, y):
        return sum(a * math.log2(a / b) for a, b in zip(x, y) if a > 0)

    js = 0.5 * kl(p, m) + 0.5 * kl(q, m)

    def rho(c):
        vals = [v for v in c.values() if v > 0]
        return max(vals) / min(vals) if vals else None

    changes = sorted(((abs(b - a), k, a, b) for k, a, b in zip(labels, p, q)), reverse=True)[:5]
    return {
        "total_variation": tvd,
        "jensen_shannon": js,
        "rho_before": rho(before),
        "rho_after": rho(after),
        "new_classes": [k for k in labels if before.get(k, 0) == 0 and after.get(k, 0) > 0],
        "vanished_classes": [k for k in labels if before.get(k, 0) > 0 and after.get(k, 0) == 0],
        "largest_share_changes": [{"label": k, "before": a, "after": b} for _, k, a, b in changes],
    }


def _counts_from_distribution(dist: dict) -> dict:
    return {str(c["label"]): int(c["count"]) for c in dist["classes"]}


def _tag_list(mv, key: str) -> list:
    try:
        return list(json.loads(mv.tags.get(key) or "[]"))
    except ValueError:
        return []


def _prior_shift(cfg: Config, prod, new: list[str]) -> dict:
    """The new partitions' class counts (label → count, a small Spark aggregate) and how far their
    prior is from the production model's training data: ``{new_counts, total_variation, moved}``."""
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    # deferred: pipeline.prep.keys imports pyspark
    from pipeline.prep.keys import exact_counts

    df = read_table(get_spark(cfg.spark), cfg.retrain.lake, cfg.data.label_col)
    df = df.where(F.col(cfg.retrain.partition_col).cast("string").isin([str(p) for p in new]))
    counts = {str(k): int(v) for k, v in exact_counts(df, cfg.data.label_col).items()}
    tvd = class_drift(json.loads(prod.tags.get("class_counts") or "{}"), counts)["total_variation"]
    return {"new_counts": counts, "total_variation": tvd, "threshold": float(cfg.retrain.prior_shift),
            "moved": bool(counts) and tvd > float(cfg.retrain.prior_shift)}


def retrain(cfg: Config) -> dict:
    """One scheduled retrain; returns a summary (status, version, promoted, gate reasons, drift)."""
    validate_config(cfg, "retrain")  # before the registry or the lake is touched
    reg = promotion.open_registry(cfg)
    parts = lake_partitions(cfg.retrain.lake, cfg.retrain.partition_col)
    prod = promotion.production(reg)
    prod_version = str(prod.version) if prod else None
    trained = set(_tag_list(prod, "partitions")) if prod else set()
    new = [p for p in parts if p not in trained]
    if prod and not new:
        log(f"retrain: no new partitions since version {prod_version} ({len(parts)} trained): up to date")
        return {"status": "up_to_date", "production": prod_version, "partitions": parts}
    log(f"retrain: {len(new)} new partition(s): {', '.join(new[:10])}; production: {prod_version or 'none'}")

    run_cfg, shift, prod_dir = _candidate_config(cfg, reg, prod, new)
    run_dir = Path(run_pipeline(run_cfg, tracking_tags={"retrain.model": reg.name,
                                                        "retrain.compared_with": prod_version or "none"}))
    record = read_json(run_dir / RECORD) if (run_dir / RECORD).is_file() else {}
    if "model" not in record.get("logged", []):
        raise RuntimeError(f"retrain: the candidate's model was not logged to MLflow at {reg.uri} (see the "
                           f"warning above); nothing registered, the run directory {run_dir} has it")
    dist, now_counts, drift = _drift(run_dir, prod, shift)
    candidate_metrics = read_json(run_dir / "evaluate" / "metrics.json")
    passed, reasons = _judge(cfg, run_dir, dist, candidate_metrics, _production_metrics(cfg, run_dir, prod_dir))

    f1 = (candidate_metrics.get("macro") or {}).get("f1")
    tags = {"partitions": json.dumps(parts), "new_partitions": json.dumps(new),
            "class_counts": json.dumps(now_counts), "drift": json.dumps(drift),
            "data_fingerprint": path_fingerprint(cfg.retrain.lake), "run_dir": str(run_dir),
            "macro_f1": f"{f1:.4f}" if isinstance(f1, (int, float)) else "-",
            "gate.passed": str(passed).lower(), "gate.reasons": json.dumps(reasons),
            "gate.compared_with": prod_version or "none",
            "verdict": "pending" if passed else "rejected"}
    version, status, reasons = _register(reg, record["run_id"], tags, drift=drift, passed=passed, reasons=reasons,
                                         prod_version=prod_version)
    now = promotion.production(reg)
    summary = {"status": status, "version": version, "model": reg.name,
               "production": str(now.version) if now else None, "previous_production": prod_version,
               "new_partitions": new, "gate_passed": passed, "gate_reasons": reasons,
               "run_dir": str(run_dir), "drift": drift}
    write_json(run_dir / "retrain.json", summary)
    return summary


def _candidate_config(cfg: Config, reg, prod, new: list[str]) -> tuple[Config, Optional[dict], Optional[Path]]:
    """The candidate's run config over the whole lake (its own run id; corrected to the new
    partitions' prior when it moved; warm-started from production): (config, prior shift, the
    production model's directory)."""
    run_cfg = copy.deepcopy(cfg)
    shift = _prior_shift(cfg, prod, new) if prod is not None else None
    if shift and shift["moved"] and cfg.evaluate.target_prior is None:
        run_cfg.evaluate.target_prior = shift["new_counts"]
        log(f"retrain: the new partitions' class prior moved (TVD {shift['total_variation']:.4f} > "
            f"{cfg.retrain.prior_shift}): the candidate's probabilities are corrected to it")
    run_cfg.data.input = cfg.retrain.lake
    run_cfg.data.train_path = run_cfg.data.val_path = run_cfg.data.test_path = None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_cfg.run.id = f"retrain-{stamp}-{os.getpid()}"
    prod_dir = None
    if prod is not None:
        prod_dir = promotion.download_model_dir(reg, prod,
                                                local_path(cfg.run.root) / run_cfg.run.id / "production_model")
        if cfg.retrain.warm_start:
            run_cfg.train.init_from = str(prod_dir)
    return run_cfg, shift, prod_dir


def _drift(run_dir: Path, prod, shift: Optional[dict]) -> tuple[dict, dict, Optional[dict]]:
    """Drift of the class distribution against the production model's training data:
    (the run's distribution, its class counts, the drift — None without production)."""
    dist = read_json(run_dir / "profile" / "distribution.json")
    now_counts = _counts_from_distribution(dist)
    drift = class_drift(json.loads(prod.tags.get("class_counts") or "{}"), now_counts) if prod else None
    if drift:
        drift["prior_shift"] = shift
        write_json(run_dir / "drift.json", drift)
        log(f"retrain: class-distribution drift TVD {drift['total_variation']:.4f}, "
            f"JS {drift['jensen_shannon']:.4f}, rho {drift['rho_before']:.1f} -> {drift['rho_after']:.1f}")
    return dist, now_counts, drift


def _production_metrics(cfg: Config, run_dir: Path, prod_dir: Optional[Path]) -> Optional[dict]:
    """The production model scored on the candidate's test split (None without production)."""
    if prod_dir is None:
        return None
    spark = get_spark(cfg.spark)
    labels = read_json(run_dir / "split" / "labels.json")["labels"]
    prod_preds = run_dir / "production_eval" / "predictions"
    predict(spark, str(prod_dir), str(run_dir / "split" / "test"), str(prod_preds),
            batch_size=cfg.predict.batch_size)
    return evaluate_predictions(spark, str(prod_preds), str(run_dir / "production_eval"),
                                label_col=cfg.data.label_col, n_classes=len(labels),
                                class_names=labels)


def _judge(cfg: Config, run_dir: Path, dist: dict, candidate_metrics: dict,
           production_metrics: Optional[dict]) -> tuple[bool, list[str]]:
    """The gate on the candidate against production (macro-F1 and minority recall), logged."""
    minority = dist.get("minority_classes")
    label_index = {str(lab): i for i, lab in enumerate(read_json(run_dir / "split" / "labels.json")["labels"])}
    minority_idx = [label_index[str(m)] for m in minority if str(m) in label_index] if minority else None
    passed, reasons = gate(candidate_metrics, production_metrics, cfg.retrain.tolerance,
                           cfg.retrain.minority_recall_tolerance, minority_idx)
    for r in reasons:
        log(f"retrain gate: {r}")
    return passed, reasons


def _register(reg, run_id: str, tags: dict, *, drift: Optional[dict], passed: bool, reasons: list[str],
              prod_version: Optional[str]) -> tuple[str, str, list[str]]:
    """Register the candidate and promote it when it passed: (version, status, the gate's reasons)."""
    mv = promotion.register(reg, run_id, tags)
    version, status = str(mv.version), "promoted" if passed else "rejected"
    if drift:
        reg.client.log_dict(run_id, drift, "retrain/drift.json")
    if passed:
        try:
            promotion.promote(reg, version, reason="; ".join(reasons), expected=prod_version)
            log(f"retrain: promoted version {version} to production")
        except promotion.ProductionMoved as e:
            status = "superseded"
            reasons = reasons + [f"not promoted: {e}; rerun to judge against the new production"]
            reg.client.set_model_version_tag(reg.name, version, "gate.reasons", json.dumps(reasons))
            log(f"retrain: version {version} registered but NOT promoted: {e}")
    else:
        log(f"retrain: version {version} registered but NOT promoted; production stays {prod_version}")
    reg.client.set_model_version_tag(reg.name, version, "verdict", status)
    return version, status, reasons
