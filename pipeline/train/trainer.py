"""Ray Train wiring: run :func:`pipeline.train.loop.run_training` on ``TorchTrainer`` workers.

Ray 2.55 runs **Ray Train V2** by default (``RAY_TRAIN_V2_ENABLED`` defaults to 1; V1 is
deprecated), and this module uses it as it comes:

* ``ScalingConfig(num_workers=train.num_workers, use_gpu=..., resources_per_worker={"CPU":
  train.cpus_per_worker})`` — a fractional CPU per worker (default 0.5) leaves Ray Data a CPU on
  small machines, where two workers holding a whole CPU each make the run hang;
* ``RunConfig(storage_path=<out>/ray, name=train-<fingerprint>, failure_config=
  FailureConfig(max_failures=train.max_failures))``: a worker that dies (even mid-epoch) makes the
  controller restart the worker group, and ``ray.train.get_checkpoint()`` hands the new workers
  the last epoch's checkpoint, so the run still completes its configured epochs. After each
  ``ray.train.report`` the workers wait for ``get_all_reported_checkpoints(COMMITTED)``: V2
  registers reports only when its controller next polls the workers, and a worker that died
  before that poll silently lost the epoch's checkpoint (the restart began from epoch 0);
* the run name is a fingerprint of the model/train/stream config and the data paths, so running
  the same training again into the same ``out`` directory **resumes** the stopped run (V2 restores
  its checkpoint manager from the snapshot in the run's storage folder), while a changed config
  starts afresh (and ``train.resume: false`` deletes the old run first).

At the end the best epoch's weights become the model artifact ``<out>/model/`` (written
atomically): ``model.pt`` (a state_dict, loaded with ``torch.load(..., weights_only=True)``) and
``model.json`` (model section, input shape, classes, dataset info, class counts, loss, best epoch
and its validation metrics, history). :func:`pipeline.train.saved_model.load_model` reads it back. With category centers
(``train.method_params.category_centers: true``; Zhang et al.) the artifact also holds
``centroids.pt`` — the (n_classes, feature_dim) class centroids of the deep features computed by
the workers after training (handed over in one last checkpoint) — and ``model.json`` says how
prediction uses them (``category_centers``: file, metric, temperature); (``saved_model.load_centroids``) reads them (``weights_only=True``).

References:

* Zhang et al., "Image Classification with Category Centers in Class Imbalance Situation", 33rd Youth
  Academic Annual Conference of Chinese Association of Automation (YAC) 2018 (survey: "Category centers")
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from pipeline.config import Config, config_from_dict
from pipeline.data.schema import read_info
from pipeline.engines import get_ray, route_worker_logs
from pipeline.errors import InputError
from pipeline.io import atomic_dir, fingerprint, local_path, write_json
from pipeline.stream.readers import check_table
from pipeline.train.hooks import METHOD_STATE_FILE, hook_module, save_inference_state
from pipeline.train.loop import centers_params, read_progress, run_training
from pipeline.train.progress import BARS_ENV, bars_wanted
from pipeline.train.worker_errors import (
    clear_worker_errors,
    raise_worker_failure,
    raise_worker_input_error,
    write_worker_input_error,
)
from pipeline.train.saved_model import CENTROIDS_FILE, META_FILE, MODEL_FILE, load_weights

log = logging.getLogger(__name__)
WORKER_LOG = "ray-workers.log"  # in the train stage's directory: everything Ray's workers printed


# ------------------------------------------------------------------ the per-worker function
def _quiet_worker_logs() -> None:
    """Keep the driver's console to progress bars and epoch summaries.

    Ray Train V2 logs every report and checkpoint at INFO (its report logger is named after its
    file), and Petastorm warns on every plain-Parquet table ("Failed loading Unischema…").
    """
    # deferred: ray is slow to import
    from ray.train.v2._internal.execution import context as v2_context
    from ray.train.v2._internal.execution import storage as v2_storage

    for name in (v2_context.__file__, v2_storage.__name__, "ray.train", "petastorm"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "petastorm" else logging.ERROR)


def _train_worker(config: dict) -> None:
    """Runs on every Ray Train worker: the plain loop with Ray's rank, device and checkpoints."""
    # deferred: ray is slow to import
    import ray.train
    import ray.train.torch

    _quiet_worker_logs()
    os.environ[BARS_ENV] = "1" if config.get("bars") else "0"  # the driver's terminal decides
    if config.get("hook_module"):  # a method hook registered outside pipeline.train (e.g. a user's module)

        importlib.import_module(config["hook_module"])
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=ckpt)
        # V2's controller registers reports when it next polls the workers; a worker that dies
        # before that poll loses the epoch's checkpoint (the restart would begin from scratch).
        # Waiting until the report is committed (snapshot written) makes every epoch durable.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

    resume_tmp = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume_tmp = tempfile.mkdtemp(prefix="imb-resume-")
        ckpt.to_directory(resume_tmp)
    try:
        run_training(cfg, config["train_path"], config["val_path"], config["out_dir"], rank=rank,
                     world_size=world, device=device, init_from=config["init_from"], report_fn=report,
                     resume_dir=resume_tmp, epochs=config["epochs"])
    except InputError as e:
        # bad input is not a failure Ray should retry: hand it to the driver and end cleanly
        write_worker_input_error(config["out_dir"], rank, e)
    finally:
        if resume_tmp:
            shutil.rmtree(resume_tmp, ignore_errors=True)


