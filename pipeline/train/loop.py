"""The per-worker training loop: plain PyTorch, runnable in one process or inside Ray Train.

:func:`run_training` trains one model on this worker's shard of the training table and validates
it on the validation table every epoch. It knows nothing about Ray: distribution comes from an
already initialised ``torch.distributed`` process group (Ray's ``TorchTrainer`` sets one up;
without one it trains alone), checkpoints go through two small hooks:

* ``resume_dir`` — a checkpoint directory to continue from (Ray: ``ray.train.get_checkpoint()``);
* ``report_fn(metrics, checkpoint_dir_or_None)`` — called by every rank once per epoch (rank 0
  passes the directory it just wrote). Without a hook the loop keeps its checkpoints itself in
  ``<out_dir>/checkpoints/epoch-NNNN`` and resumes from the newest one.

A checkpoint directory holds ``state.pt`` (model, optimizer, scaler; loaded with
``torch.load(..., weights_only=True)``), ``best_model.pt`` (the best epoch's weights so far) and
``progress.json`` (epochs done, history, best epoch and its validation metrics, early-stopping
counter). Epochs are numbered 1..N everywhere a user sees them, as the log's "epoch k/N" lines
(``best_epoch``, ``history[].epoch``, ``epochs_done``); the loop variable and the method hooks'
``EpochContext.epoch`` are the 0-based index (epoch k/N has index k - 1).

Per epoch: a tqdm bar with rows/s (rank 0), mixed precision on GPU (bf16 autocast, or fp16 with
a ``GradScaler``), validation macro-F1 and per-class recall from a confusion matrix summed over
workers (two-class data also the positive class's PR AUC and ROC AUC, from a histogram of its
log-odds summed over workers: :func:`confusion.ranking_from_histogram`), best-epoch selection and early stopping on ``train.select_metric`` with
``train.patience``, and LDAM-DRW (deferred re-weighting, Cao et al. 2019): from epoch
``drw_epoch`` on, the LDAM loss uses the class-balanced weights of :func:`losses.drw_weights`.

Two of the survey's methods run inside the loop (see ``docs/methods.md``):

* **read-time sampling** (``train.read_sampling``): per-class rates for the
  streaming reader each epoch — ROS / RUS / threshold / floor / hybrid targets from
  :func:`pipeline.prep.sampling.plan_counts` (rate = target / n_c), explicit rates, or **dynamic
  sampling** (Pouyanfar et al. 2018, survey Eq. 11; also ``train.method_params.dynamic_sampling:
  true``): after each epoch's validation the per-class F1 (from the confusion matrix all-reduced
  over workers, so every rank computes the same rates; rank 0's are broadcast anyway) gives the
  next epoch's rates by :func:`methods.dynamic_sampling_rates`. Each epoch's rates are kept in the
  history (``read_rates``) and a resumed run recomputes them from it;
* **category centers** (Zhang et al.; ``train.method_params.category_centers: true``): after
  training, one pass over the training table with the best weights computes each class's
  centroid of the deep features (:class:`methods.CentroidAccumulator`, summed over workers); the
  trainer saves them as ``model/centroids.pt`` and prediction assigns the nearest centroid.

References:

* S. Pouyanfar et al., "Dynamic sampling in convolutional neural networks for imbalanced data
  classification", IEEE MIPR 2018, https://doi.org/10.1109/MIPR.2018.00027
* K. Cao, C. Wei, A. Gaidon, N. Arechiga, T. Ma, "Learning Imbalanced Datasets with
  Label-Distribution-Aware Margin Loss", NeurIPS 2019, https://arxiv.org/abs/1906.07413
* Zhang et al., "Image Classification with Category Centers in Class Imbalance Situation", 33rd Youth
  Academic Annual Conference of Chinese Association of Automation (YAC) 2018 (survey: "Category centers")
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipeline.config import ReadSampling, ReadStrategy
from pipeline.data.schema import DatasetInfo, positive_class, read_info
from pipeline.errors import ConfigError, InputError
from pipeline.io import console_line, fingerprint, read_json, write_json
from pipeline.prep.sampling_plan import plan_counts
from pipeline.stream.read_sampling import epoch_sampling_plan
from pipeline.stream.readers import check_table, make_loader, to_float
from pipeline.train.confusion import (MARGIN_BINS, confusion_matrix, margin_histogram, metrics_from_confusion,
                                      ranking_from_histogram)
from pipeline.train.hooks import METHOD_STATE_FILE, EpochContext, MethodHook, build_hook
from pipeline.train.progress import NoBar, bars_wanted
from pipeline.train.saved_model import CENTROIDS_FILE, load_weights
from pipeline.train.table_pass import pick_device, table_once

METRICS_HIGHER = ("macro_f1", "balanced_accuracy", "accuracy", "g_mean", "macro_recall", "pr_auc", "roc_auc")
#: two-class data only: the positive class's validation PR AUC and ROC AUC (binned, see ``confusion``)
RANKING_METRICS = ("pr_auc", "roc_auc")
METRICS_LOWER = ("val_loss",)
DRW_KEYS = ("drw_epoch", "drw_beta")


# ------------------------------------------------------------------ metrics
def metric_better(name: str, new: float, old: Optional[float]) -> bool:
    if old is None:
        return True
    return new < old if name in METRICS_LOWER else new > old


# ------------------------------------------------------------------ pieces
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a small CPU tensor over workers (through the device when the backend is NCCL)."""
    if not _distributed():
        return t
    if dist.get_backend() == "nccl":
        d = t.to(device)
        dist.all_reduce(d)
        return d.cpu()
    dist.all_reduce(t)
    return t


