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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.config import Config, SampleSection
from pipeline.data.describe_source import describe_source
from pipeline.data.schema import has_info, read_info, write_info
from pipeline.data.source import read_table
from pipeline.engines import get_spark
from pipeline.evaluation.binary import LEVEL_KEYS, format_binary
from pipeline.evaluation.evaluate import evaluate_predictions, write_report, write_report_inputs
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
from pipeline.flows.validate import presplit_paths, two_phase_settings, validate_config
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
    presplit = presplit_paths(cfg.data)
    source, source_fp = _source_stage(cfg, spark, runner, ddir, presplit)
    if cfg.data.protocol and cfg.data.protocol_scope == "source":
        source_fp = runner.stage("protocol", {"source": source_fp, **_protocol_key(cfg)},
                                 lambda d: _impose(spark, cfg, source, d))
        source = str(ddir / "protocol")

    # deferred: pyspark is slow to import
    from pipeline.prep.profile import format_distribution, profile

    label = cfg.data.label_col
    profile_fp = runner.stage("profile", {"source": source_fp, "label": label},
                              lambda d: profile(spark, source, str(d), label_col=label))
    dist = read_json(ddir / "profile" / "distribution.json")
    log(format_distribution(dist, top=4))
    split_fp = _split_stage(cfg, spark, runner, presplit or source, source_fp)
    splits = {name: str(ddir / "split" / name) for name in ("train", "val", "test")}
    if cfg.data.protocol and cfg.data.protocol_scope == "train":
        split_fp, dist = _train_protocol_stage(cfg, spark, runner, splits, ddir=ddir, split_fp=split_fp, dist=dist,
                                               protocol_name=protocol_name)
    return {**splits, "split_fp": split_fp, "profile_fp": profile_fp,
            "labels": read_json(ddir / "split" / "labels.json")["labels"], "training_distribution": dist}


def _protocol_key(cfg: Config) -> dict:
    return {"protocol": cfg.data.protocol, "rho": cfg.data.protocol_rho, "mu": cfg.data.protocol_mu,
            "seed": cfg.run.seed}


def _source_stage(cfg: Config, spark, runner: StageRunner, ddir: Path, presplit: Optional[dict]) -> tuple[str, str]:
    """The source: pre-split tables, an ingested image tree, a given table, else the synthetic
    generator; return (the source table, its fingerprint)."""
    d = cfg.data
    if presplit is not None:
        return presplit["train"], fingerprint({k: path_fingerprint(v) for k, v in presplit.items()})
    if d.images:
        # deferred: the ingest stage imports pyspark, pyarrow and numpy
        from pipeline.data.ingest import DATA_DIR, format_summary, ingest_images

        key = {"images": path_fingerprint(d.images), "manifest": d.manifest and path_fingerprint(d.manifest),
               "size": d.size, "mode": d.mode, "resize": d.resize, "label_from": d.label_from,
               "min_size": d.min_size}

        def _ingest(out: Path) -> None:
            summary = ingest_images(spark, d.images, str(out), size=d.size, mode=d.mode, resize=d.resize,
                                    label_from=d.label_from, manifest=d.manifest, min_size=d.min_size)
            log(format_summary(summary))

        return str(ddir / "source" / DATA_DIR), runner.stage("source", key, _ingest)
    if d.input:
        return d.input, fingerprint(path_fingerprint(d.input))
    # deferred: pandas is slow to import
    from pipeline.data.synth import synthesize

    key = {"preset": d.synth_preset, "rows": d.rows, "seed": cfg.run.seed}
    rare = {}
    if d.synth_preset == "rare":
        rare = {"positive_rate": d.positive_rate, "features": d.features}
        key.update(rare)
    return str(ddir / "source"), runner.stage("source", key, lambda out: synthesize(
        spark, d.synth_preset, d.rows, cfg.run.seed, str(out), **rare))


def _split_stage(cfg: Config, spark, runner: StageRunner, source, source_fp: str) -> str:
    """The stratified split of ``source`` (a table, or the pre-split tables); return its fingerprint."""
    # deferred: pyspark is slow to import
    from pipeline.prep.split import split_dataset

    d, label = cfg.data, cfg.data.label_col
    split_seed = cfg.split.seed if cfg.split.seed is not None else cfg.run.seed
    return runner.stage(
        "split", {"source": source_fp, "split": cfg.section("split"), "seed": split_seed, "label": label,
                  "image_shape": d.image_shape, "decode": [d.size, d.mode, d.resize, d.min_size]},
        lambda out: split_dataset(spark, source, str(out), val=cfg.split.val, test=cfg.split.test,
                                  seed=split_seed, label_col=label, image_shape=d.image_shape,
                                  size=d.size, mode=d.mode, resize=d.resize,
                                  min_size=d.min_size))