# ------------------------------------------------------------------ driver side
def run_name(cfg: Config, train_path: str, val_path: Optional[str], init_from: Optional[str],
             epochs: Optional[int]) -> str:
    """``train-<fingerprint>`` of what determines the run: rerunning it resumes, changing it restarts."""
    train = cfg.section("train")
    for k in ("resume", "max_failures", "progress", "num_workers", "cpus_per_worker", "out", "train_path",
              "val_path"):
        train.pop(k, None)
    fp = fingerprint(cfg.section("model"), train, cfg.section("stream"), cfg.run.seed,
                     str(local_path(train_path).resolve()),
                     str(local_path(val_path).resolve()) if val_path else None,
                     str(init_from) if init_from else None, epochs)
    return f"train-{fp[:12]}"


def _check_inputs(train_path: str, val_path: Optional[str], init_from: Optional[str]) -> None:
    check_table(train_path)
    read_info(train_path)
    if val_path:
        check_table(val_path)
        read_info(val_path)
    if init_from and not (Path(init_from) / MODEL_FILE).is_file():
        raise InputError(f"init_from {init_from} has no {MODEL_FILE}: not a model directory")


def _check_method(cfg: Config, train_path: str, val_path: Optional[str]) -> None:
    """Build the method hook once on the driver, so a bad ``train.method_params`` is one clear
    error here rather than a failure on every Ray Train worker."""
    # deferred: torch is slow to import
    from pipeline.train.hooks import PIPELINE_METHODS, build_hook
    from pipeline.train.loop import class_counts_array
    from pipeline.train.models import build_model

    if cfg.train.method in PIPELINE_METHODS:
        return
    # deferred: torch is slow to import
    from pipeline.train.hooks import HOOKS, hook_names

    if cfg.train.method in hook_names() and HOOKS[cfg.train.method].needs_validation and not val_path:
        raise InputError(f"train.method {cfg.train.method} needs a validation table (train.val_path or the split's val)")
    info = read_info(train_path)
    net = build_model(cfg.model, info.input_shape, info.n_classes)
    build_hook(cfg.train.method, cfg.train.method_params, info.n_classes, class_counts_array(info),
               int(net.feature_dim))


