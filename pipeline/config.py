"""Typed configuration: YAML presets validated into dataclasses, plus ``key=value`` overrides.

A config file is a mapping of sections (``run``, ``spark``, ``ray``, ``data``, ``split``,
``sample``, ``stream``, ``model``, ``train``, ``predict``, ``evaluate``, ``registry``,
``retrain``, ``experiment``, ``tracking``) to keys. Overrides use dotted keys: ``run.root=runs-test``,
``train.epochs=3``, ``train.loss_params={gamma: 2}``; values are parsed as YAML. An unknown
section or key, or a value of the wrong type, raises :class:`ConfigError` naming the key (and
the nearest known key: "unknown config key 'train.epoch' — did you mean 'train.epochs'?").

Each key is declared with its default and one line of help, ``_key(default, help)``;
``imbalance config keys`` (:mod:`pipeline.config_keys`) prints them, so a new key needs its help.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from pipeline.errors import ConfigError

#: The accepted values of the config's enumerated keys. The modules that own each rule read their
#: lists from here (``typing.get_args``), so a value is named once.
ImageMode = Literal["L", "RGB"]
Resize = Literal["pad", "crop", "stretch"]
LabelFrom = Literal["folder", "manifest"]
ImbalanceProtocol = Literal["step", "linear"]
ProtocolScope = Literal["source", "train"]
SynthPreset = Literal["plankton", "plankton_balanced", "tabular", "digits", "rare"]
OptimizerName = Literal["adam", "adamw", "sgd"]
SamplingMethod = Literal["none", "rus", "ros", "threshold", "floor", "hybrid"]
StreamReader = Literal["petastorm", "ray_data"]


def names(values: Any, sep: str = " | ") -> str:
    """The accepted values of an enumerated key (a ``Literal`` type, or any sequence), as help lists them."""
    return sep.join(typing.get_args(values) or values)


def _key(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A config key with its one line of help (``imbalance config keys`` prints it; a unit test
    fails for a key without help). ``factory`` makes a mutable default (a list or a dict)."""
    return field(default=default, default_factory=factory, metadata={"help": help})