def _train_protocol_stage(cfg: Config, spark, runner: StageRunner, splits: dict, *, ddir: Path, split_fp: str,
                          dist: dict, protocol_name: str) -> tuple[str, dict]:
    """Buda et al.'s train-only protocol: imbalance the training (and validation) data, keep the
    test set as it is. Points ``splits`` at the imposed tables; returns (their fingerprint, the
    class distribution the model trains on)."""
    # deferred: pyspark is slow to import
    from pipeline.prep.profile import describe_counts, format_distribution

    def _protocol_splits(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        _impose(spark, cfg, splits["train"], d / "train")
        _impose(spark, cfg, splits["val"], d / "val")

    split_fp = runner.stage(protocol_name, {"split": split_fp, **_protocol_key(cfg)}, _protocol_splits)
    splits["train"] = str(ddir / protocol_name / "train")
    splits["val"] = str(ddir / protocol_name / "val")
    if has_info(splits["train"]):   # the imbalance the model trains on, beside the source's
        train_dist = describe_counts(read_info(splits["train"]).class_counts)
        head, minority = format_distribution(train_dist).splitlines()[:2]
        log(f"training split after the protocol: {head} (the source: rho = {dist['rho']:.1f})\n{minority}")
        dist = train_dist | {"source_rho": dist["rho"]}
    return split_fp, dist


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


@dataclass
class RunContext:
    """What the stages of one run share: its config, Spark session, stage runners and directories,
    its open MLflow run, and the data stages' outputs (:func:`data_stages`)."""
    cfg: Config
    spark: Any
    runner: StageRunner            # the run's own stages, in run_dir
    data_runner: StageRunner       # the data stages, in ddir (the runner itself when they are not shared)
    run_dir: Path
    ddir: Path
    protocol_name: str
    tr: Any                        # the open MLflow run (pipeline.flows.tracking)
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def model_dir(self) -> str:
        return str(self.run_dir / "train" / "model")


def _run_stages(cfg: Config, run_dir: Path, tr, references: list[str], data_dir: Optional[str],
                protocol_name: str) -> str:
    """The stages of :func:`run_pipeline`, logged to the open MLflow run ``tr``."""
    # config.json is (re)written only when a stage actually runs (StageRunner), so a failed or
    # up-to-date rerun never changes a finished run's record
    runner = StageRunner(run_dir, config=cfg.to_dict())
    ddir = run_dir if data_dir is None else local_path(data_dir)
    ctx = RunContext(cfg=cfg, spark=get_spark(cfg.spark), runner=runner,
                     data_runner=runner if data_dir is None else StageRunner(ddir), run_dir=run_dir, ddir=ddir,
                     protocol_name=protocol_name, tr=tr)
    tracking.log_config(tr, cfg)
    source = _data_stage(ctx)
    train_data, train_data_fp, pretrain = _training_sets(ctx)
    train_fp = _train_stage(ctx, train_data, train_data_fp, pretrain)
    calibrate_fp = _calibrate_stage(ctx, train_fp, train_data)
    predict_fp = _predict_stage(ctx, train_fp, calibrate_fp)
    evaluate_fp = _evaluate_stage(ctx, predict_fp, train_data)
    spread_fp = _seed_stage(ctx)
    compare_fp = _compare_stage(ctx, references)
    _report_stage(ctx, source, evaluate_fp=evaluate_fp, spread_fp=spread_fp, compare_fp=compare_fp)
    _finish(ctx, source, references)
    return str(run_dir)


def _data_stage(ctx: RunContext) -> dict:
    """The data stages (shared or the run's own), logged; returns the source's description."""
    ctx.data = data = data_stages(ctx.cfg, ctx.spark, ctx.data_runner, ctx.ddir, ctx.protocol_name)
    ingest = ctx.ddir / "source" / "ingest.json"
    source = describe_source(ctx.cfg.to_dict()["data"], read_json(ingest) if ingest.is_file() else None)
    tracking.log_data(ctx.tr, ctx.ddir, data["split_fp"], data["training_distribution"], source,
                      redo="profile" in ctx.data_runner.ran)
    return source


def _training_sets(ctx: RunContext) -> tuple[str, str, Optional[dict]]:
    """sample + materialize, one pair per training set: (the training set, its fingerprint, two_phase's
    phase 1: ``{"settings", "data", "fp"}``, or None for other methods)."""
    cfg, runner = ctx.cfg, ctx.runner

    def sampled_set(name: str, sample_cfg: SampleSection) -> tuple[str, str]:
        return training_set(ctx.spark, cfg, runner, name, sample_cfg, train_split=ctx.data["train"],
                            split_fp=ctx.data["split_fp"])

    train_data, train_data_fp = sampled_set("sample", cfg.sample)
    pretrain = None
    if cfg.train.method == "two_phase":
        phase1 = two_phase_settings(cfg.train)
        pretrain = {"settings": phase1, "data": None, "fp": None}
        if phase1.pretrain is not None:
            pretrain["data"], pretrain["fp"] = sampled_set("sample_pretrain", phase1.pretrain)
    for name in ("sample", "sample_pretrain"):
        tracking.log_manifest(ctx.tr, ctx.run_dir, name, redo=name in runner.ran)
    return train_data, train_data_fp, pretrain


def _train_stage(ctx: RunContext, train_data: str, train_data_fp: str, pretrain: Optional[dict]) -> str:
    """The train stage (two_phase: pre-training, then fine-tuning from its weights); its fingerprint."""
    # deferred: torch is slow to import
    from pipeline.train.trainer import train_model

    cfg, val_split = ctx.cfg, ctx.data["val"]
    train_key = {"data": train_data_fp, "pretrain": pretrain and pretrain["fp"], "val": ctx.data["split_fp"],
                 "model": cfg.section("model"), "train": cfg.section("train"), "stream": cfg.section("stream")}

    def _train(d: Path) -> None:
        init = cfg.train.init_from
        fine_cfg = cfg
        if pretrain is not None:
            phase1, pretrain_data = pretrain["settings"], pretrain["data"]
            pre_cfg = cfg
            if phase1.read_sampling is not None:  # phase 1 samples (and may augment) in the reader over the full set
                pre_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                             read_sampling=phase1.read_sampling))
            where = pretrain_data or f"{train_data} sampled in the reader ({phase1.read_sampling})"
            log(f"two-phase learning: pre-training for {phase1.epochs} epochs on {where}")
            pre = train_model(pre_cfg, pretrain_data or train_data, val_split, str(d / "pretrain"),
                              epochs=phase1.epochs, init_from=init)
            init = pre["model_dir"]
            if phase1.finetune_lr is not None:
                fine_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=phase1.finetune_lr))
            log(f"two-phase learning: fine-tuning on all training data from {init}")
        res = train_model(fine_cfg, train_data, val_split, str(d), init_from=init)
        write_json(d / "train_summary.json", {k: v for k, v in res.items() if k != "history"} | {
            "history": res.get("history")})

    train_fp = ctx.runner.stage("train", train_key, _train)
    tracking.log_training(ctx.tr, ctx.run_dir, redo="train" in ctx.runner.ran)
    return train_fp