def _write_probe(storage: str) -> str:
    """Runs on one Ray node: create ``storage`` and write/remove a file there; '' or the error."""
    try:
        os.makedirs(storage, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage, prefix=".write-probe-"):
            pass
        return ""
    except OSError as e:
        return str(e.strerror or e)


def probe_storage(storage: str, what: str = "run.root") -> None:
    """Check, before any epoch runs, that every alive Ray node can write under ``storage``.

    Ray Train on more than one node writes checkpoints to ``storage`` from every worker, so it
    must be storage all nodes share and can write; otherwise the run would fail at its first
    checkpoint. Raises one :class:`InputError` line naming ``what`` and the first failing node.
    """
    # deferred: ray is slow to import
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0, max_retries=0)(_write_probe)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(storage) for n in nodes]
    for node, err in zip(nodes, ray.get(refs)):
        if err:
            raise InputError(f"{what}: Ray node {node['NodeManagerAddress']} (node {node['NodeID'][:8]}) "
                             f"cannot write under {storage} ({err}); every Ray node "
                             f"needs {what} on storage it can write")


def _ray_use_gpu(cfg: Config) -> bool:
    """Check the worker counts against Ray (started or joined here); whether the workers get a GPU each."""
    # deferred: ray is slow to import
    import ray

    tc = cfg.train
    if tc.num_workers < 0:
        raise InputError(f"train.num_workers must be >= 0 (0: train in this process), got {tc.num_workers}")
    if tc.cpus_per_worker <= 0:
        raise InputError(f"train.cpus_per_worker must be > 0, got {tc.cpus_per_worker}")
    get_ray(cfg.ray)
    have = ray.cluster_resources()
    use_gpu = tc.use_gpu if tc.use_gpu is not None else have.get("GPU", 0) > 0
    if cfg.ray.address is None:  # a local Ray cannot grow: a request it cannot meet would wait forever
        if use_gpu and have.get("GPU", 0) < tc.num_workers:
            raise InputError(f"train.use_gpu is true but the local Ray has {int(have.get('GPU', 0))} GPU(s) "
                             f"for {tc.num_workers} workers")
        if tc.num_workers * tc.cpus_per_worker > have.get("CPU", 0):
            raise InputError(f"train.num_workers × train.cpus_per_worker = {tc.num_workers * tc.cpus_per_worker:g} "
                             f"CPUs, but the local Ray has {have.get('CPU', 0):g}")
    return bool(use_gpu)