OPTIMIZERS = {
    "adam": lambda params, tc: torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay),
    "adamw": lambda params, tc: torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay),
    "sgd": lambda params, tc: torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay),
}


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """``train.optimizer`` (a name of :data:`OPTIMIZERS`) over ``params``, with the section's lr,
    weight decay and (sgd) momentum."""
    name = str(train_cfg.optimizer).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown train.optimizer '{train_cfg.optimizer}' (known: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](params, train_cfg)


def check_select_metric(name: str, n_classes: Optional[int] = None) -> str:
    """``train.select_metric``: a name of :data:`METRICS_HIGHER` or :data:`METRICS_LOWER`; the
    ranking metrics (:data:`RANKING_METRICS`) need two-class data (``n_classes``, when known).
    Raises :class:`ConfigError`."""
    known = METRICS_HIGHER + METRICS_LOWER
    if name not in known:
        raise ConfigError(f"unknown train.select_metric '{name}' (known: {', '.join(known)})")
    if name in RANKING_METRICS and n_classes is not None and n_classes != 2:
        raise ConfigError(f"train.select_metric '{name}' needs two-class data; the validation table "
                          f"has {n_classes} classes")
    return name


@dataclass(frozen=True)
class DrwSchedule:
    """LDAM-DRW's deferred re-weighting (Cao et al. 2019): class-balanced weights with ``beta`` from
    epoch ``epoch`` on (None: never)."""
    epoch: Optional[int] = None
    beta: float = 0.9999


def split_loss_params(train_cfg) -> tuple[dict, DrwSchedule]:
    """(parameters for build_loss, DRW schedule) — ``drw_epoch``/``drw_beta`` may sit in
    ``train.loss_params`` or ``train.method_params``. Raises :class:`ConfigError`."""
    params = dict(train_cfg.loss_params or {})
    drw = {k: params.pop(k) for k in DRW_KEYS if k in params}
    for k in DRW_KEYS:
        if k in (train_cfg.method_params or {}) and k not in drw:
            drw[k] = train_cfg.method_params[k]
    if drw.get("drw_epoch") is not None:
        if str(train_cfg.loss).lower() != "ldam":
            raise ConfigError(f"train drw_epoch needs train.loss=ldam (got '{train_cfg.loss}')")
        e = drw["drw_epoch"]
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ConfigError(f"train drw_epoch must be a non-negative integer, got {e!r}")
    b = drw.get("drw_beta", DrwSchedule.beta)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
        raise ConfigError(f"train drw_beta must be a number in [0, 1), got {b!r}")
    return params, DrwSchedule(epoch=drw.get("drw_epoch"), beta=float(b))


def drw_weight_for_epoch(epoch: int, drw: DrwSchedule, counts: np.ndarray) -> Optional[np.ndarray]:
    """LDAM-DRW schedule (Cao et al. 2019): weights 1 (None) before ``drw_epoch``, then the
    class-balanced weights (1 − β)/(1 − β^{n_c}) (normalised to sum to C) of ``losses.drw_weights``."""
    # deferred: torch is slow to import
    from pipeline.train.losses import drw_weights

    if drw.epoch is None or epoch < drw.epoch:
        return None
    return drw_weights(counts, drw.beta)


def class_counts_array(info: DatasetInfo) -> np.ndarray:
    if not info.class_counts:
        raise InputError("the training table's _dataset.json has no class_counts (needed by the loss)")
    counts = np.zeros(info.n_classes, dtype=np.float64)
    for k, v in info.class_counts.items():
        i = int(k)
        if 0 <= i < info.n_classes:
            counts[i] = float(v)
    return counts


class _RayBar:
    """tqdm-like adapter over Ray's ``tqdm_ray``, which draws a worker's bar on the driver."""

    def __init__(self, total: int, desc: str):
        # deferred: ray is slow to import
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        self.desc = desc
        self.bar = ray_tqdm(total=total, desc=desc)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **kw) -> None:
        self.bar.set_description(self.desc + " " + " ".join(f"{k}={v}" for k, v in kw.items()))

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int, desc: str, in_ray: bool):
    """A per-epoch progress bar: Ray's driver-side bar inside Ray Train, plain tqdm otherwise."""
    if not bars_wanted():  # not on a terminal: the epoch's summary line only
        return NoBar()
    if in_ray:
        return _RayBar(total, desc)

    return tqdm(total=total, desc=desc, unit="batch", leave=False, mininterval=1.0)


# ------------------------------------------------------------------ read-time sampling
READ_STRATEGIES = typing.get_args(ReadStrategy)
READ_KEYS = {"strategy", "target", "cap", "floor", "rates", "seed", "initial", "epoch_rows", "augment"}