def _section(cls: type, help: str) -> Any:
    """A config section: its dataclass and one line saying what it is for."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class RunSection:
    root: str = _key("runs", "run directories go to <root>/<id>/")
    id: Optional[str] = _key(None, "run directory name; null: <config stem>-<8-hex hash of the resolved config>")
    seed: int = _key(0, "default seed for every stage that takes one")
    compare_with: Any = _key(None, "a method or a list of them (e.g. baseline): reference models trained on the "
                                   "same data and compared per class in the report")
    seeds: Optional[list] = _key(None, "training seeds: each model trains once per seed on the same data; "
                                       "the report shows the spread")


@dataclass
class SparkSection:
    master: Optional[str] = _key(None, "Spark master; null: spark-submit's master if given, else local[*]")
    app_name: str = _key("imbalance-pipeline", "Spark application name")
    driver_memory: str = _key("4g", "spark.driver.memory of a local session")
    shuffle_partitions: int = _key(16, "spark.sql.shuffle.partitions")
    ui: bool = _key(False, "start the Spark web UI")
    log_level: str = _key("ERROR", "Spark's log level (ERROR, WARN, INFO, ...)")
    conf: dict = _key(factory=dict, help="extra Spark settings, spark.* name -> value (free-form)")
    connect_timeout_s: float = _key(30.0, "how long to wait for spark.master to answer before any stage runs")


@dataclass
class RaySection:
    address: Optional[str] = _key(None, "null: a private local Ray (never joins a `ray start` cluster); "
                                        "auto, host:port or ray://host:port for a cluster")
    num_cpus: Optional[int] = _key(None, "CPUs of a local Ray (null: all)")
    log_to_driver: bool = _key(True, "forward worker output: epoch lines to the console, the rest to "
                                     "<run>/train/ray-workers.log")
    connect_timeout_s: float = _key(30.0, "how long to wait for ray.address to answer before any stage runs")


@dataclass
class DataSection:
    input: Optional[str] = _key(None, "source table (Parquet directory or lake path); null: data.images, "
                                      "else synthesize data.synth_preset")
    images: Optional[str] = _key(None, "image folder tree <root>/<class>/<file>.png, ingested by the source stage")
    size: int = _key(32, "encoded images (folders, or PNG/JPEG bytes in a table): output side in pixels")
    mode: ImageMode = _key("L", "encoded images: L (greyscale) | RGB")
    resize: Resize = _key("pad", "encoded images: pad (keep aspect, pad to square) | crop | stretch")
    label_from: LabelFrom = _key("folder", "images: the class from the folder name (folder) | data.manifest (manifest)")
    manifest: Optional[str] = _key(None, "images: CSV/Parquet of path,label (paths relative to data.images)")
    min_size: int = _key(2, "images narrower or lower than this go to rejected/")
    synth_preset: Optional[SynthPreset] = _key("plankton", f"synthetic data when no input is given: "
                                                           f"{names(SynthPreset)}; null: none "
                                                           "(then data.input or data.images is required)")
    rows: int = _key(20000, "rows of synthetic data")
    positive_rate: float = _key(0.001, "synth_preset rare: share of positive rows")
    features: int = _key(32, "synth_preset rare: feature columns")
    label_col: str = _key("label", "name of the label column")
    image_shape: Optional[list] = _key(None, "raw uint8 images in a table: [H, W] or [H, W, C]")
    train_path: Optional[str] = _key(None, "data that already has a split: the training table "
                                           "(with data.val_path and data.test_path)")
    val_path: Optional[str] = _key(None, "data that already has a split: the validation table")
    test_path: Optional[str] = _key(None, "data that already has a split: the test table")
    protocol: Optional[ImbalanceProtocol] = _key(None, "impose imbalance: null | step | linear")
    protocol_rho: float = _key(10.0, "the protocol's imbalance ratio (largest / smallest class)")
    protocol_mu: float = _key(0.5, "step protocol: fraction of classes that are minority")
    protocol_scope: ProtocolScope = _key("source", "source: impose before the split | train: on train and val only, "
                                         "the test split stays as it is")


@dataclass
class SplitSection:
    val: float = _key(0.1, "validation fraction of each class")
    test: float = _key(0.2, "test fraction of each class")
    seed: Optional[int] = _key(None, "seed of the split's hash (null: run.seed)")


@dataclass
class SampleSection:
    strategy: SamplingMethod = _key("none", f"sampling of the training split: {names(SamplingMethod)}")
    target: Any = _key("auto", "rus/ros: auto | majority | not minority | not majority | all | a float "
                               "(binary) | a mapping label -> count")
    cap: Optional[int] = _key(None, "threshold/hybrid: cap every class at this many rows")
    floor: Optional[int] = _key(None, "floor/hybrid: raise every class to this many rows")
    seed: Optional[int] = _key(None, "sampling seed (null: run.seed)")


ReadStrategy = Literal["none", "ros", "rus", "threshold", "floor", "hybrid", "rates", "dynamic"]


@dataclass(frozen=True)
class ReadSampling:
    """``train.read_sampling`` checked and normalised, with its defaults filled in
    (:func:`pipeline.train.loop.read_sampling_spec` builds it; the loop and the readers trust it)."""
    strategy: ReadStrategy
    target: Any = "auto"                 # ros/rus: as sample.target
    cap: Optional[int] = None            # threshold/hybrid
    floor: Optional[int] = None          # floor/hybrid
    rates: Union[list, dict, None] = None    # rates: one per class, or class -> rate
    seed: Optional[int] = None           # the draw's seed (None: the training seed)
    initial: Literal["ones", "balanced"] = "ones"   # dynamic: epoch 0's rates
    epoch_rows: Union[int, float, str, None] = None  # dynamic: rows per epoch (None: the mean class size)
    augment: Optional[dict] = None       # the duplicates' augmentation (pipeline.stream.augment.augment_spec)


@dataclass(frozen=True)
class TwoPhaseSettings:
    """``train.method: two_phase``'s keys of ``train.method_params``, checked, with their defaults
    filled in (:func:`pipeline.flows.validate.two_phase_settings` builds it)."""
    pretrain: Optional[SampleSection]   # phase 1's sampled set (None: it samples in the reader)
    read_sampling: Optional[dict]       # ``pretrain_read_sampling``: phase 1's ``train.read_sampling``
    epochs: int                         # ``pretrain_epochs`` (default: train.epochs, at least 1)
    finetune_lr: Optional[float]        # phase 2's learning rate (None: train.lr)


@dataclass
class StreamSection:
    reader: StreamReader = _key("petastorm", f"how workers read the training set: {names(StreamReader)}")
    row_group_mb: float = _key(32.0, "Parquet row group size of the materialized training set (MB)")
    batch_size: int = _key(256, "rows per batch when reading validation and test data")
    shuffle: bool = _key(True, "shuffle rows while reading")
    workers_count: int = _key(2, "Petastorm reader threads per Ray worker")
    shuffle_buffer: int = _key(0, "rows mixed in seeded blocks of at least this many "
                                  "(0: row groups, and rows within each)")


@dataclass
class ModelSection:
    name: str = _key("lenet", "mlp | csdnn | lenet | resnet")
    hidden: list = _key(factory=lambda: [128, 64], help="mlp hidden layer sizes ([] = logistic regression)")
    depth: int = _key(18, "resnet depth: 10 | 18 | 34 | 50 | 101 | 152")
    dropout: float = _key(0.0, "dropout on the deep features (and between mlp hidden layers)")
    width: int = _key(64, "resnet base width: the stages have width, 2w, 4w, 8w channels")
    batch_norm: bool = _key(False, "mlp: BatchNorm1d after each hidden layer")
    classifier: str = _key("linear", "linear | cosine (a normalised head, for ldam's scale s=30)")


@dataclass
class TrainSection:
    loss: str = _key("ce", "the loss, e.g. ce | weighted_ce | focal | ldam (an unknown name's error lists them all)")
    loss_params: dict = _key(factory=dict, help="the loss's parameters, e.g. {gamma: 2} for focal (docs/methods.md)")
    epochs: int = _key(3, "training epochs")
    batch_size: int = _key(256, "training rows per batch and worker")
    lr: float = _key(1e-3, "learning rate")
    optimizer: OptimizerName = _key("adam", names(OptimizerName))
    weight_decay: float = _key(0.0, "the optimizer's weight decay")
    num_workers: int = _key(2, "Ray Train workers")
    cpus_per_worker: float = _key(0.5, "CPUs per Ray Train worker (on 2 cores, 0.5 leaves Ray Data a CPU)")
    use_gpu: Optional[bool] = _key(None, "null: use a GPU when Ray sees one")
    amp: bool = _key(True, "mixed precision on GPU")
    amp_dtype: str = _key("bf16", "bf16 | fp16 (fp16 adds a GradScaler)")
    momentum: float = _key(0.9, "sgd momentum")
    seed: Optional[int] = _key(None, "seed of model init and shuffling (null: run.seed)")
    progress: bool = _key(True, "a progress bar per epoch with rows/s")
    select_metric: str = _key("macro_f1", "validation metric that picks the best checkpoint and stops early; "
                                           "two-class data also: pr_auc | roc_auc (the positive class)")
    patience: Optional[int] = _key(None, "stop early after this many epochs without gain (null: never)")
    max_failures: int = _key(1, "Ray Train restarts after a worker failure")
    method: str = _key("baseline", "training method: baseline | two_phase | ... (an unknown name's error lists "
                                   "them all)")
    method_params: dict = _key(factory=dict, help="the method's parameters, e.g. dynamic_sampling, "
                                                  "category_centers (docs/methods.md)")
    read_sampling: Optional[dict] = _key(None, "per-epoch sampling in the reader: {strategy: ros | rus | "
                                               "threshold | floor | hybrid | rates | dynamic, target, cap, "
                                               "floor, rates, seed, initial, epoch_rows}")
    train_path: Optional[str] = _key(None, "standalone `imbalance train`: the materialized training table")
    val_path: Optional[str] = _key(None, "standalone `imbalance train`: the validation table")
    out: Optional[str] = _key(None, "standalone `imbalance train`: where checkpoints and the model go")
    resume: bool = _key(True, "resume from the last checkpoint")
    init_from: Optional[str] = _key(None, "warm start from a model directory (same architecture)")


@dataclass
class PredictSection:
    split: str = _key("test", "the split a run predicts")
    model: Optional[str] = _key(None, "standalone `imbalance predict`: the model directory")
    input: Optional[str] = _key(None, "standalone `imbalance predict`: the table to score")
    out: Optional[str] = _key(None, "standalone `imbalance predict`: where the predictions go")
    batch_size: int = _key(1024, "rows per prediction batch")
    corrected: bool = _key(True, "add probs_corrected (the model's prior correction and temperature)")


@dataclass
class EvaluateSection:
    threshold_moving: Optional[str] = _key(None, "also evaluate threshold moving: null | prior | cost | tuned")
    cost: Optional[list] = _key(None, "binary cost threshold: [c10, c01]")
    tune_metric: str = _key("f1", "what the tuned threshold maximises: f1 | balanced_accuracy | g_mean | accuracy")
    prior_correction: str = _key("auto", "auto | on | off: move probabilities to the unsampled class prior")
    calibrate: Optional[str] = _key(None, "null | temperature (fitted on the validation split)")
    target_prior: Optional[dict] = _key(None, "class label -> count or share that scoring corrects to "
                                              "(null: the training split before sampling)")
    precision_levels: list = _key(factory=lambda: [0.5, 0.8, 0.9, 0.95],
                                  help="two-class data: the precisions recall_at_precision is reported at")
    recall_levels: list = _key(factory=lambda: [0.5, 0.8, 0.9, 0.95],
                               help="two-class data: the recalls precision_at_recall is reported at")
    alert_fractions: list = _key(factory=lambda: [0.001, 0.01],
                                 help="two-class data: the shares of rows flagged that precision_at_k is reported at")


@dataclass
class RegistrySection:
    model_name: str = _key("imbalance", "the MLflow registered model (on tracking.uri) retrain adds versions to")
    lock_timeout: float = _key(600.0, "seconds to wait for another process's register or promote")


@dataclass
class TrackingSection:
    enabled: bool = _key(True, "log runs, experiments and retrains to MLflow")
    uri: Optional[str] = _key(None, "null: sqlite:///<run.root>/mlflow.db (artifacts in <run.root>/mlartifacts); "
                                    "or a server, e.g. http://host:5000")
    experiment: Optional[str] = _key(None, "MLflow experiment name (null: the config file's stem, or run.id "
                                           "when set)")


@dataclass
class RetrainSection:
    lake: Optional[str] = _key(None, "the partitioned lake table to retrain on")
    partition_col: str = _key("ingest_date", "the lake's partition column")
    tolerance: float = _key(0.01, "gate: macro-F1 may drop at most this much")
    minority_recall_tolerance: float = _key(0.02, "gate: mean minority-class recall may drop at most this much")
    warm_start: bool = _key(True, "start from the production model's weights")
    prior_shift: float = _key(0.02, "total variation between the production model's training prior and the new "
                                    "partitions' above which the candidate corrects to the new prior")


@dataclass
class ExperimentSection:
    methods: list = _key(factory=list, help="the methods: each {name, overrides}, or a bare name (no overrides)")
    levels: list = _key(factory=list, help="the imbalance levels: each {name, rho, overrides} (empty: one level, "
                                           "the base config)")
    seeds: list = _key(factory=lambda: [0, 1, 2], help="seeds of each method and level")
    out: Optional[str] = _key(None, "output directory (null: <run.root>/experiment-<run.id>)")
    parallel: Optional[int] = _key(None, "trials at once as Ray tasks (null: one per CPU with in-process "
                                         "training, else 1)")
    metrics: list = _key(factory=list, help="headline metrics to test (default: all the trial table has)")


@dataclass
class RecommendSection:
    metric: str = _key("macro_f1", "the validation metric to pick by: macro_f1 | balanced_accuracy | g_mean | "
                                   "accuracy")
    methods: Any = _key("auto", "auto (the survey's methods that apply to the data) or a list shaped like "
                                "experiment.methods")
    budget: Optional[int] = _key(None, "total training epochs across all trials (null: what the search plan needs)")
    budget_minutes: Optional[float] = _key(None, "wall-clock limit of the search in minutes (null: none)")
    seeds: list = _key(factory=lambda: [0, 1, 2], help="training seeds each finalist and the baseline are "
                                                       "retrained with")
    finalists: int = _key(3, "candidates retrained at full fidelity with every seed, besides the baseline")
    grace_epochs: Optional[int] = _key(None, "epochs every candidate trains before the first cut (null: about a "
                                             "ninth of train.epochs)")
    reduction_factor: int = _key(3, "successive halving keeps about one in this many candidates at each rung")
    parallel: Optional[int] = _key(None, "trials at once (null: one per Ray CPU)")
    out: Optional[str] = _key(None, "output directory (null: <run.root>/recommend-<run.id>)")


@dataclass
class Config:
    run: RunSection = _section(RunSection, "where runs go, their id and seeds")
    spark: SparkSection = _section(SparkSection, "the Spark session")
    ray: RaySection = _section(RaySection, "the Ray cluster training runs on")
    data: DataSection = _section(DataSection, "the source: a table, image folders, pre-split tables or synthetic "
                                              "data, and an imposed imbalance")
    split: SplitSection = _section(SplitSection, "the stratified train/val/test split")
    sample: SampleSection = _section(SampleSection, "sampling of the training split before training")
    stream: StreamSection = _section(StreamSection, "streaming the training set to the workers")
    model: ModelSection = _section(ModelSection, "the network")
    train: TrainSection = _section(TrainSection, "training: loss, method, optimizer, Ray Train workers")
    predict: PredictSection = _section(PredictSection, "batch prediction")
    evaluate: EvaluateSection = _section(EvaluateSection, "metrics, threshold moving, prior correction and "
                                                          "calibration")
    registry: RegistrySection = _section(RegistrySection, "the MLflow Model Registry retrain promotes in")
    retrain: RetrainSection = _section(RetrainSection, "scheduled retraining over a lake, and its gate")
    experiment: ExperimentSection = _section(ExperimentSection, "a grid of methods x imbalance levels x seeds")
    recommend: RecommendSection = _section(RecommendSection, "which method for this data: a successive-halving "
                                                             "search, then finalists with seeds")
    tracking: TrackingSection = _section(TrackingSection, "MLflow tracking")
    source: Optional[str] = None        # the file it was loaded from (not a YAML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name))


#: Numbers YAML 1.1 leaves as strings: exponents without a dot (``1e-9``, ``5E3``).
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Validate (and lightly coerce) ``value`` against a field annotation."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), **globals()})  # noqa: S307 - this module's annotations
    origin = typing.get_origin(annotation)
    if origin is Literal:   # the type here; which values are accepted, flows.validate checks (one place)
        annotation = type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string; it is a number to a user
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if annotation is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
    return value


def nearest(word: str, choices) -> Optional[str]:
    """The choice closest to a misspelt ``word`` (:func:`difflib.get_close_matches`, ignoring
    case), or None when none is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    found = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    return by_lower[found[0]] if found else None


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """`` — did you mean '<prefix><nearest>'?``, the end of a one-line error; "" when nothing is close."""
    found = nearest(word, choices)
    return f" — did you mean '{prefix}{found}'?" if found else ""


