"""Check a whole configuration before any stage runs: one line naming the problem, in seconds.

A misspelled value (``train.loss=focl``) must not cost the source, profile, split, sample and
materialize stages before training finds it. :func:`validate_config` asks the registries that
own each rule — they are the same functions the stages call later, so a new loss, model, method
or sampling strategy is validated as soon as it is registered:

========================================  =================================================
what                                      who owns the rule
========================================  =================================================
``train.loss``, ``train.loss_params``     :func:`pipeline.train.losses.check_loss` (builds the
                                          loss on stand-in class counts)
``model.*`` (name, depth, width, …)       :func:`pipeline.train.models.check_model_config`
``train.method``, ``method_params``       :func:`pipeline.train.hooks.build_hook` (hooks check
                                          their own parameters); two_phase: :func:`two_phase_settings`
``train.optimizer``                       :func:`pipeline.train.loop.build_optimizer`
``train.select_metric``                   :func:`pipeline.train.loop.check_select_metric`
``data.train_path`` (val, test)           :func:`presplit_paths`
``train.read_sampling`` (and augment)     :func:`pipeline.train.loop.read_sampling_spec`
``sample.*``                              :func:`pipeline.prep.sampling.check_request` /
                                          :func:`~pipeline.prep.sampling.check_target`
``stream.reader``                         :data:`pipeline.stream.readers.READERS`
``evaluate.threshold_moving``             :func:`pipeline.evaluation.thresholds.check_rule`
``train.amp_dtype``                       :func:`pipeline.train.loop.check_amp_dtype`
``evaluate.prior_correction``             :func:`pipeline.data.prior_correction.correction_mode`
``evaluate.calibrate``                    :func:`pipeline.data.prior_correction.check_calibrator`
``evaluate.target_prior``                 :func:`pipeline.data.prior_correction.check_target_prior`
``evaluate.precision_levels`` (recall,    :func:`pipeline.evaluation.binary.check_levels`
alert fractions)
========================================  =================================================

and the rules that join keys: a method that needs validation data when there is none, a
lenet/resnet on feature vectors, ``amp_dtype: fp16`` without a GPU (a warning: the setting has
no effect on CPU). Inputs named by the config must exist. Every problem raises
:class:`~pipeline.errors.ConfigError` (exit status 2 in the CLI).

The stages use what these checks return as it is: :func:`two_phase_settings` (typed, defaults
filled in) and :func:`presplit_paths` are what :mod:`pipeline.flows.run` reads.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Callable, Optional

from pipeline.config import (Config, DataSection, ImbalanceProtocol, ProtocolScope, ReadSampling, SampleSection,
                             TrainSection, TwoPhaseSettings)
from pipeline.data.images import check_options
from pipeline.data.ingest import LABEL_FROM
from pipeline.data.schema import has_info, read_info
from pipeline.data.synth import PRESET_KINDS
from pipeline.data.synth_rare import check_rare_args
from pipeline.errors import ConfigError, InputError
from pipeline.flows.compare import compare_methods
from pipeline.flows.reachable import check_clusters_reachable
from pipeline.flows.seeds import training_seeds
from pipeline.io import is_local, local_path
from pipeline.prep.sampling import check_request, check_target
from pipeline.evaluation.binary import check_levels
from pipeline.evaluation.thresholds import check_rule
from pipeline.train import PIPELINE_METHODS
from pipeline.data.prior_correction import check_calibrator, check_target_prior, correction_mode

#: The training loop's own ``train.method_params`` keys (any method may set them).
LOOP_KEYS = {"dynamic_sampling", "drw_epoch", "drw_beta", "category_centers", "centroid_metric",
             "centroid_temperature"}
#: What ``train.method: two_phase`` accepts in ``train.method_params``.
TWO_PHASE_KEYS = {"pretrain", "pretrain_epochs", "pretrain_read_sampling", "finetune_lr"} | LOOP_KEYS
COMMANDS = ("run", "experiment", "retrain", "train", "predict")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fail(where: str, e: Exception) -> ConfigError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(msg if where in msg or "config key" in msg else f"{where}: {msg}")


def _exists(what: str, path: Optional[str]) -> None:
    if path and is_local(path) and not local_path(path).exists():
        raise ConfigError(f"{what}: {path} does not exist")


def data_kind(cfg: Config, command: str = "run") -> tuple[Optional[str], Optional[int]]:
    """("image" | "features" | None, number of classes | None) as far as known without reading data."""
    table = None
    if command == "train":
        table = cfg.train.train_path
    elif cfg.data.train_path:
        table = cfg.data.train_path
    elif cfg.data.input:
        table = cfg.data.input
    elif cfg.data.images:
        return "image", None
    elif command in ("run", "experiment"):
        return PRESET_KINDS.get(cfg.data.synth_preset, (None, None))
    if table and is_local(table) and has_info(table):
        try:
            info = read_info(table)
            return ("image" if len(info.input_shape) == 3 else "features"), int(info.n_classes)
        except (InputError, OSError, ValueError, KeyError, TypeError):
            return None, None
    if cfg.data.image_shape:
        return "image", None
    return None, None


def _numbers(cfg: Config) -> None:
    tc = cfg.train
    rules = [("train.epochs", tc.epochs, 1), ("train.batch_size", tc.batch_size, 1),
             ("stream.batch_size", cfg.stream.batch_size, 1), ("predict.batch_size", cfg.predict.batch_size, 1),
             ("train.num_workers", tc.num_workers, 0), ("train.max_failures", tc.max_failures, 0),
             ("stream.workers_count", cfg.stream.workers_count, 1), ("data.rows", cfg.data.rows, 1)]
    for key, value, low in rules:
        if value < low:
            raise ConfigError(f"config key '{key}' must be >= {low}, got {value}")
    if tc.patience is not None and tc.patience < 1:
        raise ConfigError(f"config key 'train.patience' must be >= 1 or null, got {tc.patience}")
    for key, value in (("train.lr", tc.lr), ("train.cpus_per_worker", tc.cpus_per_worker),
                       ("stream.row_group_mb", cfg.stream.row_group_mb),
                       ("spark.connect_timeout_s", cfg.spark.connect_timeout_s),
                       ("ray.connect_timeout_s", cfg.ray.connect_timeout_s)):
        if not value > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    if tc.weight_decay < 0:
        raise ConfigError(f"config key 'train.weight_decay' must be >= 0, got {tc.weight_decay}")
    sp = cfg.split
    for key, value in (("split.val", sp.val), ("split.test", sp.test)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value}")
    if sp.val + sp.test >= 1.0:
        raise ConfigError(f"config keys split.val + split.test must be < 1, got {sp.val + sp.test:g}")
    d = cfg.data
    if d.input is None and not d.train_path and not d.images and d.synth_preset is None:
        raise ConfigError("config key 'data.images' (or data.input): this config reads your own data and has no "
                          "synthetic fallback (data.synth_preset is null); set data.images=/path/to/image/tree")
    if d.input is None and not d.train_path and not d.images and d.synth_preset not in PRESET_KINDS:
        raise ConfigError(f"unknown data.synth_preset '{d.synth_preset}' (known: {', '.join(PRESET_KINDS)})")
    if d.input is None and not d.train_path and not d.images and d.synth_preset == "rare":
        try:
            check_rare_args(d.positive_rate, d.features)
        except InputError as e:
            raise ConfigError(str(e)) from None
    protocols, scopes = typing.get_args(ImbalanceProtocol), typing.get_args(ProtocolScope)
    if d.protocol is not None and d.protocol not in protocols:
        raise ConfigError(f"unknown data.protocol '{d.protocol}' (known: {', '.join(protocols)}, or null)")
    if d.protocol_scope not in scopes:
        raise ConfigError(f"config key 'data.protocol_scope': expected {' or '.join(scopes)}, "
                          f"got '{d.protocol_scope}'")


def _images(d) -> None:
    """``data.images``: the decode options, the manifest rule and that the tree exists."""
    try:
        check_options(d.size, d.mode, d.resize, d.min_size)
    except ValueError as e:
        raise ConfigError(f"data.images: {e}") from None
    if d.label_from not in LABEL_FROM:
        raise ConfigError(f"config key 'data.label_from': expected {' or '.join(LABEL_FROM)}, got '{d.label_from}'")
    if d.label_from == "manifest" and not d.manifest:
        raise ConfigError("config key 'data.label_from' is manifest but data.manifest is not set")
    _exists("data.images", d.images)
    _exists("data.manifest", d.manifest)


def pretrain_section(raw: Optional[dict]) -> SampleSection:
    """two_phase's pre-training set, ``train.method_params.pretrain``, over its default (the
    thresholded set of Lee et al., "Plankton classification on imbalanced large scale database via
    convolutional neural networks with transfer learning", ICIP 2016,
    https://doi.org/10.1109/ICIP.2016.7533053: at most 5,000 rows per class); unknown keys are a
    ConfigError."""
    default = SampleSection(strategy="threshold", cap=5000)
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'train.method_params.pretrain' must be a mapping, got {raw!r}")
    fields = {f.name for f in dataclasses.fields(SampleSection)}
    for k in raw:
        if k not in fields:
            raise ConfigError(f"unknown config key 'train.method_params.pretrain.{k}'")
    return SampleSection(**{**dataclasses.asdict(default), **raw})


def two_phase_settings(tc: TrainSection) -> TwoPhaseSettings:
    """``train.method: two_phase``'s keys of ``train.method_params``, checked (a :class:`ConfigError`
    naming the key) and with their defaults filled in: the stages use them as they are."""
    mp = tc.method_params or {}
    if "pretrain" in mp and "pretrain_read_sampling" in mp:
        raise ConfigError("train.method_params: give two_phase either 'pretrain' (a sampled set) or "
                          "'pretrain_read_sampling' (sampling in the reader), not both")
    epochs = mp.get("pretrain_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"config key 'train.method_params.pretrain_epochs': expected an integer >= 1, "
                          f"got {epochs!r}")
    lr = mp.get("finetune_lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"config key 'train.method_params.finetune_lr': expected a number > 0, got {lr!r}")
    read = mp.get("pretrain_read_sampling")
    return TwoPhaseSettings(pretrain=None if read is not None else pretrain_section(mp.get("pretrain")),
                            read_sampling=read, epochs=int(epochs if epochs is not None else max(1, tc.epochs)),
                            finetune_lr=None if lr is None else float(lr))


def presplit_paths(d: DataSection) -> Optional[dict]:
    """``{"train", "val", "test"}``: the tables of data that already has a split (None: the run
    splits its source). All three or none (a :class:`ConfigError` naming the missing one)."""
    paths = {"train": d.train_path, "val": d.val_path, "test": d.test_path}
    if not any(paths.values()):
        return None
    missing = [f"{k}_path" for k, v in paths.items() if not v]
    if missing:
        raise ConfigError(f"config keys data.train_path/val_path/test_path: '{missing[0]}' is missing")
    return paths


def _sampling(where: str, section: SampleSection) -> None:
    try:
        check_request(section.strategy, section.cap, section.floor)
        check_target(section.strategy, section.target)
    except InputError as e:
        raise _fail(where, e) from None


def _training(cfg: Config, kind: Optional[str], n_classes: Optional[int], has_val: bool) -> None:
    """The per-worker rules (model, loss, optimizer, method, read sampling), checked on the driver."""
    # deferred: torch is slow to import (the registries below build torch modules)
    from pipeline.stream.readers import READERS
    # deferred: torch is slow to import
    from pipeline.train.hooks import HOOKS
    # deferred: torch is slow to import
    from pipeline.train.loop import centers_params, check_select_metric, read_sampling_spec

    _model_loss_optimizer(cfg, kind, n_classes)
    if cfg.stream.reader not in READERS:
        raise ConfigError(f"unknown stream.reader '{cfg.stream.reader}' (known: {', '.join(READERS)})")
    check_select_metric(cfg.train.select_metric)
    method = _method(cfg, n_classes)
    _read_sampling(cfg)
    centers_params(cfg.train)
    if not has_val and method in HOOKS and HOOKS[method].needs_validation:   # learns from validation data
        raise ConfigError(f"train.method={method} needs validation data, but there is none "
                          "(set split.val > 0, data.val_path or train.val_path)")
    read_sampling_spec(cfg.train, has_val=has_val)   # dynamic sampling learns from it too


def _model_loss_optimizer(cfg: Config, kind: Optional[str], n_classes: Optional[int]) -> None:
    """``model.*``, ``train.loss`` with its parameters, ``train.optimizer`` and ``train.amp_dtype``."""
    # deferred: torch is slow to import (the registries below build torch modules)
    import torch
    # deferred: torch is slow to import
    from pipeline.train.loop import build_optimizer, check_amp_dtype, split_loss_params
    # deferred: torch is slow to import
    from pipeline.train.losses import check_loss
    # deferred: torch is slow to import
    from pipeline.train.models import check_model_config

    tc = cfg.train
    try:
        check_model_config(cfg.model, image=None if kind is None else kind == "image")
    except InputError as e:
        raise _fail("model", e) from None
    try:
        loss_params, _ = split_loss_params(tc)
        check_loss(tc.loss, loss_params, n_classes)
    except InputError as e:
        raise _fail("train.loss", e) from None
    try:
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], tc)
    except ValueError as e:  # torch's own range checks (lr, momentum, weight decay)
        raise ConfigError(f"train.optimizer {tc.optimizer}: {e}") from None
    check_amp_dtype(tc.amp_dtype)


def _method(cfg: Config, n_classes: Optional[int]) -> str:
    """``train.method`` and its ``train.method_params`` (two_phase: :func:`two_phase_settings`),
    ``run.compare_with`` and ``run.seeds``; returns the method."""
    # deferred: torch is slow to import (the hook registry builds torch modules)
    from pipeline.train.hooks import build_hook, hook_names

    method, mp = cfg.train.method, dict(cfg.train.method_params or {})
    known = list(PIPELINE_METHODS) + hook_names()
    if method not in known:
        raise ConfigError(f"config key 'train.method': unknown method '{method}' (choose from: {', '.join(known)})")
    compare_methods(cfg, known)  # run.compare_with names known methods
    training_seeds(cfg)          # run.seeds: distinct integers
    if method not in PIPELINE_METHODS:
        _build_hook(build_hook, method, mp, n_classes)
        return method
    allowed = TWO_PHASE_KEYS if method == "two_phase" else LOOP_KEYS
    for k in mp:
        if k not in allowed:
            raise ConfigError(f"unknown config key 'train.method_params.{k}' for {method} "
                              f"(known: {', '.join(sorted(allowed))})")
    return method


def _read_sampling(cfg: Config) -> None:
    """``train.read_sampling`` (and two_phase's pre-training set or reader sampling)."""
    # deferred: torch is slow to import
    from pipeline.train.loop import read_sampling_spec

    tc = cfg.train
    spec = read_sampling_spec(tc)
    if tc.method == "two_phase":
        phase1 = two_phase_settings(tc)
        if phase1.read_sampling is not None:
            read_sampling_spec(dataclasses.replace(tc, read_sampling=phase1.read_sampling))
        elif (tc.method_params or {}).get("pretrain") is not None:
            _sampling("train.method_params.pretrain", phase1.pretrain)
    _read_rule("train.read_sampling", spec)
    read_sampling_spec(tc, reader=cfg.stream.reader)


def _read_rule(where: str, spec: Optional[ReadSampling]) -> None:
    """A read-sampling spec's sampler request (the strategies the Spark sampler shares)."""
    if spec is not None and spec.strategy in ("ros", "rus", "threshold", "floor", "hybrid"):
        try:
            check_request(spec.strategy, spec.cap, spec.floor)
            check_target(spec.strategy, spec.target)
        except InputError as e:
            raise _fail(where, e) from None


def _build_hook(build_hook: Callable, method: str, params: dict, n_classes: Optional[int]) -> None:
    """Build the method's hook on stand-in class counts (its parameter checks run in its constructor).
    With the number of classes unknown, a per-class parameter's length stands in for it."""
    candidates = [n_classes] if n_classes else [2] + sorted(
        {len(v) for v in params.values() if isinstance(v, (list, tuple)) and len(v) > 2})
    first = None
    for n in candidates:
        try:
            build_hook(method, params, n, [1.0] * n, 64)
            return
        except InputError as e:
            first = first or e
        except (TypeError, ValueError) as e:
            first = first or ConfigError(f"train.method_params for {method}: {e}")
    raise _fail("train.method_params", first) from None


def validate_config(cfg: Config, command: str = "run", warn: Callable[[str], None] = _stderr) -> list[str]:
    """Check ``cfg`` for ``imbalance <command>`` before anything runs or is written.

    Raises :class:`ConfigError` (one line naming the key) for the first problem found; returns the
    warnings (already passed to ``warn``). The clusters it names must answer too
    (:func:`pipeline.flows.reachable.check_clusters_reachable`), checked last because it may wait.
    """
    warnings = _check_values(cfg, command, warn)
    check_clusters_reachable(cfg)
    return warnings


def _check_values(cfg: Config, command: str, warn: Callable[[str], None]) -> list[str]:
    """Every rule on the config's values and inputs (see :func:`validate_config`)."""
    if command not in COMMANDS:
        raise ValueError(f"validate_config: unknown command {command!r}")
    _numbers(cfg)
    if command in ("run", "experiment"):
        _source(cfg.data)
    if command == "experiment" and cfg.run.seeds is not None:
        raise ConfigError("config key 'run.seeds': an experiment takes its seeds from experiment.seeds")
    if command == "retrain":
        _retrain(cfg)
    if command == "train":
        _standalone_train(cfg)
    for key in ("init_from",):
        path = getattr(cfg.train, key)
        _exists(f"train.{key}", path)
        if path and is_local(path) and not (local_path(path) / "model.pt").is_file():
            raise ConfigError(f"train.{key}: {path} has no model.pt: not a model directory")
    if command == "predict":
        _standalone_predict(cfg)
        return []

    kind, n_classes = data_kind(cfg, command)
    if command != "train":
        has_val = bool(cfg.data.val_path) or cfg.split.val > 0
        _sampling("sample", cfg.sample)
        _evaluation(cfg, n_classes, has_val)
    else:
        has_val = bool(cfg.train.val_path)
    _training(cfg, kind, n_classes, has_val)
    warnings = _amp_warnings(cfg)
    for w in warnings:
        warn(w)
    return warnings


def _source(d: DataSection) -> None:
    """The run's source: pre-split tables (all three), a table or an image tree (one of them), and that it exists."""
    paths = presplit_paths(d)
    if paths is not None:
        for k, path in paths.items():
            _exists(f"data.{k}_path", path)
    elif d.input and d.images:
        raise ConfigError("config keys data.input and data.images: give one source, not both")
    elif d.images:
        _images(d)
    else:
        _exists("data.input", d.input)


def _retrain(cfg: Config) -> None:
    """``imbalance retrain``: the lake, tracking on, the registered model's name and the gate's tolerances."""
    if not cfg.retrain.lake:
        raise ConfigError("config key 'retrain.lake' is required: the partitioned lake table to train on")
    _exists("retrain.lake", cfg.retrain.lake)
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled: retrain registers its candidates in the MLflow Model Registry, "
                          "so tracking must be on")
    name = cfg.registry.model_name
    if not isinstance(name, str) or not name.strip() or any(ch in name for ch in "/:'\"%"):
        raise ConfigError(f"registry.model_name: {name!r} is not a registered model name "
                          "(non-empty, without / : ' \" %)")
    for key, value in (("retrain.tolerance", cfg.retrain.tolerance), ("retrain.prior_shift", cfg.retrain.prior_shift),
                       ("retrain.minority_recall_tolerance", cfg.retrain.minority_recall_tolerance),
                       ("registry.lock_timeout", cfg.registry.lock_timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ConfigError(f"{key} must be a number >= 0, got {value!r}")


def _standalone_train(cfg: Config) -> None:
    if not cfg.train.train_path:
        raise ConfigError("train.train_path is not set (the materialized training table)")
    if not cfg.train.out:
        raise ConfigError("train.out is not set (where checkpoints and the model go)")
    _exists("train.train_path", cfg.train.train_path)
    _exists("train.val_path", cfg.train.val_path)


def _standalone_predict(cfg: Config) -> None:
    if not cfg.predict.model:
        raise ConfigError("predict.model is not set (the model directory)")
    if not cfg.predict.input:
        raise ConfigError("predict.input is not set (the table to predict)")
    if not cfg.predict.out:
        raise ConfigError("predict.out is not set (where the predictions go)")
    _exists("predict.model", cfg.predict.model)
    _exists("predict.input", cfg.predict.input)


def _evaluation(cfg: Config, n_classes: Optional[int], has_val: bool) -> None:
    """``evaluate.*``: threshold moving, prior correction, calibration, the target prior and the levels."""
    ev = cfg.evaluate
    try:
        check_rule(ev.threshold_moving, ev.cost, ev.tune_metric, n_classes)
    except InputError as e:
        raise _fail("evaluate.threshold_moving", e) from None
    for key, check in (("prior_correction", correction_mode), ("calibrate", check_calibrator),
                       ("target_prior", check_target_prior)):
        try:
            check(getattr(ev, key))
        except ValueError as e:
            raise ConfigError(f"config key 'evaluate.{key}': {e}") from None
    for key in ("precision_levels", "recall_levels", "alert_fractions"):
        try:
            check_levels(getattr(ev, key))
        except ValueError as e:
            raise ConfigError(f"config key 'evaluate.{key}': {e}") from None
    if check_calibrator(ev.calibrate) and not has_val:
        raise ConfigError("config key 'evaluate.calibrate': temperature scaling is fitted on the validation "
                          "split, and this run has none (split.val is 0)")


def _amp_warnings(cfg: Config) -> list[str]:
    """``amp_dtype: fp16`` without a GPU: a warning (the setting has no effect on CPU)."""
    tc = cfg.train
    if not (tc.amp and str(tc.amp_dtype).lower() in ("fp16", "float16", "half")):
        return []
    if tc.use_gpu is False:
        return ["warning: train.amp_dtype=fp16 has no effect without a GPU (train.use_gpu is false): "
                "training runs in float32"]
    if tc.use_gpu is None and cfg.ray.address is None and not _cuda():
        return ["warning: train.amp_dtype=fp16 has no effect without a GPU (none is visible): "
                "training runs in float32"]
    return []


def _cuda() -> bool:
    # deferred: torch is slow to import
    import torch

    return torch.cuda.is_available()


__all__ = ["validate_config", "data_kind", "pretrain_section", "presplit_paths", "two_phase_settings",
           "TWO_PHASE_KEYS", "LOOP_KEYS"]