def _torch_trainer(cfg: Config, loop_config: dict, *, name: str, out: Path, use_gpu: bool, train_path: str,
                   val_path: Optional[str]):
    """Ray Train's ``TorchTrainer`` over :func:`_train_worker` (with Ray Data datasets for that reader)."""
    # deferred: ray is slow to import
    import ray.train
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    resources = {"CPU": float(tc.cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = 1
    datasets, data_config = None, None
    if cfg.stream.reader == "ray_data":
        # deferred: torch is slow to import
        from pipeline.stream.readers import ray_dataset

        datasets = {"train": ray_dataset(train_path, read_info(train_path))}
        if val_path:
            datasets["val"] = ray_dataset(val_path, read_info(val_path))
        data_config = ray.train.DataConfig(datasets_to_split=["train"])
    return TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=int(tc.num_workers), use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(out / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=int(tc.max_failures)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=datasets, dataset_config=data_config)


def _read_final_checkpoint(result, name: str, cfg: Config) -> tuple:
    """(progress, best weights, centroids or None, method inference state or None) of a finished run."""
    if result.error is not None:  # pragma: no cover - fit() raises in V2; kept for V1
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} ended without a checkpoint")
    with tempfile.TemporaryDirectory(prefix="imb-final-") as tmp:
        result.checkpoint.to_directory(tmp)
        progress = read_progress(tmp)
        best_state = load_weights(Path(tmp) / "best_model.pt")
        centroids = None
        if centers_params(cfg.train) is not None:
            if not (Path(tmp) / CENTROIDS_FILE).is_file():
                raise RuntimeError(f"training run {name} ended without the category centers' checkpoint")
            centroids = load_weights(Path(tmp) / CENTROIDS_FILE)
        method_inference = None
        if (Path(tmp) / METHOD_STATE_FILE).is_file():
            method_inference = torch.load(str(Path(tmp) / METHOD_STATE_FILE), map_location="cpu",
                                          weights_only=False).get("inference")
    return progress, best_state, centroids, method_inference


def train_model(cfg: Config, train_path: str, val_path: Optional[str], out_dir: str,
                init_from: Optional[str] = None, epochs: Optional[int] = None) -> dict:
    """Train on Ray Train workers streaming Petastorm (or Ray Data) shards; write ``out_dir/model/``.

    ``train.num_workers: 0`` trains in this process instead (:func:`train_local`), for data small
    enough that Ray Train's start-up would dominate (e.g. experiment trials run as Ray tasks).

    Returns ``{"model_dir", "best_epoch", "best_metrics", "history", "epochs_run", "run_dir",
    "train_seconds"}``.
    """
    _check_inputs(train_path, val_path, init_from)
    _check_method(cfg, train_path, val_path)
    tc = cfg.train
    if tc.num_workers == 0:  # small data: the same loop in this process (one experiment trial per CPU)
        return train_local(cfg, train_path, val_path, out_dir, init_from=init_from, epochs=epochs)
    use_gpu = _ray_use_gpu(cfg)
    out = local_path(out_dir).resolve()
    probe_storage(str(out / "ray"))  # before any epoch: a node that cannot write fails here, in one line
    out.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg, train_path, val_path, init_from, epochs)
    if not tc.resume and (out / "ray" / name).exists():  # train.resume=false: start this run afresh
        shutil.rmtree(out / "ray" / name)
    loop_config = {
        "cfg": cfg.to_dict(),
        "train_path": str(local_path(train_path).resolve()),
        "val_path": str(local_path(val_path).resolve()) if val_path else None,
        "out_dir": str(out),
        "init_from": str(local_path(init_from).resolve()) if init_from else None,
        "epochs": epochs,
        "hook_module": hook_module(tc.method),
        "bars": bars_wanted(),
    }
    trainer = _torch_trainer(cfg, loop_config, name=name, out=out, use_gpu=use_gpu, train_path=train_path,
                             val_path=val_path)
    t0 = time.perf_counter()
    # Ray's own lines (controller, placement-group cleaner, worker set-up) go to this file; the
    # console keeps the one line per epoch
    route_worker_logs(out / WORKER_LOG)
    clear_worker_errors(out)
    try:
        result = trainer.fit()
    except Exception as e:  # Ray's TrainingFailedError: the workers' exceptions are inside it
        raise_worker_failure(out, e)
        raise
    raise_worker_input_error(out)
    seconds = time.perf_counter() - t0
    progress, best_state, centroids, method_inference = _read_final_checkpoint(result, name, cfg)
    summary = progress.summary()
    model_dir = write_model_artifact(out / "model", cfg, train_path, val_path, best_state, summary,
                                     init_from=init_from, world_size=int(tc.num_workers), centroids=centroids,
                                     method_inference=method_inference)
    _after_fit(cfg, model_dir, val_path)
    return {"model_dir": str(model_dir), "run_dir": str(out / "ray" / name), "train_seconds": round(seconds, 2),
            **summary}


