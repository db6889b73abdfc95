"""``imbalance run``: every stage, in order, into ``<run.root>/<run-id>/``.

::

    source → profile → split → sample → materialize → train → calibrate → predict → evaluate → report

Each stage writes into its own directory and, last, a ``_SUCCESS`` marker holding a fingerprint
of its inputs (the upstream markers) and of the config keys it depends on. A rerun skips a stage
whose marker matches and redoes one that does not (and therefore everything downstream of it).
Stage functions write to a temporary path and rename it into place, so a crash leaves no
half-written output; the training stage also resumes from its last per-epoch checkpoint.

Methods (``train.method``):

``baseline``
    train on ``sample`` (``sample.strategy``, default ``none``: the imbalanced training split).
``two_phase`` (Lee et al.'s two-phase learning; Buda et al.)
    pre-train on a sampled set (``train.method_params.pretrain``: a ``sample`` mapping, default
    ``{strategy: threshold, cap: 5000}`` — Lee et al.'s thresholded set) — or, with
    ``method_params.pretrain_read_sampling`` (a ``train.read_sampling`` mapping, e.g. ``{strategy:
    floor, floor: 1000, augment: noise}``: Lee et al.'s (E)/(F)), on the full set sampled and
    augmented in the reader — for ``method_params.pretrain_epochs`` epochs, then fine-tune all
    layers on the full training split for ``train.epochs`` epochs (learning rate
    ``method_params.finetune_lr``, default ``train.lr``), starting from the pre-trained weights.

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* M. Buda, A. Maki, M. A. Mazurowski, "A systematic study of the class imbalance problem in
  convolutional neural networks", Neural Networks 106 (2018),
  https://doi.org/10.1016/j.neunet.2018.07.011
"""
from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.config import Config, SampleSection
from pipeline.data.describe_source import describe_source
from pipeline.data.schema import has_info, read_info, write_info
from pipeline.data.source import read_table
from pipeline.engines import get_spark
from pipeline.evaluation.binary import LEVEL_KEYS, format_binary
from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.evaluation.evaluate import write_report
from pipeline.evaluation.thresholds import rule_adjuster, tune_threshold
from pipeline.flows import tracking
from pipeline.flows.calibrate import calibrate_model
from pipeline.flows.compare import compare_methods, format_comparison, run_comparisons
from pipeline.flows.seeds import first_seed, format_spread, spread_stage, train_other_seeds, training_seeds
from pipeline.evaluation.seed_spread import headline
from pipeline.io import (
    atomic_dir,
    fingerprint,
    local_path,
    log,
    path_fingerprint,
    read_json,
    read_success,
    spark_uri,
    write_json,
    write_success,
)
from pipeline.flows.validate import pretrain_section, validate_config
from pipeline.prep.sampling import format_manifest, read_training_counts, sample_dataset
from pipeline.stream.materialize import materialize
from pipeline.train import PIPELINE_METHODS
from pipeline.train.predict import predict


class StageRunner:
    """Runs stages with ``_SUCCESS`` fingerprints; remembers what ran and what was skipped."""

    def __init__(self, run_dir: Path, config: Optional[dict] = None):
        self.run_dir = run_dir
        self.config = config  # written to run_dir/config.json before the first stage that runs
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}
        self.t0 = time.time()

    def stage(self, name: str, key: Any, fn: Callable[[Path], Any]) -> str:
        """Run ``fn(stage_dir)`` unless the stage's marker matches ``key``; return the stage's fingerprint."""
        d = self.run_dir / name
        fp = fingerprint(name, key)
        if read_success(d) == fp:
            self.skipped.append(name)
            log(f"[{time.time() - self.t0:7.1f}s] {name}: up to date, skipped")
            return fp
        marker = d / "_SUCCESS"
        if marker.exists():
            marker.unlink()  # stale: the stage is redone, so it is not complete until the new marker
        if self.config is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", self.config)
            self.config = None
        log(f"[{time.time() - self.t0:7.1f}s] {name}: running")
        t = time.time()
        fn(d)
        d.mkdir(parents=True, exist_ok=True)
        write_success(d, fp)
        self.timings[name] = time.time() - t
        self.ran.append(name)
        log(f"[{time.time() - self.t0:7.1f}s] {name}: done in {self.timings[name]:.1f}s")
        return fp