def read_sampling_spec(train_cfg, *, reader: Optional[str] = None,
                       has_val: Optional[bool] = None) -> Optional[ReadSampling]:
    """``train.read_sampling`` normalised (None: off), with ``method_params.dynamic_sampling: true``
    meaning ``{strategy: dynamic}``. Raises :class:`ConfigError` naming the bad key. When given,
    ``reader`` (``stream.reader``) must be petastorm for any sampling, and ``has_val`` (is there
    validation data) true for dynamic sampling."""
    spec = _read_sampling_spec(train_cfg)
    if spec is not None and spec.strategy != "none" and reader is not None and reader != "petastorm":
        raise ConfigError(f"train.read_sampling needs stream.reader=petastorm, got {reader!r}")
    if spec is not None and spec.strategy == "dynamic" and has_val is False:
        raise ConfigError("dynamic sampling needs validation data (its per-class F1 sets the next epoch's "
                          "rates), but there is none (set split.val > 0, data.val_path or train.val_path)")
    return spec


def _read_sampling_spec(train_cfg) -> Optional[ReadSampling]:
    raw = train_cfg.read_sampling
    dyn = (train_cfg.method_params or {}).get("dynamic_sampling", False)
    if not isinstance(dyn, bool):
        raise ConfigError(f"config key 'train.method_params.dynamic_sampling': expected true/false, got {dyn!r}")
    if raw is None:
        return ReadSampling(strategy="dynamic") if dyn else None
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'train.read_sampling' must be a mapping or null, got {raw!r}")
    for k in raw:
        if k not in READ_KEYS:
            raise ConfigError(f"unknown config key 'train.read_sampling.{k}' (known: {', '.join(sorted(READ_KEYS))})")
    spec = dict(raw)
    strategy = str(spec.get("strategy", "")).strip().lower()
    if strategy not in READ_STRATEGIES:
        raise ConfigError(f"config key 'train.read_sampling.strategy': expected one of "
                          f"{', '.join(READ_STRATEGIES)}, got {spec.get('strategy')!r}")
    if dyn and strategy != "dynamic":
        raise ConfigError("train.method_params.dynamic_sampling is true but train.read_sampling.strategy is "
                          f"'{strategy}': use one or the other")
    spec["strategy"] = strategy
    if strategy == "rates" and not isinstance(spec.get("rates"), (list, dict)):
        raise ConfigError("config key 'train.read_sampling.rates': strategy 'rates' needs a list (one rate per "
                          "class) or a mapping class → rate")
    if spec.get("initial", "ones") not in ("ones", "balanced"):
        raise ConfigError(f"config key 'train.read_sampling.initial': expected ones or balanced, "
                          f"got {spec['initial']!r}")
    s = spec.get("seed")
    if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
        raise ConfigError(f"config key 'train.read_sampling.seed': expected an integer, got {s!r}")
    e = spec.get("epoch_rows")
    if e is not None and e != "table" and (isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0):
        raise ConfigError(f"config key 'train.read_sampling.epoch_rows': expected a positive number or 'table', "
                          f"got {e!r}")
    # deferred: torch is slow to import
    from pipeline.stream.augment import augment_spec

    spec["augment"] = augment_spec(spec.get("augment"))
    return ReadSampling(**spec)


def static_read_rates(spec: ReadSampling, counts: np.ndarray) -> np.ndarray:
    """Per-class rates of a fixed strategy: ``plan_counts`` target / class size (explicit ``rates``
    as given; classes a mapping does not name keep rate 1). An empty class gets rate 0."""
    k = len(counts)
    strategy = spec.strategy
    if strategy == "rates":
        given = spec.rates
        r = np.ones(k)
        if isinstance(given, dict):
            for lab, v in given.items():
                i = int(lab)
                if not 0 <= i < k:
                    raise ConfigError(f"train.read_sampling.rates names class {lab!r}; classes are 0..{k - 1}")
                r[i] = float(v)
        else:
            if len(given) != k:
                raise ConfigError(f"train.read_sampling.rates has {len(given)} rates for {k} classes")
            r = np.asarray(given, dtype=float)
        if np.any(~np.isfinite(r)) or np.any(r < 0):
            raise ConfigError(f"train.read_sampling.rates must be finite and >= 0, got {r.tolist()}")
        return r
    plan = plan_counts({i: int(n) for i, n in enumerate(counts)}, strategy, spec.target, cap=spec.cap,
                       floor=spec.floor)
    rates = np.zeros(k)
    for i, n in enumerate(counts):
        if n > 0:
            rates[i] = float(plan.get(i, n)) / float(n)
    return rates


def dynamic_n_star(spec: ReadSampling, counts: np.ndarray) -> float:
    """N* of Eq. 11: the rows one epoch draws. Default the average class size (the survey's N*);
    ``epoch_rows: table`` draws as many rows as the table has, a number that many rows."""
    e = spec.epoch_rows
    if e is None:
        return float(counts.mean())
    if e == "table":
        return float(counts.sum())
    return float(e)


def epoch_read_rates(spec: Optional[ReadSampling], counts: np.ndarray, epoch: int, history: list) -> Optional[np.ndarray]:
    """This epoch's per-class read rates (None: read every row once).

    Dynamic sampling (Pouyanfar et al., Eq. 11): epoch 0 uses rate 1 (``initial: ones``) or the
    balanced draw N*/K per class (``initial: balanced``); every later epoch uses the previous
    epoch's per-class validation F1 (a class without validation rows counts as F1 0).
    """
    # deferred: torch is slow to import
    from pipeline.train.methods import dynamic_sampling_rates

    if spec is None or spec.strategy == "none":
        return None
    if spec.strategy != "dynamic":
        return static_read_rates(spec, counts)
    n_star = dynamic_n_star(spec, counts)
    prev = history[-1] if history else None
    if prev is None or epoch == 0:
        if spec.initial == "ones":
            return np.where(counts > 0, 1.0, 0.0)
        return dynamic_sampling_rates(np.zeros(len(counts)), counts, n_star)
    f1 = [float("nan") if v is None else float(v) for v in prev["val_f1_per_class"]]
    return dynamic_sampling_rates(f1, counts, n_star)


