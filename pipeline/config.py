"""Typed configuration: YAML presets validated into dataclasses, plus ``key=value`` overrides.

A config file is a mapping of sections (``run``, ``spark``, ``ray``, ``data``, ``split``,
``sample``, ``stream``, ``model``, ``train``, ``predict``, ``evaluate``, ``registry``,
``retrain``, ``experiment``, ``tracking``) to keys. Overrides use dotted keys: ``run.root=runs-test``,
``train.epochs=3``, ``train.loss_params={gamma: 2}``; values are parsed as YAML. An unknown
section or key, or a value of the wrong type, raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from pipeline.errors import ConfigError


@dataclass
class RunSection:
    root: str = "runs"                  # run directories go to <root>/<id>/
    id: Optional[str] = None            # default: <config stem>-<hash of the resolved config> (see default_run_id)
    seed: int = 0                       # default seed for every stage that takes one
    compare_with: Any = None            # a method or a list (e.g. baseline): reference models on the same data (flows/compare.py)
    seeds: Optional[list] = None        # training seeds: each model trains once per seed on the same data (flows/seeds.py)


@dataclass
class SparkSection:
    master: Optional[str] = None        # None: spark-submit's master if given, else local[*]
    app_name: str = "imbalance-pipeline"
    driver_memory: str = "4g"
    shuffle_partitions: int = 16
    ui: bool = False
    log_level: str = "ERROR"
    conf: dict = field(default_factory=dict)  # extra spark.* settings


@dataclass
class RaySection:
    address: Optional[str] = None       # None: a private local Ray (never joins a `ray start` cluster); "auto", host:port or ray://host:port for a cluster
    num_cpus: Optional[int] = None      # local Ray only
    log_to_driver: bool = True          # forward worker output: epoch lines to the console, the rest to <run>/train/ray-workers.log


@dataclass
class DataSection:
    input: Optional[str] = None         # source table (Parquet dir / lake path); None: images, else synthesize
    images: Optional[str] = None        # image folder tree <root>/<class>/<file>.png: the source stage ingests it
    size: int = 32                      # encoded images (folders or PNG/JPEG bytes in a table): output side
    mode: str = "L"                     # L (greyscale) | RGB
    resize: str = "pad"                 # pad (keep aspect, pad to square) | crop | stretch
    label_from: str = "folder"          # images: class from the folder name | manifest
    manifest: Optional[str] = None      # images: CSV/Parquet of path,label (paths relative to data.images)
    min_size: int = 2                   # images narrower or lower than this go to rejected/
    synth_preset: Optional[str] = "plankton"  # used when no input is given: plankton | tabular | ...; null: none
    #                                            (a config for your own data: data.input or data.images required)
    rows: int = 20000
    label_col: str = "label"
    image_shape: Optional[list] = None  # raw uint8 images: [H, W] or [H, W, C]
    train_path: Optional[str] = None    # data that already has a split, as separate paths
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    protocol: Optional[str] = None      # impose imbalance: None | step | linear
    protocol_rho: float = 10.0
    protocol_mu: float = 0.5            # step: fraction of classes that are minority
    protocol_scope: str = "source"      # source: before the split | train: train and val only, test stays as is


@dataclass
class SplitSection:
    val: float = 0.1
    test: float = 0.2
    seed: Optional[int] = None          # default run.seed


@dataclass
class SampleSection:
    strategy: str = "none"              # none | rus | ros | threshold | floor | hybrid
    target: Any = "auto"                # auto | majority | not minority | not majority | all | float | dict
    cap: Optional[int] = None
    floor: Optional[int] = None
    seed: Optional[int] = None


@dataclass
class StreamSection:
    reader: str = "petastorm"           # petastorm | ray_data
    row_group_mb: float = 32.0
    batch_size: int = 256
    shuffle: bool = True
    workers_count: int = 2              # Petastorm reader threads per Ray worker
    shuffle_buffer: int = 0             # rows mixed in seeded blocks of at least this many (0: row groups + rows within each)


@dataclass
class ModelSection:
    name: str = "lenet"                 # mlp | csdnn | lenet | resnet (see pipeline.train.models)
    hidden: list = field(default_factory=lambda: [128, 64])  # mlp hidden sizes ([] = logistic regression)
    depth: int = 18                     # resnet depth: 10 | 18 | 34 | 50 (also 101 | 152)
    dropout: float = 0.0                # on the deep features (and between mlp hidden layers)
    width: int = 64                     # resnet base width: stages have width, 2w, 4w, 8w channels
    batch_norm: bool = False            # mlp: BatchNorm1d after each hidden layer
    classifier: str = "linear"          # linear | cosine (normalised head, for ldam's scale s=30)


@dataclass
class TrainSection:
    loss: str = "ce"
    loss_params: dict = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"             # adam | sgd
    weight_decay: float = 0.0
    num_workers: int = 2                # Ray Train workers
    cpus_per_worker: float = 0.5        # 2-core machines: leave Ray Data a CPU
    use_gpu: Optional[bool] = None      # None: use a GPU when Ray sees one
    amp: bool = True                    # mixed precision on GPU
    amp_dtype: str = "bf16"             # bf16 | fp16 (fp16 adds a GradScaler)
    momentum: float = 0.9               # sgd only
    seed: Optional[int] = None          # default run.seed (model init, shuffling)
    progress: bool = True               # tqdm bar per epoch with rows/s (rank 0)
    select_metric: str = "macro_f1"     # best-checkpoint / early-stopping metric on val
    patience: Optional[int] = None      # early stopping after this many epochs without gain
    max_failures: int = 1
    method: str = "baseline"            # baseline | two_phase | ... (see pipeline.train.methods)
    method_params: dict = field(default_factory=dict)  # e.g. dynamic_sampling, category_centers (docs/methods.md)
    read_sampling: Optional[dict] = None  # per-epoch sampling in the reader: {strategy: ros|rus|threshold|floor|
    #                                      hybrid|rates|dynamic, target, cap, floor, rates, seed, initial, epoch_rows}
    train_path: Optional[str] = None    # standalone `imbalance train`: materialized train data
    val_path: Optional[str] = None
    out: Optional[str] = None           # standalone: where checkpoints/model go
    resume: bool = True
    init_from: Optional[str] = None     # warm start: a model directory (same architecture)


@dataclass
class PredictSection:
    split: str = "test"
    model: Optional[str] = None         # standalone `imbalance predict`: model dir
    input: Optional[str] = None
    out: Optional[str] = None
    batch_size: int = 1024
    corrected: bool = True              # add probs_corrected (the model's prior correction and temperature)


@dataclass
class EvaluateSection:
    threshold_moving: Optional[str] = None  # None | prior | cost | tuned
    cost: Optional[list] = None             # binary cost threshold: [c10, c01]
    tune_metric: str = "f1"
    prior_correction: str = "auto"          # auto | on | off: move probabilities to the unsampled prior
    calibrate: Optional[str] = None         # None | temperature (fitted on the validation split)
    target_prior: Optional[dict] = None     # class label -> count or share that scoring corrects to
    #                                         (default: the training split before sampling; retrain sets
    #                                         it from the new partitions when the class prior moved)


@dataclass
class RegistrySection:
    model_name: str = "imbalance"       # the MLflow registered model (on tracking.uri) retrain adds versions to
    lock_timeout: float = 600.0         # seconds to wait for another process's register/promote (see pipeline.flows.promotion)


@dataclass
class TrackingSection:
    enabled: bool = True                # log runs, experiments and retrains to MLflow
    uri: Optional[str] = None           # None: sqlite:///<run.root>/mlflow.db, artifacts in <run.root>/mlartifacts;
    #                                     or a server, e.g. http://host:5000
    experiment: Optional[str] = None    # MLflow experiment name (default: the config file's stem, or run.id when set)


@dataclass
class RetrainSection:
    lake: Optional[str] = None
    partition_col: str = "ingest_date"
    tolerance: float = 0.01             # gate: macro-F1 may drop at most this much
    minority_recall_tolerance: float = 0.02  # gate: mean minority-class recall may drop at most this much
    warm_start: bool = True             # start from the production model's weights
    prior_shift: float = 0.02           # total variation between the production model's training prior and the
    #                                     new partitions' above which the candidate corrects to the new prior


@dataclass
class ExperimentSection:
    methods: list = field(default_factory=list)
    levels: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    out: Optional[str] = None
    parallel: Optional[int] = None      # trials at once as Ray tasks (None: one per CPU with in-process
    #                                     training, else 1); trials that train on Ray Train hold no CPU themselves
    metrics: list = field(default_factory=list)  # headline metrics to test (default: all the trial table has)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    spark: SparkSection = field(default_factory=SparkSection)
    ray: RaySection = field(default_factory=RaySection)
    data: DataSection = field(default_factory=DataSection)
    split: SplitSection = field(default_factory=SplitSection)
    sample: SampleSection = field(default_factory=SampleSection)
    stream: StreamSection = field(default_factory=StreamSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    predict: PredictSection = field(default_factory=PredictSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    retrain: RetrainSection = field(default_factory=RetrainSection)
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
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
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - annotations of this module only
    origin = typing.get_origin(annotation)
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
            raise ConfigError(f"unknown config key '{full}'")
        f = fields[key]
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Section")):
            sub_cls = globals()[f.type] if isinstance(f.type, str) else f.type
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