def _impose(spark, cfg: Config, table: str, out: Path) -> None:
    """Write ``table`` under-sampled to the configured imbalance protocol (step / linear) at ``out``."""
    # deferred: pyspark is slow to import
    from pipeline.prep.keys import exact_counts
    from pipeline.prep.protocols import impose_protocol

    label = cfg.data.label_col
    df = read_table(spark, table, label)
    kept = impose_protocol(df, cfg.data.protocol, cfg.data.protocol_rho, cfg.data.protocol_mu, cfg.run.seed, label)
    with atomic_dir(out) as tmp:
        kept.write.mode("overwrite").parquet(spark_uri(tmp))
        if has_info(table):
            info = read_info(table)
            counts = exact_counts(spark.read.parquet(spark_uri(tmp)), label)
            info.class_counts = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
            write_info(tmp, info)


def data_stages(cfg: Config, spark, runner: "StageRunner", ddir: Path, protocol_name: str = "protocol") -> dict:
    """The data stages (source, protocol, profile, split) into ``ddir``; return their outputs.

    ``protocol_name``: the directory of a train-only protocol stage, so that runs at several
    imbalance levels can share one split (each level its own protocol directory).

    ``{"train", "val", "test"}``: the split tables training and evaluation read (after Buda et al.'s
    train-only protocol when configured); ``split_fp`` / ``profile_fp``: fingerprints downstream
    stages key on; ``labels``: the class names by index.
    """
    seed = cfg.run.seed
    label = cfg.data.label_col
    # ---- source: a given table (or pre-split tables), else the synthetic generator
    presplit = None
    if cfg.data.train_path or cfg.data.val_path or cfg.data.test_path:
        presplit = {"train": cfg.data.train_path, "val": cfg.data.val_path, "test": cfg.data.test_path}
        source = presplit["train"]
        source_fp = fingerprint({k: path_fingerprint(v) for k, v in presplit.items()})
    elif cfg.data.images:
        # deferred: the ingest stage imports pyspark, pyarrow and numpy
        from pipeline.data.ingest import DATA_DIR, format_summary, ingest_images

        source = str(ddir / "source" / DATA_DIR)
        d = cfg.data
        key = {"images": path_fingerprint(d.images), "manifest": d.manifest and path_fingerprint(d.manifest),
               "size": d.size, "mode": d.mode, "resize": d.resize, "label_from": d.label_from,
               "min_size": d.min_size}

        def _ingest(out: Path) -> None:
            summary = ingest_images(spark, d.images, str(out), size=d.size, mode=d.mode, resize=d.resize,
                                    label_from=d.label_from, manifest=d.manifest, min_size=d.min_size)
            log(format_summary(summary))

        source_fp = runner.stage("source", key, _ingest)
    elif cfg.data.input:
        source = cfg.data.input
        source_fp = fingerprint(path_fingerprint(source))
    else:
        # deferred: pandas is slow to import
        from pipeline.data.synth import synthesize

        source = str(ddir / "source")
        key = {"preset": cfg.data.synth_preset, "rows": cfg.data.rows, "seed": seed}
        rare = {}
        if cfg.data.synth_preset == "rare":
            rare = {"positive_rate": cfg.data.positive_rate, "features": cfg.data.features}
            key.update(rare)
        source_fp = runner.stage("source", key, lambda d: synthesize(
            spark, cfg.data.synth_preset, cfg.data.rows, seed, str(d), **rare))

    protocol_key = {"protocol": cfg.data.protocol, "rho": cfg.data.protocol_rho, "mu": cfg.data.protocol_mu,
                    "seed": seed}
    if cfg.data.protocol and cfg.data.protocol_scope == "source":
        source_fp = runner.stage("protocol", {"source": source_fp, **protocol_key},
                                 lambda d: _impose(spark, cfg, source, d))
        source = str(ddir / "protocol")

    # ---- profile
    from pipeline.prep.profile import describe_counts, format_distribution, profile

    profile_fp = runner.stage("profile", {"source": source_fp, "label": label},
                              lambda d: profile(spark, source, str(d), label_col=label))
    dist = read_json(ddir / "profile" / "distribution.json")
    log(format_distribution(dist, top=4))

    # ---- split
    from pipeline.prep.split import split_dataset

    split_seed = cfg.split.seed if cfg.split.seed is not None else seed
    split_fp = runner.stage(
        "split", {"source": source_fp, "split": cfg.section("split"), "seed": split_seed, "label": label,
                  "image_shape": cfg.data.image_shape,
                  "decode": [cfg.data.size, cfg.data.mode, cfg.data.resize, cfg.data.min_size]},
        lambda d: split_dataset(spark, presplit or source, str(d), val=cfg.split.val, test=cfg.split.test,
                                seed=split_seed, label_col=label, image_shape=cfg.data.image_shape,
                                size=cfg.data.size, mode=cfg.data.mode, resize=cfg.data.resize,
                                min_size=cfg.data.min_size))
    train_split = str(ddir / "split" / "train")
    val_split = str(ddir / "split" / "val")
    test_split = str(ddir / "split" / "test")
    if cfg.data.protocol and cfg.data.protocol_scope == "train":
        # Buda et al.: imbalance the training (and validation) data, keep the test set as it is
        def _protocol_splits(d: Path) -> None:
            d.mkdir(parents=True, exist_ok=True)
            _impose(spark, cfg, train_split, d / "train")
            _impose(spark, cfg, val_split, d / "val")

        split_fp = runner.stage(protocol_name, {"split": split_fp, **protocol_key}, _protocol_splits)
        train_split = str(ddir / protocol_name / "train")
        val_split = str(ddir / protocol_name / "val")
        if has_info(train_split):   # the imbalance the model trains on, beside the source's
            train_dist = describe_counts(read_info(train_split).class_counts)
            head, minority = format_distribution(train_dist).splitlines()[:2]
            log(f"training split after the protocol: {head} (the source: rho = {dist['rho']:.1f})\n{minority}")
            dist = train_dist | {"source_rho": dist["rho"]}

    return {"train": train_split, "val": val_split, "test": test_split, "split_fp": split_fp,
            "profile_fp": profile_fp, "labels": read_json(ddir / "split" / "labels.json")["labels"],
            "training_distribution": dist}