def _same_on_all_ranks(values: np.ndarray, rank: int, device: torch.device) -> np.ndarray:
    """Rank 0's values on every rank (a sum where the other ranks add zeros: exact)."""
    if not _distributed():
        return values
    t = torch.tensor(values if rank == 0 else np.zeros_like(values), dtype=torch.float64)
    return _all_reduce(t, device).numpy()


# ------------------------------------------------------------------ category centers (Zhang et al.)
def centers_params(train_cfg) -> Optional[dict]:
    """``method_params.category_centers`` (true/false) with ``centroid_metric`` (euclidean | cosine)
    and ``centroid_temperature`` (> 0, the softmax temperature of prediction's probabilities)."""
    mp = train_cfg.method_params or {}
    on = mp.get("category_centers", False)
    if not isinstance(on, bool):
        raise ConfigError(f"config key 'train.method_params.category_centers': expected true/false, got {on!r}")
    if not on:
        return None
    metric = mp.get("centroid_metric", "euclidean")
    if metric not in ("euclidean", "cosine"):
        raise ConfigError(f"config key 'train.method_params.centroid_metric': expected euclidean or cosine, "
                          f"got {metric!r}")
    temp = mp.get("centroid_temperature", 1.0)
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp > 0:
        raise ConfigError(f"config key 'train.method_params.centroid_temperature': expected a number > 0, "
                          f"got {temp!r}")
    return {"metric": metric, "temperature": float(temp)}


@torch.no_grad()
def compute_centroids(net: nn.Module, path: str, info: DatasetInfo, device: torch.device, batch_size: int, *,
                      reader: str = "petastorm", rank: int = 0, world_size: int = 1, autocast=None,
                      workers_count: int = 2) -> torch.Tensor:
    """Category centers (Zhang et al.): each class's mean deep feature over the table, every row once.

    Every worker reads its own shard (rank 0 reads all when the table has fewer row groups than
    workers) and the per-class sums are all-reduced, so all ranks return the same (C, d) tensor.
    """
    # deferred: torch is slow to import
    from pipeline.train.methods import CentroidAccumulator

    net = _unwrap(net)
    was_training = net.training
    net.eval()
    acc = CentroidAccumulator(info.n_classes, dim=int(net.feature_dim), device="cpu")
    for x, y in table_once(path, info, device, batch_size, reader=reader, rank=rank, world_size=world_size,
                            workers_count=workers_count, dataset_name="train"):
        with (autocast if autocast is not None else torch.autocast(device.type, enabled=False)):
            _, feats = net(x, return_features=True)
        acc.update(feats.float().cpu(), y)
    if _distributed() and dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        acc.sums, acc.counts = acc.sums.to(device), acc.counts.to(device)
    cent = acc.centroids().cpu()
    net.train(was_training)
    return cent


def _config_fingerprint(cfg, train_path, val_path, init_from) -> str:
    """What a local checkpoint must match to be resumed (epochs may grow; paths, model, loss may not)."""
    train = cfg.section("train")
    for k in ("epochs", "resume", "progress", "max_failures", "patience", "out", "num_workers",
              "cpus_per_worker"):
        train.pop(k, None)
    return fingerprint(cfg.section("model"), train, cfg.stream.reader, str(train_path), str(val_path),
                       str(init_from))[:16]


def _autocast(device: torch.device, train_cfg):
    if device.type != "cuda" or not train_cfg.amp:
        return torch.autocast(device_type=device.type, enabled=False), None
    if check_amp_dtype(train_cfg.amp_dtype) == "fp16":
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast("cuda", dtype=torch.bfloat16), None


def check_amp_dtype(value) -> str:
    """``train.amp_dtype`` normalised to bf16 or fp16 (ConfigError otherwise)."""
    dt = str(value).lower()
    if dt in ("fp16", "float16", "half"):
        return "fp16"
    if dt in ("bf16", "bfloat16"):
        return "bf16"
    raise ConfigError(f"train.amp_dtype must be bf16 or fp16, got {value!r}")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}


