"""The calibrate stage: what scoring needs to emit probabilities that hold on the data as it is.

Between ``train`` and ``predict``. It writes ``model.json["calibration"]`` into the trained model
directory (so ``imbalance predict``, the MLflow model and the registry carry it) and a copy in
``<run>/calibrate/calibration.json``:

* ``train_prior`` π: the class distribution of the training split before sampling (the sample
  manifest's ``input_counts``);
* ``model_prior`` π′: the distribution the network was trained on, the manifest's ``achieved``
  counts (for two-phase learning the fine-tuning set's), times the best epoch's per-class read
  rates when ``train.read_sampling`` samples in the reader;
* ``evaluate.target_prior``, when set, replaces π: the class prior of the data the model will score
  (``retrain`` sets it from the new partitions when the lake's class prior moved);
* ``prior_correction``: ``evaluate.prior_correction`` (``auto``: on when π′ differs from π);
* ``temperature``: with ``evaluate.calibrate: temperature``, Guo et al.'s T fitted by NLL on the
  validation split's prior-corrected probabilities (:mod:`pipeline.evaluation.temperature`).

A stage of its own, so that changing these settings redoes calibration and scoring, not training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.config import Config
from pipeline.data.schema import read_info
from pipeline.evaluation.temperature import fit_temperature_on
from pipeline.io import read_json, write_json
from pipeline.data.prior_correction import (
    calibration_block,
    check_calibrator,
    check_target_prior,
    scoring_transform,
    target_counts,
)
from pipeline.errors import ConfigError
from pipeline.train.predict import predict

CALIBRATION_FILE = "calibration.json"


def training_priors(run_dir: Path, train_data: str) -> tuple[dict, dict]:
    """(class counts before sampling, class counts the network trained on) of a run, by class index."""
    manifest = run_dir / "sample" / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        before, trained = dict(m["input_counts"]), dict(m["achieved"])
    else:
        before = trained = dict(read_info(train_data).class_counts)
    summary_file = run_dir / "train" / "train_summary.json"
    summary = read_json(summary_file) if summary_file.is_file() else {}
    best = summary.get("best_epoch")
    rates = next((h.get("read_rates") for h in summary.get("history") or [] if h.get("epoch") == best), None)
    if rates:  # sampled in the reader: class c is seen rate_c times per row
        trained = {k: float(v) * float(rates[int(k)]) for k, v in trained.items()}
    return before, trained


def calibrate_model(spark, cfg: Config, run_dir: Path, model_dir: str, *, train_data: str, val_split: Optional[str],
                    out: Path, labels: list, log=print) -> dict:
    """Write the calibration block into ``model_dir/model.json`` and ``out/calibration.json``; return it.

    ``labels``: the class labels by index (to read ``evaluate.target_prior``, keyed by label).
    """
    meta_path = Path(model_dir) / "model.json"
    meta = read_json(meta_path)
    before, trained = training_priors(run_dir, train_data)
    target = check_target_prior(cfg.evaluate.target_prior)
    if target is not None:
        try:
            before = target_counts(target, labels)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    block = calibration_block(before, trained, int(meta["n_classes"]), cfg.evaluate.prior_correction)
    if check_calibrator(cfg.evaluate.calibrate) == "temperature":
        val_preds = out / "val"
        predict(spark, model_dir, val_split, str(val_preds), batch_size=cfg.predict.batch_size, corrected=False)
        weights, _ = scoring_transform(block)
        block["temperature"] = fit_temperature_on(spark, str(val_preds), weights, n_classes=int(meta["n_classes"]))
        block["temperature_fitted_on"] = "validation split"
    block["train_prior_from"] = "evaluate.target_prior" if target is not None else "training split before sampling"
    write_json(out / CALIBRATION_FILE, block)
    meta["calibration"] = block
    write_json(meta_path, meta)
    t = block["temperature"]
    log(f"calibration: prior correction {'on' if block['prior_correction'] else 'off'} "
        f"({block['prior_correction_setting']}); temperature {'none' if t is None else f'{t:.3f}'}")
    return block


__all__ = ["calibrate_model", "training_priors", "CALIBRATION_FILE"]