def _calibrate_stage(ctx: RunContext, train_fp: str, train_data: str) -> str:
    """calibrate: the priors (and temperature) scoring applies, written into model.json."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    calibrate_fp = ctx.runner.stage(
        "calibrate", {"train": train_fp, "split": ctx.data["split_fp"], "prior_correction": ev.prior_correction,
                      "calibrate": ev.calibrate, "target_prior": ev.target_prior},
        lambda d: calibrate_model(ctx.spark, cfg, ctx.run_dir, ctx.model_dir, train_data=train_data,
                                  val_split=ctx.data["val"], out=d, labels=ctx.data["labels"], log=log))
    tracking.log_model(ctx.tr, Path(ctx.model_dir), redo="calibrate" in ctx.runner.ran)
    return calibrate_fp


def _predict_stage(ctx: RunContext, train_fp: str, calibrate_fp: str) -> str:
    """predict: the test split, and the validation split for tuned thresholds."""
    def _predict(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for split_name in ("test", "val"):
            predict(ctx.spark, ctx.model_dir, ctx.data[split_name], str(d / split_name),
                    batch_size=ctx.cfg.predict.batch_size)

    return ctx.runner.stage("predict", {"train": train_fp, "calibrate": calibrate_fp, "split": ctx.data["split_fp"],
                                        "predict": ctx.cfg.section("predict")}, _predict)


def _evaluate_stage(ctx: RunContext, predict_fp: str, train_data: str) -> str:
    """evaluate, with threshold moving scored in the evaluation's own scan (no adjusted copy of the
    predictions is written)."""
    cfg, run_dir, labels = ctx.cfg, ctx.run_dir, ctx.data["labels"]
    spark, label, model_dir = ctx.spark, cfg.data.label_col, ctx.model_dir

    def _evaluate(d: Path) -> None:
        preds = str(run_dir / "predict" / "test")
        rule = cfg.evaluate.threshold_moving
        adjust = None
        if rule:
            threshold = None
            if rule == "tuned":
                threshold = tune_threshold(spark, str(run_dir / "predict" / "val"), metric=cfg.evaluate.tune_metric)
            adjust = rule_adjuster(rule, len(labels), class_counts=prior_counts(run_dir, train_data),
                                   cost=cfg.evaluate.cost, threshold=threshold)
        evaluate_predictions(spark, preds, str(d), label_col=label, n_classes=len(labels), class_names=labels,
                             adjust=adjust, calibration=read_json(Path(model_dir) / "model.json").get("calibration"),
                             train_counts=read_training_counts(run_dir / "sample"),
                             binary_levels={k: getattr(cfg.evaluate, k) for k in LEVEL_KEYS})
        write_report_inputs(d, preds, spark, label_col=label, run_dir=run_dir)

    evaluate_key = {"predict": predict_fp, "evaluate": cfg.section("evaluate")}
    if cfg.evaluate.threshold_moving == "prior":
        evaluate_key["priors"] = "unique examples per class"  # see prior_counts
    evaluate_fp = ctx.runner.stage("evaluate", evaluate_key, _evaluate)
    tracking.log_evaluation(ctx.tr, run_dir, labels, redo="evaluate" in ctx.runner.ran)
    return evaluate_fp


def _seed_stage(ctx: RunContext) -> Optional[str]:
    """The other training seeds (run.seeds), each a child run nested under this one; the spread's fingerprint."""
    seeds = training_seeds(ctx.cfg)
    if len(seeds) <= 1:
        return None
    seed_run = functools.partial(run_pipeline, parent_run_id=ctx.tr.run_id)
    spread_fp = spread_stage(ctx.runner, seeds, train_other_seeds(ctx.cfg, ctx.run_dir, ctx.ddir, ctx.protocol_name,
                                                                  seed_run))
    tracking.log_seed_spread(ctx.tr, ctx.run_dir, redo="seed_spread" in ctx.runner.ran)
    return spread_fp