def prepare_data(cfg: Config, data_dir: str, protocol_name: str = "protocol") -> dict:
    """Only the data stages of ``cfg``, into ``data_dir`` (shared by several runs)."""
    ddir = local_path(data_dir)
    ddir.mkdir(parents=True, exist_ok=True)
    return data_stages(cfg, get_spark(cfg.spark), StageRunner(ddir), ddir, protocol_name)


def prior_counts(run_dir: Path, train_data: str) -> dict:
    """Class counts for threshold moving by priors: the *unique* training examples per class.

    Buda et al. divide the network's outputs by p(i) = |i| / Σ_k |k| with |i| "the number of unique
    examples of class i": after ROS that is the class's original count (copies are not new
    examples), after RUS or a cap the kept count — per class min(input count, sampled count) from
    the sample stage's manifest. Without a sample stage, the training table's counts.
    """
    manifest = run_dir / "sample" / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        return {k: min(int(v), int(m["achieved"].get(k, 0))) for k, v in m["input_counts"].items()}
    return read_info(train_data).class_counts


def training_set(spark, cfg: Config, runner: StageRunner, name: str, sample_cfg: SampleSection, *,
                 train_split: str, split_fp: str) -> tuple[str, str]:
    """Stages ``name`` (the Spark sampler on ``train_split``) and its ``materialize`` twin in the
    runner's directory; return (the materialized training set, its fingerprint)."""
    seed, label = cfg.run.seed, cfg.data.label_col
    s_seed = sample_cfg.seed if sample_cfg.seed is not None else seed
    s_key = {"split": split_fp, "sample": dataclasses.asdict(sample_cfg), "seed": s_seed}

    def _sample(d: Path) -> None:
        m = sample_dataset(spark, train_split, str(d), strategy=sample_cfg.strategy,
                           sampling_strategy=sample_cfg.target, cap=sample_cfg.cap, floor=sample_cfg.floor,
                           random_state=s_seed, label_col=label)
        log(format_manifest(m))

    sample_fp = runner.stage(name, s_key, _sample)
    mat_name = name.replace("sample", "materialize")
    mat_fp = runner.stage(mat_name, {"sample": sample_fp, "row_group_mb": cfg.stream.row_group_mb, "seed": seed},
                          lambda d: materialize(spark, str(runner.run_dir / name / "data"), str(d), seed=seed,
                                                row_group_mb=cfg.stream.row_group_mb, label_col=label))
    return str(runner.run_dir / mat_name), mat_fp