# ------------------------------------------------------------------ validation
@torch.no_grad()
def evaluate_table(model: nn.Module, path: str, info: DatasetInfo, device: torch.device, batch_size: int, *,
                   reader: str = "petastorm", rank: int = 0, world_size: int = 1,
                   autocast=None, workers_count: int = 2, predict_fn=None,
                   positive: Optional[int] = None) -> tuple[np.ndarray, float, Optional[np.ndarray]]:
    """(confusion matrix, mean cross-entropy, margin histogram) over the whole table, each row once,
    summed over workers. The histogram (:func:`~pipeline.train.confusion.margin_histogram` of the
    ``positive`` class's log-odds) is ``None`` unless ``positive`` is given (two-class data).

    ``predict_fn(net, x) -> probabilities``: a method's own decision rule (e.g. CoSen's costs,
    LMLE's cluster-wise kNN) for the confusion matrix; the cross-entropy is always the logits'.

    Workers read their own Petastorm shard; a table with fewer row groups than workers (or the
    Ray Data reader, whose validation set is not split) is read by rank 0 alone.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    c = info.n_classes
    cm = torch.zeros(c * c, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    hist = torch.zeros(0 if positive is None else 2 * MARGIN_BINS, dtype=torch.float64)
    for x, y in table_once(path, info, device, batch_size, reader=reader, rank=rank, world_size=world_size,
                            workers_count=workers_count, dataset_name="val"):
        y = y.to(device)
        with (autocast if autocast is not None else torch.autocast(device.type, enabled=False)):
            logits = net(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double().cpu()
        probs = None if predict_fn is None else predict_fn(net, x).to(y.device)
        pred = logits.argmax(1) if probs is None else probs.argmax(1)
        cm += confusion_matrix(y, pred, c).reshape(-1).double().cpu()
        if positive is not None:
            scores = logits if probs is None else torch.log(probs.double().clamp_min(1e-300))
            margin = scores[:, positive] - scores[:, 1 - positive]
            hist += margin_histogram(margin, y == positive).reshape(-1).double().cpu()
    both = _all_reduce(torch.cat([cm, hist, loss_sum]), device)
    cm = both[:c * c].reshape(c, c).numpy()
    n = cm.sum()
    net.train(was_training)
    return (cm, float(both[-1].item() / n) if n else float("nan"),
            None if positive is None else both[c * c:-1].reshape(2, MARGIN_BINS).numpy())


# ------------------------------------------------------------------ checkpoints
PROGRESS_FILE = "progress.json"


@dataclass
class TrainingProgress:
    """A run's progress, as a checkpoint's ``progress.json`` keeps it (same keys).

    Epochs are numbered 1..N as the log's "epoch k/N" lines: ``epochs_done``, ``best_epoch`` and
    ``history[].epoch``. ``config`` is the fingerprint a local checkpoint must match to be resumed;
    ``best_value`` is ``train.select_metric`` at the best epoch; ``bad_epochs`` counts the epochs since
    then (early stopping).
    """

    config: Optional[str] = None
    epochs_done: int = 0
    history: list = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_value: Optional[float] = None
    best_metrics: Optional[dict] = None
    bad_epochs: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingProgress":
        """Today's and older files: checkpoints written before the log's numbering kept ``epoch``
        (0-based index of the last finished epoch) and 0-based epoch numbers, renumbered here."""
        d = dict(d)
        if "epochs_done" not in d and "epoch" in d:
            d["epochs_done"] = int(d.pop("epoch")) + 1
            if d.get("best_epoch") is not None:
                d["best_epoch"] = int(d["best_epoch"]) + 1
            d["history"] = [dict(h, epoch=int(h["epoch"]) + 1) for h in d.get("history", [])]
            if d.get("best_metrics") and "epoch" in d["best_metrics"]:
                d["best_metrics"] = dict(d["best_metrics"], epoch=int(d["best_metrics"]["epoch"]) + 1)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def summary(self) -> dict:
        """The run's result keys: best epoch and its metrics, history, epochs run, early stop."""
        return {"best_epoch": self.best_epoch, "best_metrics": self.best_metrics, "history": self.history,
                "epochs_run": self.epochs_done, "stopped_early": self.stopped_early}


def read_progress(checkpoint_dir: str | Path) -> TrainingProgress:
    """A checkpoint directory's ``progress.json`` (any version) as :class:`TrainingProgress`."""
    return TrainingProgress.from_dict(read_json(Path(checkpoint_dir) / PROGRESS_FILE))


def save_checkpoint(directory: Path, s: "TrainingSession", extra_files: Optional[dict] = None) -> None:
    """``state.pt`` (model, optimizer, scaler), ``best_model.pt``, ``progress.json`` and, for a
    method hook, ``method_state.pt`` = ``{"train": hook.state_dict(), "inference": the hook's
    inference state at the best epoch}``; ``extra_files``: name → object saved with ``torch.save``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _unwrap(s.model).state_dict(), "optimizer": s.optimizer.state_dict(),
                "scaler": s.scaler.state_dict() if s.scaler is not None else {}}, directory / "state.pt")
    if s.best_state is not None:
        torch.save(s.best_state, directory / "best_model.pt")
    method_state = s.hook_state()
    if method_state is not None:
        torch.save(method_state, directory / METHOD_STATE_FILE)
    for name, obj in (extra_files or {}).items():
        torch.save(obj, directory / name)
    write_json(directory / PROGRESS_FILE, s.progress.to_dict())


def latest_local_checkpoint(out_dir: Path) -> Optional[Path]:
    d = out_dir / "checkpoints"
    if not d.is_dir():
        return None
    done = sorted(p for p in d.iterdir() if p.name.startswith("epoch-") and (p / PROGRESS_FILE).is_file())
    return done[-1] if done else None


# ------------------------------------------------------------------ the loop
@dataclass
class TrainingSession:
    """Everything one worker's training holds between its steps (built by :func:`setup_training`)."""

    cfg: Any
    train_path: str
    val_path: Optional[str]
    out: Path
    rank: int
    world_size: int
    device: torch.device
    info: DatasetInfo
    n_epochs: int
    select: str
    seed: int
    reader: str
    counts: np.ndarray
    drw: DrwSchedule
    read_spec: Optional[ReadSampling]
    read_seed: int
    centers: Optional[dict]
    model: nn.Module
    loss_fn: nn.Module
    hook: MethodHook
    optimizer: torch.optim.Optimizer
    autocast: Any
    scaler: Any
    config_fp: str
    eval_bs: int
    report_fn: Optional[Callable[[dict, Optional[str]], None]] = None
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    best_state: Optional[dict] = None
    best_inference: Optional[dict] = None    # the hook's inference state at the best epoch

    def hook_state(self) -> Optional[dict]:
        if type(self.hook) is MethodHook:
            return None
        return {"train": self.hook.state_dict(), "inference": self.best_inference}