def train_local(cfg: Config, train_path: str, val_path: Optional[str], out_dir: str, *,
                init_from: Optional[str] = None, epochs: Optional[int] = None, device=None) -> dict:
    """The same training in this process, without Ray (one worker, CPU or GPU); same artifact."""
    _check_inputs(train_path, val_path, init_from)
    out = local_path(out_dir).resolve()
    t0 = time.perf_counter()
    r = run_training(cfg, train_path, val_path, str(out), device=device, init_from=init_from, epochs=epochs)
    summary = {k: r[k] for k in ("best_epoch", "best_metrics", "history", "epochs_run", "stopped_early",
                                 "select_metric")}
    model_dir = write_model_artifact(out / "model", cfg, train_path, val_path, r["best_state"], summary,
                                     init_from=init_from, world_size=1, centroids=r.get("centroids"),
                                     method_inference=r.get("method_inference"))
    _after_fit(cfg, model_dir, val_path)
    return {"model_dir": str(model_dir), "train_seconds": round(time.perf_counter() - t0, 2), **summary}


def _after_fit(cfg: Config, model_dir, val_path: Optional[str]) -> None:
    """A method's driver-side step after training (e.g. a cost search on the validation split)."""
    # deferred: torch is slow to import
    from pipeline.train.hooks import HOOKS, hook_names

    if cfg.train.method in hook_names():
        get_ray(cfg.ray)  # a method's after_fit may run Ray tasks (the cost search does)
        HOOKS[cfg.train.method].after_fit(str(model_dir), cfg, val_path)


def write_model_artifact(model_dir: Path, cfg: Config, train_path: str, val_path: Optional[str],
                         state_dict: dict, summary: dict, *, init_from: Optional[str] = None,
                         world_size: int = 1, centroids: Optional[torch.Tensor] = None,
                         method_inference: Optional[dict] = None) -> Path:
    """``model.pt`` (best weights) + ``model.json`` (everything needed to rebuild and judge it),
    plus ``centroids.pt`` when category centers were computed."""
    info = read_info(train_path)
    meta = {
        "format": 1,
        "model": cfg.section("model"),
        "input_shape": list(info.input_shape),
        "n_classes": info.n_classes,
        "dataset": info.to_dict(),
        "class_counts": [info.class_counts.get(str(i), 0) for i in range(info.n_classes)]
        if info.class_counts else None,
        "loss": cfg.train.loss,
        "loss_params": cfg.train.loss_params,
        "train": cfg.section("train"),
        "select_metric": cfg.train.select_metric,
        "best_epoch": summary["best_epoch"],
        "best_metrics": summary["best_metrics"],
        "epochs_run": summary["epochs_run"],
        "stopped_early": summary.get("stopped_early", False),
        "history": summary["history"],
        "train_path": str(train_path),
        "val_path": str(val_path) if val_path else None,
        "init_from": str(init_from) if init_from else None,
        "world_size": world_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if method_inference is not None:
        meta["train_method"] = {"name": cfg.train.method, "file": METHOD_STATE_FILE}
    if centroids is not None:
        params = centers_params(cfg.train) or {"metric": "euclidean", "temperature": 1.0}
        meta["category_centers"] = {"file": CENTROIDS_FILE, "metric": params["metric"],
                                    "temperature": params["temperature"], "shape": list(centroids.shape)}
    with atomic_dir(model_dir) as tmp:
        torch.save(state_dict, tmp / MODEL_FILE)
        if centroids is not None:
            torch.save(centroids.detach().to("cpu", torch.float32).contiguous(), tmp / CENTROIDS_FILE)
        if method_inference is not None:
            save_inference_state(tmp, cfg.train.method, method_inference)
        write_json(tmp / META_FILE, meta)
    return Path(model_dir)


def train_from_config(cfg: Config) -> dict:
    """``imbalance train CONFIG``: ``train.train_path`` / ``train.val_path`` → ``train.out``
    (warm start from ``train.init_from`` when set)."""
    tc = cfg.train
    if not tc.train_path:
        raise InputError("train.train_path is not set (the materialized training table)")
    if not tc.out:
        raise InputError("train.out is not set (where checkpoints and the model go)")
    return train_model(cfg, tc.train_path, tc.val_path, tc.out, init_from=tc.init_from)


__all__ = ["train_model", "train_local", "train_from_config", "write_model_artifact",
           "run_name"]