def run_pipeline(cfg: Config, data_dir: Optional[str] = None, protocol_name: str = "protocol",
                 tracking_tags: Optional[dict] = None, parent_run_id: Optional[str] = None) -> str:
    """Run (or resume) every stage of ``cfg``; return the run directory.

    ``data_dir``: where the data stages (source, protocol, profile, split) live, when several runs
    share them (the experiment's trials of one imbalance level and seed); default the run directory.
    Their markers carry their own fingerprints, so a shared stage is reused only when it matches.
    ``tracking_tags`` / ``parent_run_id``: tags of the MLflow run and the run it nests under
    (an experiment's trial); see :mod:`pipeline.flows.tracking`.
    """
    validate_config(cfg, "run")  # every key and input checked before anything is written
    cfg = first_seed(cfg)
    # deferred: torch is slow to import (the hook registry builds torch modules)
    from pipeline.train.hooks import hook_names

    references = compare_methods(cfg, list(PIPELINE_METHODS) + hook_names())  # validated above
    run_dir = local_path(cfg.run.root) / str(cfg.run.id)
    existed = run_dir.exists()
    log(f"run id: {cfg.run.id}  (directory: {run_dir})")
    tr = tracking.start(cfg, run_dir, tracking_tags, parent_run_id)
    try:
        return _run_stages(cfg, run_dir, tr, references, data_dir, protocol_name)
    except BaseException as e:
        tr.fail(e)     # FAILED (KILLED on Ctrl-C) in MLflow, with the error as a tag
        if not existed and run_dir.is_dir() and not any(p.is_dir() for p in run_dir.iterdir()):
            shutil.rmtree(run_dir)   # failed before any stage wrote anything: no directory left behind
        raise