def _compare_stage(ctx: RunContext, references: list[str]) -> Optional[str]:
    """Reference models on the same data, and the paired comparison (run.compare_with)."""
    if not references:
        return None
    # each reference is its own MLflow run, nested under this one in the same store and experiment
    reference_run = functools.partial(run_pipeline, tracking_tags={"kind": "reference"}, parent_run_id=ctx.tr.run_id)
    return run_comparisons(ctx.cfg, ctx.run_dir, ctx.ddir, ctx.protocol_name, ctx.runner, run_fn=reference_run,
                           spark=ctx.spark, methods=references)


def _report_stage(ctx: RunContext, source: dict, *, evaluate_fp: str, spread_fp: Optional[str],
                  compare_fp: Optional[str]) -> None:
    run_dir, runner = ctx.run_dir, ctx.runner
    report_key = {"evaluate": evaluate_fp, "profile": ctx.data["profile_fp"], "comparison": compare_fp}
    if spread_fp:
        report_key["seed_spread"] = spread_fp
    runner.stage("report", report_key,
                 lambda d: write_report(str(run_dir / "evaluate"), str(d),
                                        distribution=str(ctx.ddir / "profile" / "distribution.json"),
                                        predictions=str(run_dir / "predict" / "test"), spark=ctx.spark,
                                        label_col=ctx.cfg.data.label_col, run_dir=str(run_dir),
                                        timings=dict(runner.timings), source=source))
    tracking.log_report(ctx.tr, run_dir, redo="report" in runner.ran)


def _finish(ctx: RunContext, source: dict, references: list[str]) -> None:
    """summary.json, the MLflow run closed, and the summary printed."""
    runner, data_runner = ctx.runner, ctx.data_runner
    if data_runner is not runner:
        runner.skipped = data_runner.skipped + runner.skipped
        runner.ran = data_runner.ran + runner.ran
        runner.timings = {**data_runner.timings, **runner.timings}
    summary = _summary(ctx.run_dir, runner)
    summary["data_dir"] = str(ctx.ddir)
    summary["source"] = source
    summary["model"] = {"method": ctx.cfg.train.method, "training_seed": training_seeds(ctx.cfg)[0]}
    summary["mlflow_run_id"] = ctx.tr.run_id
    write_json(ctx.run_dir / "summary.json", summary)
    ctx.tr.finish()
    print(_format_summary(summary))
    if "seeds" in summary:
        print(format_spread(summary["seeds"]))
    if references:
        print(format_comparison(ctx.run_dir))


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
        f"macro F1 {f(m['macro_f1'])} | balanced accuracy (mean recall) {f(m['balanced_accuracy'])} | "
        f"G-mean {f(m['g_mean'])} | "
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
    lines.append(f"stages run: {', '.join(s['ran']) or 'none'}; "
                 f"skipped (up to date): {', '.join(s['skipped']) or 'none'}")
    lines.append(f"report: {s['report']}  ({s['total_seconds']:.0f}s)")
    return "\n".join(x for x in lines if x)
