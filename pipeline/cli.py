"""The one command line: ``imbalance <stage> ...``.

Exit status: 0 done; 2 bad input or configuration (one line on stderr naming the problem);
1 anything else. Each handler parses its arguments and calls one plain function of a stage
module; the same functions run under spark-submit through ``jobs/<stage>.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from pipeline.config import load_config, names
from pipeline.data.images import MIN_SIZE, MODES, RESIZES
from pipeline.data.ingest import LABEL_FROM
from pipeline.data.synth import PRESET_KINDS, PRESETS
from pipeline.config_keys import config_keys, format_config, format_keys, with_suggestion
from pipeline.engines import get_spark, stop_ray
from pipeline.errors import InputError
from pipeline.evaluation.binary import (DEFAULT_ALERT_FRACTIONS, DEFAULT_PRECISION_LEVELS, DEFAULT_RECALL_LEVELS,
                                        LEVEL_KEYS, check_levels, format_binary)
from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.evaluation.thresholds import RULES, TUNE_METRICS, parse_class_counts, predictions_with_rule
from pipeline.flows import promotion
from pipeline.flows.experiment import run_experiment
from pipeline.flows.recommend import run_recommend
from pipeline.flows.retrain import retrain
from pipeline.flows.run import run_pipeline
from pipeline.flows.seeds import first_seed
from pipeline.flows.validate import COMMANDS, validate_config
from pipeline.io import local_path
from pipeline.prep.sampling import STRATEGIES, format_manifest, sample_dataset
from pipeline.train.predict import predict_from_config

LABEL_HELP = "name of the label column (default: label)"
CONFIG_HELP = ("Every config key with its type, default and meaning: imbalance config keys; the resolved "
               "config: imbalance config show CONFIG [key=value ...].")



def _levels(text: str) -> list[float]:
    """``--precision-levels 0.8,0.9``: numbers in (0, 1], checked by the same rule as the config keys."""
    try:
        return check_levels([float(x) for x in text.split(",")])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _target(text: str):
    """Parse ``--target``: a keyword, a float, or a JSON dict label -> count."""
    t = text.strip()
    if t.startswith("{"):
        try:
            d = json.loads(t)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--target is not valid JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise argparse.ArgumentTypeError("--target JSON must be an object label -> count")
        return d
    try:
        return float(t)
    except ValueError:
        return t


# ---------------------------------------------------------------- handlers
def cmd_synth(a: argparse.Namespace) -> int:
    # deferred: pandas is slow to import
    from pipeline.data.synth import synthesize, synthesize_image_folders

    if a.format == "png-folders":
        info = synthesize_image_folders(get_spark(), preset=a.preset, rows=a.rows, seed=a.seed, out=a.out,
                                        corrupt=a.corrupt, partitions=a.partitions)
        print(f"wrote {info['files']} files ({info['corrupt']} corrupt), {info['n_classes']} class folders to {a.out}")
        return 0
    if a.corrupt:
        raise InputError("--corrupt needs --format png-folders")
    rare = {k: v for k, v in (("positive_rate", a.positive_rate), ("features", a.features)) if v is not None}
    if rare and a.preset != "rare":
        raise InputError("--positive-rate and --features apply to --preset rare only")
    info = synthesize(get_spark(), preset=a.preset, rows=a.rows, seed=a.seed, out=a.out,
                      partitions=a.partitions, **rare)
    print(f"wrote {info['rows']} rows, {info['n_classes']} classes to {a.out}")
    return 0


def cmd_ingest(a: argparse.Namespace) -> int:
    # deferred: the stage modules import pyspark, pyarrow and matplotlib
    from pipeline.data.ingest import format_summary, ingest_images
    from pipeline.prep.profile import CHART_FILE, describe_counts, format_distribution, plot_distribution

    summary = ingest_images(get_spark(), a.images, a.out, size=a.size, mode=a.mode, resize=a.resize,
                            label_from=a.label_from, manifest=a.manifest, min_size=a.min_size)
    dist = describe_counts(summary["class_counts"])
    plot_distribution(dist, os.path.join(a.out, CHART_FILE))
    print(format_summary(summary))
    print(format_distribution(dist))
    if summary["rejected"]:
        print(f"rejected {summary['rejected']} files: see {a.out}/rejected/", file=sys.stderr)
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    # deferred: pyspark is slow to import
    from pipeline.prep.profile import format_distribution, profile

    dist = profile(get_spark(), a.input, a.out, label_col=a.label_col)
    print(format_distribution(dist))
    return 0


def cmd_split(a: argparse.Namespace) -> int:
    # deferred: pyspark is slow to import
    from pipeline.prep.split import split_dataset

    summary = split_dataset(get_spark(), a.input, a.out, val=a.val, test=a.test, seed=a.seed,
                            label_col=a.label_col, size=a.size, mode=a.mode, resize=a.resize,
                            min_size=a.min_size)
    totals = {name: sum(c.values()) for name, c in summary["counts"].items()}
    print(f"{len(summary['labels'])} classes; rows per split: "
          + ", ".join(f"{k} {v:,}" for k, v in totals.items()) + f"; rejected {summary['rejected']:,} -> {a.out}")
    if summary.get("rejected"):
        print(f"rejected {summary['rejected']} rows: see {a.out}/rejected/", file=sys.stderr)
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    manifest = sample_dataset(get_spark(), a.input, a.out, strategy=a.strategy, sampling_strategy=a.target,
                              cap=a.cap, floor=a.floor, random_state=a.seed, label_col=a.label_col)
    print(format_manifest(manifest))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    validate_config(cfg, "train")
    # deferred: torch is slow to import
    from pipeline.train.trainer import train_from_config
    result = train_from_config(cfg)
    print(result.get("model_dir", ""))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    overrides = list(a.overrides)
    if a.config and "=" in a.config and not os.path.exists(a.config):  # no config file, only overrides
        overrides.insert(0, a.config)
        a.config = None
    for key in ("model", "input", "out"):
        if getattr(a, f"predict_{key}"):
            overrides.append(f"predict.{key}={getattr(a, f'predict_{key}')}")
    if a.raw:
        overrides.append("predict.corrected=false")
    cfg = load_config(a.config, overrides)
    if str(cfg.predict.model or "").startswith("models:/"):  # the registered model: its model directory
        out_dir = local_path(cfg.predict.out or ".")
        cfg.predict.model = str(promotion.registered_model_dir(cfg, cfg.predict.model,
                                                               out_dir.parent / f".{out_dir.name}.model"))
    validate_config(cfg, "predict")
    out = predict_from_config(cfg)
    print(out)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    spark = get_spark()
    preds, n_classes, names = a.predictions, a.n_classes, None
    if a.threshold_moving:
        counts = parse_class_counts(a.class_counts) if a.class_counts else None
        preds, n_classes, names = predictions_with_rule(
            spark, a.predictions, a.threshold_moving, class_counts=counts, cost=a.cost,
            threshold=a.threshold, val_predictions=a.val_predictions, tune_metric=a.tune_metric,
            label_col=a.label_col)
    metrics = evaluate_predictions(spark, preds, a.out, label_col=a.label_col,
                                   pred_col=a.pred_col, n_classes=n_classes, class_names=names,
                                   report=not a.no_report, distribution=a.distribution,
                                   binary_levels={k: getattr(a, k) for k in LEVEL_KEYS if getattr(a, k) is not None})
    line = (f"macro F1 {metrics['macro']['f1']:.4f}  balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f}  G-mean {metrics['g_mean']:.4f}")
    if "adjusted" in metrics:
        adj = metrics["adjusted"]
        line += (f"  | {a.threshold_moving}: macro F1 {adj['macro']['f1']:.4f}  balanced accuracy "
                 f"{adj['balanced_accuracy']:.4f}  G-mean {adj['g_mean']:.4f}")
    if "binary" in metrics:
        print(format_binary(metrics["binary"]))
    print(line + f"  -> {a.out}/metrics.json" + ("" if a.no_report else f", {a.out}/report.html"))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    run_dir = run_pipeline(cfg)
    print(run_dir)
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    out = run_experiment(cfg)
    print(out)
    return 0


def cmd_recommend(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    out = run_recommend(cfg)
    print(out)
    return 0


def cmd_retrain(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, a.overrides)
    result = retrain(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_registry(a: argparse.Namespace) -> int:
    cfg = load_config(a.config, list(a.set or []) + ([f"registry.model_name={a.model}"] if a.model else [])
                      + ([f"tracking.uri={a.uri}"] if a.uri else []))
    reg = promotion.open_registry(cfg, must_exist=True)
    try:
        if a.action == "list":
            print("\n".join(promotion.list_lines(reg)))
        elif a.action == "show":
            print(json.dumps(promotion.describe(reg, promotion.get_version(reg, a.version)), indent=2))
        elif a.action == "promote":
            promotion.promote(reg, a.version, a.reason)
            print(a.version)
        elif a.action == "rollback":
            print(promotion.rollback(reg, a.reason))
    except promotion.RegistryLockTimeout as e:  # not bad input (exit 1), but one line all the same
        print(f"imbalance registry: error: {e}", file=sys.stderr)
        return 1
    return 0


def _print_to_pager(text: str) -> None:
    """Print ``text``; a reader that stops early (``| head``) ends the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits


def cmd_config(a: argparse.Namespace) -> int:
    if a.action == "keys":
        _print_to_pager(format_keys(config_keys(a.section)))
        return 0
    cfg = load_config(a.config, a.overrides)
    validate_config(cfg, a.for_command)     # the same one-line errors as the command itself
    _print_to_pager(format_config(first_seed(cfg) if a.for_command == "run" else cfg, a.format))
    return 0


# ---------------------------------------------------------------- parser
class _SynthHelp(argparse.HelpFormatter):
    """``synth --help``: the --preset line lists every preset of :data:`pipeline.data.synth.PRESETS`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        if action.dest != "preset":
            return text
        return text + ": " + ", ".join(
            f"{name} ({kind}, {classes} classes)" for name, (kind, classes) in PRESET_KINDS.items())


def _add_config(sub) -> None:
    """``imbalance config keys [SECTION]`` and ``imbalance config show CONFIG [key=value ...]``."""
    s = sub.add_parser("config", help="every config key explained, or a config resolved",
                       description="The keys config files and key=value overrides accept, and the config "
                                   "a command would run with.")
    acts = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("keys", help="every section and key: type, default, one line of help")
    a.add_argument("section", nargs="?", default=None, help="only this section (e.g. train) or key")
    a = acts.add_parser("show", help="the resolved config after overrides (as <run>/config.json records it)",
                        description="Load CONFIG, apply the overrides and check the result as the command "
                                    "would (one line and exit 2 for a bad key or value), then print it.")
    a.add_argument("config", help="YAML config (see conf/)")
    a.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    a.add_argument("--format", choices=["json", "yaml"], default="json",
                   help="json (default: the form of <run>/config.json) or yaml (a config file)")
    a.add_argument("--for", dest="for_command", choices=COMMANDS, default="run",
                   help="check it as this command would (default: run)")
    s.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imbalance",
        description="Distributed deep learning on class-imbalanced big data "
                    "(Spark sampling and metrics, Petastorm streaming, Ray Train).")
    p.add_argument("-v", "--verbose", action="store_true", help="show INFO logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_synth(sub)
    _add_ingest(sub)
    _add_profile(sub)
    _add_split(sub)
    _add_sample(sub)
    _add_config_commands(sub)
    _add_predict(sub)
    _add_registry(sub)
    _add_evaluate(sub)
    _add_config(sub)
    return p


def _add_synth(sub) -> None:
    """``imbalance synth``: synthetic data sets."""
    s = sub.add_parser("synth", help="generate a synthetic imbalanced data set (Parquet) with Spark",
                       formatter_class=_SynthHelp)
    s.add_argument("--preset", default="plankton", choices=PRESETS, help="which data (default plankton)")
    s.add_argument("--rows", type=int, default=20000, help="number of rows (default 20000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--partitions", type=int, default=None, help="output files (default: by size)")
    s.add_argument("--out", required=True, help="output Parquet directory (or image tree root)")
    s.add_argument("--format", choices=["parquet", "png-folders"], default="parquet",
                   help="parquet: a source table; png-folders: <out>/<class>/<id>.png at varied sizes "
                        "and aspect ratios, as WHOI-Plankton is distributed (plankton preset)")
    s.add_argument("--corrupt", type=int, default=0,
                   help="png-folders: also write N bad files (truncated, not an image, empty)")
    s.add_argument("--positive-rate", type=float, default=None,
                   help="rare preset: share of positive rows, 0 < P < 0.5 (default 0.001)")
    s.add_argument("--features", type=int, default=None,
                   help="rare preset: feature columns, at least 4 (default 32)")
    s.set_defaults(func=cmd_synth)


def _add_ingest(sub) -> None:
    """``imbalance ingest``: image folders to a source table."""
    s = sub.add_parser("ingest",
                       help="image folders (<root>/<class>/<file>.png) -> source table, bad files to rejected/",
                       description="Decode and resize a tree of images (PNG, JPEG, ...) with Spark into "
                                   "OUT/data (the source table), OUT/rejected, OUT/labels.json, OUT/ingest.json.")
    s.add_argument("--images", required=True, help="root of the image tree: <root>/<class name>/<image>")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--size", type=int, default=32, help="output side in pixels (default 32)")
    s.add_argument("--mode", choices=MODES, default="L", help="L greyscale (default) or RGB")
    s.add_argument("--resize", choices=RESIZES, default="pad",
                   help="pad: keep the aspect ratio, pad to a square (default); crop: centre square; "
                        "stretch: ignore the aspect ratio")
    s.add_argument("--label-from", choices=LABEL_FROM, default="folder",
                   help="class from the first folder under the root (default) or from --manifest")
    s.add_argument("--manifest", default=None, help="CSV or Parquet with path,label (paths relative to the root)")
    s.add_argument("--min-size", type=int, default=MIN_SIZE,
                   help=f"reject images narrower or lower than this (default {MIN_SIZE}, as data.min_size)")
    s.set_defaults(func=cmd_ingest)


def _add_profile(sub) -> None:
    """``imbalance profile``: the class distribution."""
    s = sub.add_parser("profile", help="class distribution: counts, rho, minority classes, chart")
    s.add_argument("--input", required=True, help="Parquet table")
    s.add_argument("--out", required=True, help="output directory for distribution.json and the chart")
    s.add_argument("--label-col", default="label", help=LABEL_HELP)
    s.set_defaults(func=cmd_profile)


def _add_split(sub) -> None:
    """``imbalance split``: the exact stratified split."""
    s = sub.add_parser("split", help="exact stratified train/val/test split, invalid rows to rejected/")
    s.add_argument("--input", required=True, help="Parquet table")
    s.add_argument("--out", required=True, help="output directory: train/ val/ test/ rejected/")
    s.add_argument("--val", type=float, default=0.1, help="validation fraction per class (default 0.1)")
    s.add_argument("--test", type=float, default=0.2, help="test fraction per class (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the (seed, id) hash (default 0)")
    s.add_argument("--label-col", default="label", help=LABEL_HELP)
    s.add_argument("--size", type=int, default=32,
                   help="encoded (PNG/JPEG) image column: decode and resize to SIZE x SIZE (default 32)")
    s.add_argument("--mode", choices=MODES, default="L", help="encoded images: L (default) or RGB")
    s.add_argument("--resize", choices=RESIZES, default="pad",
                   help="encoded images: pad (keep aspect, default), crop or stretch")
    s.add_argument("--min-size", type=int, default=MIN_SIZE,
                   help=f"encoded images: reject images narrower or lower than this (default {MIN_SIZE}, "
                        "as data.min_size)")
    s.set_defaults(func=cmd_split)


def _add_sample(sub) -> None:
    """``imbalance sample``: exact distributed sampling."""
    s = sub.add_parser("sample", help="exact distributed RUS/ROS/threshold/floor/hybrid sampling")
    s.add_argument("--input", required=True, help="Parquet table (usually split/train)")
    s.add_argument("--strategy", required=True, choices=STRATEGIES, help=" | ".join(STRATEGIES))
    s.add_argument("--target", type=_target, default="auto",
                   help="imbalanced-learn sampling_strategy: auto | majority | 'not minority' | "
                        "'not majority' | all | FLOAT (binary) | JSON dict label->count")
    s.add_argument("--cap", type=int, default=None, help="threshold/hybrid: cap every class at N rows")
    s.add_argument("--floor", type=int, default=None, help="floor/hybrid: raise every class to M rows")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--out", required=True, help="output directory: data/ and manifest.json")
    s.add_argument("--label-col", default="label", help=LABEL_HELP)
    s.set_defaults(func=cmd_sample)


def _add_config_commands(sub) -> None:
    """``train``, ``run``, ``experiment``, ``retrain``: a config and key=value overrides."""
    for name, func, text in (
        ("train", cmd_train, "train a DNN on Ray Train workers streaming Petastorm shards"),
        ("run", cmd_run, "run every stage into <run.root>/<run-id>/ (prints the run directory last)"),
        ("experiment", cmd_experiment, "grid of methods x imbalance levels x seeds, with statistics"),
        ("recommend", cmd_recommend, "which imbalance method for this data: successive halving, then finalists "
                                     "with seeds, compared on validation (prints the output directory last)"),
        ("retrain", cmd_retrain, "scheduled retraining over a data lake, gated promotion"),
    ):
        s = sub.add_parser(name, help=text, description=text + ". Overrides are dotted config keys, "
                           "e.g. run.root=runs-test train.epochs=2. " + CONFIG_HELP)
        s.add_argument("config", help="YAML config (see conf/)")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        s.set_defaults(func=func)


def _add_predict(sub) -> None:
    """``imbalance predict``: batch prediction."""
    text = "batch prediction over a table, writing the predictions table"
    s = sub.add_parser("predict", help=text, description=text + " (probs, pred and probs_corrected: the "
                       "probabilities moved to the unsampled class prior and temperature the model carries). "
                       "Overrides are dotted config keys, e.g. predict.batch_size=2048. " + CONFIG_HELP)
    s.add_argument("config", nargs="?", default=None, help="YAML config (optional; its tracking.uri / run.root "
                   "find a registry model)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    s.add_argument("--model", dest="predict_model", default=None,
                   help="model directory, or a registered model: models:/<name>@production, models:/<name>/<version>")
    s.add_argument("--input", dest="predict_input", default=None, help="Parquet table to score (predict.input)")
    s.add_argument("--out", dest="predict_out", default=None, help="where the predictions go (predict.out)")
    s.add_argument("--raw", action="store_true", help="write the raw probabilities only (no probs_corrected)")
    s.set_defaults(func=cmd_predict)


def _add_registry(sub) -> None:
    """``imbalance registry``: the MLflow Model Registry."""
    s = sub.add_parser("registry", help="list, show, promote or roll back versions in the MLflow Model Registry",
                       description="The model versions retrain registered (MLflow Model Registry on tracking.uri; "
                                   "alias 'production' is the served model, 'previous' the one it replaced). "
                                   "Give the retrain config so both use the same store and model name.")
    s.add_argument("--config", default=None, help="YAML config whose tracking.uri / run.root / registry.model_name "
                   "to use (default: the built-in defaults: sqlite:///runs/mlflow.db, model 'imbalance')")
    s.add_argument("--model", default=None, help="registered model name (registry.model_name)")
    s.add_argument("--uri", default=None, help="tracking/registry URI (tracking.uri)")
    s.add_argument("--set", action="append", metavar="key=value",
                   help="config override (repeatable), e.g. run.root=runs-test")
    acts = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    acts.add_parser("list", help="every version: production marker, macro-F1, gate verdict, aliases")
    a = acts.add_parser("show", help="one version's source, run, aliases and tags (JSON)")
    a.add_argument("version")
    a = acts.add_parser("promote", help="make a version production (the old one becomes 'previous')")
    a.add_argument("version")
    a.add_argument("--reason", required=True, help="kept on the version as promote_reason")
    a = acts.add_parser("rollback", help="production back to the version the current one replaced")
    a.add_argument("--reason", default="manual rollback", help="kept on the version rolled back from")
    s.set_defaults(func=cmd_registry)


def _add_evaluate(sub) -> None:
    """``imbalance evaluate``: class-wise and rare-event metrics."""
    s = sub.add_parser("evaluate", help="class-wise metrics (exact ROC AUC / PR AUC) with Spark")
    s.add_argument("--predictions", required=True, help="predictions Parquet (id, label, probs, pred)")
    s.add_argument("--out", required=True, help="output directory for metrics.json and the report")
    s.add_argument("--label-col", default="label", help=LABEL_HELP)
    s.add_argument("--pred-col", default="pred", help="column of predicted labels (default: pred)")
    s.add_argument("--n-classes", type=int, default=None,
                   help="number of classes (default: the table's _dataset.json, else len(probs))")
    s.add_argument("--distribution", default=None,
                   help="profile output for the report: its directory, distribution.json or the PNG chart")
    s.add_argument("--no-report", action="store_true",
                   help="write metrics.json / metrics.parquet only (no report.md / report.html)")
    s.add_argument("--threshold-moving", choices=RULES, default=None,
                   help="also evaluate post-hoc threshold moving (pred_adjusted): prior = p_c/pi_c "
                        "(needs --class-counts), cost = p1 >= c10/(c10+c01) (binary, needs --cost), "
                        "tuned = threshold tuned on --val-predictions (binary)")
    s.add_argument("--class-counts", default=None,
                   help="training class counts for 'prior': JSON list/dict or a table dir with _dataset.json")
    s.add_argument("--cost", type=lambda t: [float(x) for x in t.split(",")], default=None,
                   metavar="C10,C01", help="false-positive and false-negative costs for 'cost'")
    s.add_argument("--threshold", type=float, default=None, help="fixed threshold for 'tuned'")
    s.add_argument("--val-predictions", default=None, help="validation predictions to tune on ('tuned')")
    s.add_argument("--tune-metric", default="f1", choices=TUNE_METRICS,
                   help=f"metric the tuned threshold maximises: {names(TUNE_METRICS, ', ')}")
    for flag, what, default in (
            ("precision-levels", "precisions recall_at_precision is reported at", DEFAULT_PRECISION_LEVELS),
            ("recall-levels", "recalls precision_at_recall is reported at", DEFAULT_RECALL_LEVELS),
            ("alert-fractions", "shares of rows flagged that precision_at_k is reported at", DEFAULT_ALERT_FRACTIONS)):
        s.add_argument(f"--{flag}", type=_levels, default=None, metavar="X,Y,…",
                       help=f"two-class data: the {what} (default: {','.join(map(str, default))})")
    s.set_defaults(func=cmd_evaluate)


# Without -v the console shows our own warnings only: the libraries' deprecation notices and their
# warnings (Spark, Ray, Petastorm, Arrow, PyTorch, MLflow, …) speak to their developers, not to a user.
QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
QUIET_MODULES = r"(py4j|pyspark|ray|petastorm|pyarrow|torch|mlflow|pandas|sklearn|matplotlib|google|pydantic)(\.|$)"
#: Every module but ours: a deprecation notice raised anywhere else is a library's.
NOT_OURS = r"(?!pipeline(\.|$))"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error shape: one line ``imbalance <command>: error: …`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _quiet(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "ray", "petastorm", "pyspark", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        for category in QUIET_CATEGORIES:
            warnings.filterwarnings("ignore", category=category, module=NOT_OURS)
        warnings.filterwarnings("ignore", module=QUIET_MODULES)
    os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore::{c.__name__}" for c in QUIET_CATEGORIES))


def _stop_ray_log_forwarding() -> None:
    """Shut the process's Ray down before the error line, so that no forwarded worker log
    (Ray Train's controller, placement-group cleaner) lands after it."""
    if "ray" in sys.modules:
        stop_ray()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                      # --help (0), or a bad argument: one line, exit 2
        return int(e.code or 0)
    _quiet(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        _stop_ray_log_forwarding()
        print(f"imbalance {args.command}: error: {with_suggestion(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imbalance {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