def setup_training(cfg, train_path: str, val_path: Optional[str], out_dir: str, *, rank: int, world_size: int,
                   device, init_from: Optional[str], report_fn, epochs: Optional[int]) -> TrainingSession:
    """Check the inputs, build model, loss, method hook and optimizer (DDP-wrapped when distributed)."""
    # deferred: torch is slow to import
    from pipeline.train.losses import build_loss
    from pipeline.train.models import build_model

    tc = cfg.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    check_table(train_path)
    info = read_info(train_path)
    n_epochs = int(epochs if epochs is not None else tc.epochs)
    if n_epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {n_epochs}")
    if tc.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {tc.batch_size}")
    select = tc.select_metric                     # checked by validate_config
    seed = tc.seed if tc.seed is not None else cfg.run.seed
    reader = cfg.stream.reader

    counts = class_counts_array(info)
    loss_params, drw = split_loss_params(tc)
    read_spec = read_sampling_spec(tc, reader=reader, has_val=bool(val_path))
    read_seed = int(read_spec.seed if read_spec and read_spec.seed is not None else seed)
    epoch_read_rates(read_spec, counts, 0, [])  # a bad target/cap/rates fails now, not after an epoch
    centers = centers_params(tc)
    torch.manual_seed(seed)
    model = build_model(cfg.model, info.input_shape, info.n_classes)
    if init_from:
        model.load_state_dict(load_weights(Path(init_from) / "model.pt"))
    model.to(device)
    loss_fn = build_loss(tc.loss, counts, **loss_params).to(device)
    hook = build_hook(tc.method, tc.method_params, info.n_classes, counts, int(model.feature_dim))
    if _distributed():
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = build_optimizer(model.parameters(), tc)
    autocast, scaler = _autocast(device, tc)
    s = TrainingSession(
        cfg=cfg, train_path=train_path, val_path=val_path, out=out, rank=rank, world_size=world_size,
        device=device, info=info, n_epochs=n_epochs, select=select, seed=seed, reader=reader, counts=counts,
        drw=drw, read_spec=read_spec, read_seed=read_seed, centers=centers, model=model, loss_fn=loss_fn,
        hook=hook, optimizer=optimizer, autocast=autocast, scaler=scaler,
        config_fp=_config_fingerprint(cfg, train_path, val_path, init_from),
        eval_bs=max(tc.batch_size, cfg.stream.batch_size), report_fn=report_fn)
    s.progress = TrainingProgress(config=s.config_fp)
    return s


def resume_training(s: TrainingSession, resume_dir: Optional[str]) -> None:
    """Continue from a checkpoint: Ray's (``resume_dir``) or, in a plain process with
    ``train.resume``, the newest local one written for the same config."""
    if resume_dir is None and s.report_fn is None and s.cfg.train.resume:
        last = latest_local_checkpoint(s.out)
        if last is not None and read_progress(last).config == s.config_fp:
            resume_dir = str(last)
    if not resume_dir:
        return
    rd = Path(resume_dir)
    st = torch.load(str(rd / "state.pt"), map_location="cpu", weights_only=True)
    _unwrap(s.model).load_state_dict(st["model"])
    s.optimizer.load_state_dict(st["optimizer"])
    if s.scaler is not None and st.get("scaler"):
        s.scaler.load_state_dict(st["scaler"])
    s.progress = read_progress(rd)
    if (rd / "best_model.pt").is_file():
        s.best_state = load_weights(rd / "best_model.pt")
    if (rd / METHOD_STATE_FILE).is_file():
        ms = torch.load(str(rd / METHOD_STATE_FILE), map_location="cpu", weights_only=False)
        s.hook.load_state_dict(ms["train"])
        s.best_inference = ms.get("inference")
    if s.rank == 0 and s.cfg.train.progress:  # a restarted worker group says where it picks up (after a node failure, say)
        console_line(f"resuming after epoch {s.progress.epochs_done}/{s.n_epochs} from its checkpoint",
                     in_ray=s.report_fn is not None)