def _run_stages(cfg: Config, run_dir: Path, tr, references: list[str], data_dir: Optional[str],
                protocol_name: str) -> str:
    """The stages of :func:`run_pipeline`, logged to the open MLflow run ``tr``."""
    method = cfg.train.method
    # config.json is (re)written only when a stage actually runs (StageRunner), so a failed or
    # up-to-date rerun never changes a finished run's record
    runner = StageRunner(run_dir, config=cfg.to_dict())
    ddir = run_dir if data_dir is None else local_path(data_dir)
    data_runner = runner if data_dir is None else StageRunner(ddir)
    spark = get_spark(cfg.spark)
    seed = cfg.run.seed
    label = cfg.data.label_col
    tracking.log_config(tr, cfg)

    data = data_stages(cfg, spark, data_runner, ddir, protocol_name)
    train_split, val_split, test_split = data["train"], data["val"], data["test"]
    split_fp, profile_fp = data["split_fp"], data["profile_fp"]
    ingest = ddir / "source" / "ingest.json"
    source = describe_source(cfg.to_dict()["data"], read_json(ingest) if ingest.is_file() else None)
    tracking.log_data(tr, ddir, split_fp, data["training_distribution"], source, redo="profile" in data_runner.ran)

    # ---- sample + materialize (one pair per training set)
    def sampled_set(name: str, sample_cfg: SampleSection) -> tuple[str, str]:
        return training_set(spark, cfg, runner, name, sample_cfg, train_split=train_split, split_fp=split_fp)

    train_data, train_data_fp = sampled_set("sample", cfg.sample)
    pretrain_data = pretrain_fp = None
    mp = cfg.train.method_params or {}  # two_phase's keys were checked by validate_config
    pre_read = mp.get("pretrain_read_sampling") if method == "two_phase" else None
    if method == "two_phase" and pre_read is None:
        pre_cfg = pretrain_section(mp.get("pretrain"))
        pretrain_data, pretrain_fp = sampled_set("sample_pretrain", pre_cfg)
    for name in ("sample", "sample_pretrain"):
        tracking.log_manifest(tr, run_dir, name, redo=name in runner.ran)

    # ---- train
    from pipeline.train.trainer import train_model

    train_key = {"data": train_data_fp, "pretrain": pretrain_fp, "val": split_fp, "model": cfg.section("model"),
                 "train": cfg.section("train"), "stream": cfg.section("stream")}

    def _train(d: Path) -> None:
        init = cfg.train.init_from
        fine_cfg = cfg
        if method == "two_phase":
            epochs = int(mp.get("pretrain_epochs", max(1, cfg.train.epochs)))
            pre_cfg = cfg
            if pre_read is not None:  # phase 1 samples (and may augment) in the reader over the full set
                pre_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, read_sampling=pre_read))
            where = pretrain_data or f"{train_data} sampled in the reader ({pre_read})"
            log(f"two-phase learning: pre-training for {epochs} epochs on {where}")
            pre = train_model(pre_cfg, pretrain_data or train_data, val_split, str(d / "pretrain"), epochs=epochs,
                              init_from=init)
            init = pre["model_dir"]
            if mp.get("finetune_lr") is not None:     # checked by validate_config
                fine_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=float(mp["finetune_lr"])))
            log(f"two-phase learning: fine-tuning on all training data from {init}")
        res = train_model(fine_cfg, train_data, val_split, str(d), init_from=init)
        write_json(d / "train_summary.json", {k: v for k, v in res.items() if k != "history"} | {
            "history": res.get("history")})

    train_fp = runner.stage("train", train_key, _train)
    model_dir = str(run_dir / "train" / "model")
    tracking.log_training(tr, run_dir, redo="train" in runner.ran)

    # ---- calibrate: the priors (and temperature) scoring applies, written into model.json
    calibrate_fp = runner.stage(
        "calibrate", {"train": train_fp, "split": split_fp, "prior_correction": cfg.evaluate.prior_correction,
                      "calibrate": cfg.evaluate.calibrate, "target_prior": cfg.evaluate.target_prior},
        lambda d: calibrate_model(spark, cfg, run_dir, model_dir, train_data=train_data, val_split=val_split, out=d,
                                  labels=data["labels"], log=log))
    tracking.log_model(tr, Path(model_dir), redo="calibrate" in runner.ran)

    # ---- predict (test, and val for tuned thresholds)

    def _predict(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for split_name, path in (("test", test_split), ("val", val_split)):
            predict(spark, model_dir, path, str(d / split_name), batch_size=cfg.predict.batch_size)

    predict_fp = runner.stage("predict", {"train": train_fp, "calibrate": calibrate_fp, "split": split_fp,
                                          "predict": cfg.section("predict")}, _predict)

    # ---- evaluate (+ threshold moving)

    labels = data["labels"]

    def _evaluate(d: Path) -> None:
        preds = str(run_dir / "predict" / "test")
        rule = cfg.evaluate.threshold_moving
        adjust = None
        if rule:  # scored in the evaluation's own scan: no adjusted copy of the predictions is written
            threshold = None
            if rule == "tuned":
                threshold = tune_threshold(spark, str(run_dir / "predict" / "val"), metric=cfg.evaluate.tune_metric)
            adjust = rule_adjuster(rule, len(labels), class_counts=prior_counts(run_dir, train_data),
                                   cost=cfg.evaluate.cost, threshold=threshold)
        evaluate_predictions(spark, preds, str(d), label_col=label, n_classes=len(labels), class_names=labels,
                             adjust=adjust, calibration=read_json(Path(model_dir) / "model.json").get("calibration"),
                             train_counts=read_training_counts(run_dir / "sample"),
                             binary_levels={k: getattr(cfg.evaluate, k) for k in LEVEL_KEYS})

    evaluate_key = {"predict": predict_fp, "evaluate": cfg.section("evaluate")}
    if cfg.evaluate.threshold_moving == "prior":
        evaluate_key["priors"] = "unique examples per class"  # see prior_counts
    evaluate_fp = runner.stage("evaluate", evaluate_key, _evaluate)
    tracking.log_evaluation(tr, run_dir, labels, redo="evaluate" in runner.ran)

    # ---- the other training seeds (run.seeds), each a child run nested under this one
    seeds = training_seeds(cfg)
    spread_fp = None
    if len(seeds) > 1:
        seed_run = functools.partial(run_pipeline, parent_run_id=tr.run_id)
        spread_fp = spread_stage(runner, seeds, train_other_seeds(cfg, run_dir, ddir, protocol_name, seed_run))
        tracking.log_seed_spread(tr, run_dir, redo="seed_spread" in runner.ran)

    # ---- reference models on the same data, and the paired comparison (run.compare_with)
    compare_fp = None
    if references:
        # each reference is its own MLflow run, nested under this one in the same store and experiment
        reference_run = functools.partial(run_pipeline, tracking_tags={"kind": "reference"}, parent_run_id=tr.run_id)
        compare_fp = run_comparisons(cfg, run_dir, ddir, protocol_name, runner, run_fn=reference_run, spark=spark,
                                     methods=references)

    # ---- report

    report_key = {"evaluate": evaluate_fp, "profile": profile_fp, "comparison": compare_fp}
    if spread_fp:
        report_key["seed_spread"] = spread_fp
    runner.stage("report", report_key,
                 lambda d: write_report(str(run_dir / "evaluate"), str(d),
                                        distribution=str(ddir / "profile" / "distribution.json"),
                                        predictions=str(run_dir / "predict" / "test"), spark=spark, label_col=label,
                                        run_dir=str(run_dir), timings=dict(runner.timings), source=source))
    tracking.log_report(tr, run_dir, redo="report" in runner.ran)

    if data_runner is not runner:
        runner.skipped = data_runner.skipped + runner.skipped
        runner.ran = data_runner.ran + runner.ran
        runner.timings = {**data_runner.timings, **runner.timings}
    summary = _summary(run_dir, runner)
    summary["data_dir"] = str(ddir)
    summary["source"] = source
    summary["model"] = {"method": method, "training_seed": seeds[0]}
    summary["mlflow_run_id"] = tr.run_id
    write_json(run_dir / "summary.json", summary)
    tr.finish()
    print(_format_summary(summary))
    if "seeds" in summary:
        print(format_spread(summary["seeds"]))
    if references:
        print(format_comparison(run_dir))
    return str(run_dir)


def _summary(run_dir: Path, runner: StageRunner) -> dict:
    metrics = read_json(run_dir / "evaluate" / "metrics.json")
    head = headline(metrics)
    out = {}
    if "adjusted" in metrics:
        out["metrics_adjusted"] = adjusted = headline(metrics["adjusted"], metrics)
        head["adjusted_macro_f1"] = adjusted["macro_f1"]
        head["adjusted_balanced_accuracy"] = adjusted["balanced_accuracy"]
    spread = run_dir / "seed_spread" / "spread.json"
    if spread.is_file():
        out["seeds"] = read_json(spread)
    if "binary" in metrics:
        out["binary"] = metrics["binary"]
    cal = metrics.get("calibration") or {}
    out["calibration"] = {k: {"brier": v["brier"], "ece": v["ece"]} for k, v in cal.items()
                          if isinstance(v, dict) and "brier" in v}
    return {"run_dir": str(run_dir), "report": str(run_dir / "report" / "report.html"),
            "metrics": head, **out, "ran": runner.ran, "skipped": runner.skipped,
            "seconds": {k: round(v, 2) for k, v in runner.timings.items()},
            "total_seconds": round(time.time() - runner.t0, 2)}


def _format_summary(s: dict) -> str:
    m = s["metrics"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    model = s.get("model")
    lines = [
        f"== {model['method']}, training seed {model['training_seed']} ==" if model else "",
        f"macro F1 {f(m['macro_f1'])} | balanced accuracy (mean recall) {f(m['balanced_accuracy'])} | G-mean {f(m['g_mean'])} | "
        f"macro ROC AUC {f(m['macro_roc_auc'])} | macro PR AUC {f(m['macro_pr_auc'])} | accuracy {f(m['accuracy'])}",
        f"L5 F1 {f(m['l5_f1'])} | rest F1 {f(m['rest_f1'])}",
    ]
    if "adjusted_macro_f1" in m:
        lines.append(f"after threshold moving: macro F1 {f(m['adjusted_macro_f1'])} | "
                     f"balanced accuracy {f(m['adjusted_balanced_accuracy'])}")
    if s.get("binary"):
        lines.append(format_binary(s["binary"]))
    cal = s.get("calibration") or {}
    if cal:
        lines.append("calibration (Brier / ECE): " + " | ".join(
            f"{name.replace('_', '-')} {f(v['brier'])} / {f(v['ece'])}" for name, v in cal.items()))
    lines.append(f"stages run: {', '.join(s['ran']) or 'none'}; skipped (up to date): {', '.join(s['skipped']) or 'none'}")
    lines.append(f"report: {s['report']}  ({s['total_seconds']:.0f}s)")
    return "\n".join(x for x in lines if x)