def _section_class(f: dataclasses.Field) -> type:
    return globals()[f.type] if isinstance(f.type, str) else f.type


def _nearest_key(cls: type, key: str, prefix: str) -> str:
    """The suggestion for an unknown ``prefix + key``: the same key in another section
    (``train.dropout`` → ``model.dropout``), else the nearest key of its section (or section)."""
    owners = [f.name for f in dataclasses.fields(Config) if f.name != "source" and f"{f.name}." != prefix
              and key in {k.name for k in dataclasses.fields(_section_class(f))}]
    if owners:
        return did_you_mean(key, [key], f"{owners[0]}.")
    return did_you_mean(key, [f.name for f in dataclasses.fields(cls) if f.name != "source"], prefix)


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full == "registry.root":
            raise ConfigError("config key 'registry.root' is gone: the registry is the MLflow Model Registry on "
                              "tracking.uri (default sqlite:///<run.root>/mlflow.db); name the model with "
                              "registry.model_name")
        if key not in fields or key == "source":
            raise ConfigError(f"unknown config key '{full}'" + _nearest_key(cls, key, prefix))
        f = fields[key]
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Section")):
            sub_cls = _section_class(f)
            kwargs[key] = _build(sub_cls, value or {}, f"{full}.")
        else:
            kwargs[key] = _check_type(full, value, f.type)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"bad override '{text}': expected key=value, e.g. run.root=runs-test")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides:
        parts, value = parse_override(ov)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"bad override '{ov}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Load a YAML preset (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must be a mapping of sections")
        data = loaded
    data = merge_overrides(data, list(overrides))
    cfg = _build(Config, data, "")
    if path is not None:
        cfg.source = str(path)
    if cfg.run.id is None:
        stem = Path(path).stem if path is not None else "default"
        cfg.run.id = default_run_id(cfg, stem)
        if cfg.tracking.experiment is None:  # runs of one config file sit side by side in one experiment
            cfg.tracking.experiment = stem
    return cfg


#: Sections that say where and how a run executes, not what it computes: left out of the run id.
NOT_IN_RUN_ID = ("spark", "ray", "registry", "tracking")


def default_run_id(cfg: Config, stem: str) -> str:
    """``<config stem>-<8 hex digits>``: a hash of the resolved config (every section except
    :data:`NOT_IN_RUN_ID`, ``run.root`` and ``run.id``). Identical resolved configs share a run
    directory, so rerunning resumes; any changed value (``train.loss=focal``) gets its own."""
    d = cfg.to_dict()
    for k in NOT_IN_RUN_ID:
        d.pop(k, None)
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("root", "id")}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
    return f"{stem}-{digest[:8]}"


def config_from_dict(data: dict) -> Config:
    """Build a Config from a plain dict (as produced by :meth:`Config.to_dict`)."""
    return _build(Config, dict(data), "")