def train_epoch(s: TrainingSession, epoch: int) -> dict:
    """One pass over this worker's shard: the method's start-of-epoch step, then every batch.
    Returns the epoch's history entry (loss, rows, rows/s summed over workers)."""
    tc, device = s.cfg.train, s.device
    # dropout and the methods' draws depend on (seed, epoch, rank) only, so an epoch resumed from a
    # checkpoint draws the same numbers as in an uninterrupted run
    torch.manual_seed((s.seed * 1_000_003 + epoch * 7919 + s.rank) % (2**63 - 1))
    if s.drw.epoch is not None and hasattr(s.loss_fn, "set_weight"):
        s.loss_fn.set_weight(drw_weight_for_epoch(epoch, s.drw, s.counts))
    s.hook.start_epoch(EpochContext(
        model=_unwrap(s.model), epoch=epoch, n_classes=s.info.n_classes, class_counts=s.counts, device=device,
        rank=s.rank, world_size=s.world_size, autocast=s.autocast, all_reduce=lambda t: _all_reduce(t, device),
        table_once=lambda: table_once(s.train_path, s.info, device, s.eval_bs, reader=s.reader, rank=s.rank,
                                      world_size=s.world_size, workers_count=s.cfg.stream.workers_count,
                                      dataset_name="train")))
    s.model.train()
    rates = epoch_read_rates(s.read_spec, s.counts, epoch, s.progress.history)
    if rates is not None:
        rates = _same_on_all_ranks(rates, s.rank, device)
    loader = make_loader(s.train_path, s.info, s.rank, s.world_size, tc.batch_size, epoch=epoch, seed=s.seed,
                         shuffle=s.cfg.stream.shuffle, reader=s.reader, raw=True,
                         workers_count=s.cfg.stream.workers_count, shuffle_buffer=s.cfg.stream.shuffle_buffer,
                         rates=None if rates is None else rates.tolist(), sample_seed=s.read_seed,
                         augment=s.read_spec.augment if s.read_spec else None)
    bar = None
    if s.rank == 0 and tc.progress:
        bar = _progress_bar(len(loader), f"epoch {epoch + 1}/{s.n_epochs}", in_ray=s.report_fn is not None)
    t0 = time.perf_counter()
    rows = 0
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for x, y in loader:
        x = to_float(x, device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        loss = s.hook.batch_loss(s.model, x, y, s.loss_fn, s.autocast)
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            loss.backward()
            s.optimizer.step()
        s.hook.after_step()
        loss_sum += loss.detach()
        rows += len(y)
        steps += 1
        if bar is not None:
            bar.update(1)
            if steps % 20 == 0:
                bar.set_postfix(rows_s=f"{rows * s.world_size / (time.perf_counter() - t0):.0f}")
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - t0
    stats = torch.tensor([loss_sum.item(), float(steps), float(rows)], dtype=torch.float64)
    stats = _all_reduce(stats, device)
    if not math.isfinite(stats[0].item()):
        raise RuntimeError(f"training diverged: the {tc.loss} loss is not finite in epoch {epoch} "
                           f"(try a lower train.lr than {tc.lr})")
    entry = {"epoch": epoch + 1, "train_loss": stats[0].item() / max(stats[1].item(), 1),
             "steps": steps, "rows": int(stats[2].item()), "train_seconds": round(train_time, 3),
             "rows_per_s": round(stats[2].item() / max(train_time, 1e-9), 1)}
    if rates is not None:
        entry["read_rates"] = [float(v) for v in rates]
        entry["read_expected_rows"] = epoch_sampling_plan(s.counts, rates, s.read_seed, epoch)["expected_total"]
    return entry


def validate_epoch(s: TrainingSession, entry: dict) -> float:
    """Add the validation metrics to ``entry`` (by the method's own decision rule); return the value
    of ``train.select_metric`` that picks the best epoch (minus the train loss without validation)."""
    if not s.val_path:
        return -entry["train_loss"] if s.select not in METRICS_LOWER else entry["train_loss"]
    info = read_info(s.val_path)
    positive = None
    if info.n_classes == 2:
        support = [(info.class_counts or {}).get(str(i), 0) for i in range(2)]
        positive = positive_class(info.labels, support)
    check_select_metric(s.select, info.n_classes)
    cm, vloss, hist = evaluate_table(s.model, s.val_path, info, s.device, s.eval_bs, reader=s.reader,
                                     rank=s.rank, world_size=s.world_size, autocast=s.autocast,
                                     workers_count=s.cfg.stream.workers_count,
                                     predict_fn=_method_predict_fn(s.hook, s.device), positive=positive)
    m = metrics_from_confusion(cm)
    m["val_loss"] = vloss
    if hist is not None:
        m.update(ranking_from_histogram(hist))
    entry.update({"val_" + k if k in ("n", "accuracy", "macro_f1", "balanced_accuracy", "g_mean",
                                       "macro_recall") + RANKING_METRICS else k: v for k, v in m.items()
                  if k not in ("f1", "support")})
    entry["val_recall"] = entry.pop("recall")
    entry["val_f1_per_class"] = m["f1"]
    return m[s.select] if s.select in m else vloss


def record_epoch(s: TrainingSession, epoch: int, entry: dict, value: float) -> None:
    """Append the epoch to the history, keep the best epoch's weights, apply early stopping, log a line."""
    tc, progress = s.cfg.train, s.progress
    progress.history.append(entry)
    progress.epochs_done = epoch + 1
    if metric_better(s.select, value, progress.best_value) or progress.best_epoch is None:
        progress.best_epoch, progress.best_value, progress.best_metrics = epoch + 1, value, entry
        progress.bad_epochs = 0
        s.best_state = _cpu_state(s.model)
        s.best_inference = s.hook.inference_state()
    else:
        progress.bad_epochs += 1
    if tc.patience is not None and progress.bad_epochs >= tc.patience and epoch + 1 < s.n_epochs:
        progress.stopped_early = True
    if s.rank == 0 and tc.progress:
        v = entry.get("val_macro_f1")
        console_line(f"epoch {epoch + 1}/{s.n_epochs}: loss {entry['train_loss']:.4f}"
                     + (f"  val macro-F1 {v:.4f}" if v is not None else "")
                     + (f"  val PR AUC {entry['val_pr_auc']:.4f}" if entry.get("val_pr_auc") is not None else "")
                     + f"  {entry['rows_per_s']:.0f} rows/s", in_ray=s.report_fn is not None)


def finish_training(s: TrainingSession) -> dict:
    """Category centers from the best weights (when configured), then the run's summary."""
    progress, centroids = s.progress, None
    if s.centers is not None:
        net = copy.deepcopy(_unwrap(s.model))
        if s.best_state is not None:
            net.load_state_dict(s.best_state)
        centroids = compute_centroids(net, s.train_path, s.info, s.device, s.eval_bs, reader=s.reader, rank=s.rank,
                                      world_size=s.world_size, autocast=s.autocast,
                                      workers_count=s.cfg.stream.workers_count)
        del net
        if s.report_fn is not None:  # hand the centroids to the driver in one more (final) checkpoint
            _checkpoint(s, extra_metrics={"category_centers": True}, extra_files={CENTROIDS_FILE: centroids})
    rank0 = s.rank == 0
    return {**progress.summary(), "best_state": s.best_state if rank0 else None,
            "select_metric": s.select, "info": s.info.to_dict(), "class_counts": s.counts.tolist(),
            "centroids": centroids if rank0 else None, "category_centers": s.centers,
            "method_inference": s.best_inference if rank0 else None}


def run_training(cfg, train_path: str, val_path: Optional[str], out_dir: str, *, rank: int = 0,
                 world_size: int = 1, device=None, init_from: Optional[str] = None,
                 report_fn: Optional[Callable[[dict, Optional[str]], None]] = None,
                 resume_dir: Optional[str] = None, epochs: Optional[int] = None) -> dict:
    """Train ``cfg.model`` with ``cfg.train`` on this worker's shard; return the run's summary.

    ``report_fn=None`` (plain process): checkpoints go to ``<out_dir>/checkpoints/`` and, with
    ``train.resume``, the newest one is continued. ``init_from``: a model directory
    (``model.pt`` + ``model.json``) whose weights start training (warm start: same architecture,
    fresh optimizer). ``epochs`` overrides ``train.epochs``. Returns ``{"history", "best_epoch",
    "best_metrics", "epochs_run", "stopped_early", "best_state" (rank 0: state_dict on CPU)}``.
    The steps, in order: setup, resume, then per epoch train, validate, record, checkpoint; finish.
    """
    s = setup_training(cfg, train_path, val_path, out_dir, rank=rank, world_size=world_size, device=device,
                       init_from=init_from, report_fn=report_fn, epochs=epochs)
    resume_training(s, resume_dir)
    for epoch in range(s.progress.epochs_done, s.n_epochs):  # epoch: 0-based index, logged as epoch + 1
        if s.progress.stopped_early:
            break
        entry = train_epoch(s, epoch)
        value = validate_epoch(s, entry)
        record_epoch(s, epoch, entry, value)
        _checkpoint(s)
        if s.progress.stopped_early:
            break
    return finish_training(s)


def _method_predict_fn(hook: MethodHook, device):
    """The hook's own prediction rule with its current inference state, for validation (None: argmax)."""
    if type(hook).predict is MethodHook.predict:
        return None
    state = hook.inference_state()
    if state is None:
        return None

    def to_device(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, dict):
            return {k: to_device(w) for k, w in v.items()}
        return v

    state = to_device(state)
    return lambda net, x: type(hook).predict(state, net, x)


def _checkpoint(s: TrainingSession, *, extra_metrics: Optional[dict] = None,
                extra_files: Optional[dict] = None) -> None:
    """The last epoch's checkpoint (:func:`save_checkpoint`, plus ``extra_files``).

    Under Ray Train every rank reports the epoch's scalar metrics (plus ``extra_metrics``) and rank 0
    its checkpoint with them; in a plain process rank 0 keeps the newest two under ``<out>/checkpoints/``.
    """
    if s.report_fn is None:
        if s.rank == 0:
            _keep_local_checkpoint(s, extra_files)
        return
    progress = s.progress
    metrics = {k: v for k, v in progress.history[-1].items() if not isinstance(v, list)}
    metrics.update(best_epoch=progress.best_epoch, stopped_early=progress.stopped_early, **(extra_metrics or {}))
    if s.rank != 0:
        s.report_fn(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="imb-ckpt-") as tmp:
        save_checkpoint(Path(tmp), s, extra_files)
        s.report_fn(metrics, tmp)


def _keep_local_checkpoint(s: TrainingSession, extra_files: Optional[dict] = None) -> None:
    """``<out>/checkpoints/epoch-NNNN`` (NNNN: the 0-based index of the last epoch), written whole
    under a temporary name first; older ones beyond the newest two are removed."""
    epoch = s.progress.epochs_done - 1
    d = s.out / "checkpoints" / f"epoch-{epoch:04d}"
    tmp = s.out / "checkpoints" / f".epoch-{epoch:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, s, extra_files)
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    for old in sorted((s.out / "checkpoints").glob("epoch-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["run_training", "evaluate_table", "metrics_from_confusion", "confusion_matrix",
           "OPTIMIZERS", "build_optimizer", "check_amp_dtype", "split_loss_params", "DrwSchedule", "check_select_metric",
           "read_sampling_spec", "epoch_read_rates", "static_read_rates", "compute_centroids", "centers_params",
           "TrainingProgress", "read_progress", "PROGRESS_FILE"]
