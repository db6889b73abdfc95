"""MLflow tracking at the edges of the stages: what ``imbalance run`` and ``imbalance experiment`` log.

The stages write their own files first (the run directory is the source of truth); the functions
here then log those files' contents to MLflow. Nothing in the training loop imports MLflow: the
per-epoch history the loop writes (``train/train_summary.json``) is logged on the driver after
training, one point per epoch (``step`` = epoch).

Where runs go (config section ``tracking``):

``tracking.uri``
    default ``sqlite:///<run.root>/mlflow.db`` with artifacts in ``<run.root>/mlartifacts``: no
    server to start; browse with ``mlflow ui --backend-store-uri sqlite:///<run.root>/mlflow.db``.
    A server URI (``http://host:5000``) works the same.
``tracking.experiment``
    the MLflow experiment (default: the config file's stem, so that every run of ``conf/demo.yaml``
    — whatever its overrides — sits in experiment ``demo`` for side-by-side comparison; ``run.id``
    when the run is named).
``tracking.enabled: false``
    log nothing.

One MLflow run per run directory and config. Its id is kept in ``<run_dir>/tracking.json`` with the
parts already logged. A rerun with the same config resumes that MLflow run and logs only what is not
there yet, so a rerun that skips every stage logs nothing new (and a rerun after a crash fills in
what the crash left out); a changed config opens a new MLflow run, since its results differ.

MLflow failing (a server that went away) never fails the run: the first error turns tracking off
for the rest of the process's run, and :meth:`Tracker.finish` prints one warning line naming what
was not logged.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipeline.config import Config
from pipeline.io import fingerprint, local_path, read_json, write_json

RECORD = "tracking.json"
MAX_PARAM = 6000  # MLflow's limit on a param value's length (characters)


def tracking_uri(cfg: Config) -> str:
    """``tracking.uri``, or the SQLite store under ``run.root``."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return "sqlite:///" + str(local_path(cfg.run.root).resolve() / "mlflow.db")


def artifact_root(cfg: Config) -> Optional[str]:
    """Where a new experiment keeps artifacts: ``<run.root>/mlartifacts`` for the default store;
    a server decides for itself (None)."""
    if cfg.tracking.uri:
        return None
    return (local_path(cfg.run.root).resolve() / "mlartifacts").as_uri()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = d
    return out


def config_params(cfg: Config) -> tuple[dict[str, str], list[str]]:
    """The resolved config as MLflow params (dotted keys); values longer than MLflow allows are cut,
    ending in ``...[truncated]``, and their keys returned so the caller can say so."""
    params, cut = {}, []
    for k, v in flatten(cfg.to_dict()).items():
        s = str(v)
        if len(s) > MAX_PARAM:
            s = s[:MAX_PARAM - 15] + "...[truncated]"
            cut.append(k)
        params[k] = s
    return params, cut


def _mlflow():
    # deferred: mlflow is heavy and only needed when tracking is on
    import mlflow

    return mlflow


def connect(cfg: Config):
    """An ``MlflowClient`` on ``tracking.uri`` (short HTTP retries: a dead server must not stall a run)."""
    uri = tracking_uri(cfg)
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return _mlflow().MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, artifacts: Optional[str]) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifacts)


class Tracker:
    """One MLflow run and the parts of it logged so far.

    Use :func:`start`; every ``log_*`` method is a no-op when tracking is off, already done for this
    MLflow run (see the module docstring) or MLflow has failed once in this process.
    """

    def __init__(self, client, run_id: Optional[str], record_path: Optional[Path], logged: list[str],
                 uri: str = ""):
        self.client = client
        self.run_id = run_id
        self.record_path = record_path
        self.logged = logged
        self.uri = uri
        self.failed: list[str] = []
        self.error: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.client is not None and self.error is None

    def _save(self) -> None:
        if self.record_path is not None:
            rec = read_json(self.record_path) if self.record_path.is_file() else {}
            write_json(self.record_path, {**rec, "run_id": self.run_id, "logged": self.logged})

    def part(self, name: str, fn: Callable[[], None], redo: bool = False) -> None:
        """Log part ``name`` with ``fn()`` unless already logged (or ``redo``: its stage ran again)."""
        if self.client is None or (name in self.logged and not redo):
            return
        if self.error is not None:
            self.failed.append(name)
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any MLflow/network failure must leave the run alive
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.failed.append(name)
            return
        if name not in self.logged:
            self.logged.append(name)
        self._save()

    def fail(self, error: BaseException) -> None:
        """End the MLflow run as KILLED (Ctrl-C) or FAILED, with the error's first line as the tag ``error``."""
        if self.active and self.run_id:
            first = str(error).splitlines()[0][:500] if str(error) else ""
            try:
                self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {first}")
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                pass
        self.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        """End the MLflow run; one warning line if something was not logged."""
        if self.client is None:
            return
        if self.active and self.run_id:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as e:  # noqa: BLE001
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                self.failed.append("run end")
        if self.failed:
            print(f"warning: MLflow tracking at {self.uri} failed ({self.error}); not logged: "
                  f"{', '.join(self.failed)} (the run directory has everything)", file=sys.stderr, flush=True)


def start(cfg: Config, run_dir: Path, tags: Optional[dict] = None, parent_run_id: Optional[str] = None) -> Tracker:
    """Open (or resume, see the module docstring) the MLflow run of ``run_dir``."""
    if not cfg.tracking.enabled:
        return Tracker(None, None, None, [])
    uri = tracking_uri(cfg)
    record_path = run_dir / RECORD
    config_fp = fingerprint({k: v for k, v in cfg.to_dict().items() if k != "tracking"}, uri)
    rec = read_json(record_path) if record_path.is_file() else {}
    tracker = Tracker(None, None, record_path, [], uri)
    try:
        client = connect(cfg)
        tracker.client = client
        if rec.get("config") == config_fp and rec.get("run_id"):
            tracker.run_id, tracker.logged = rec["run_id"], list(rec.get("logged", []))
            return tracker
        exp = experiment_id(client, cfg.tracking.experiment or str(cfg.run.id), artifact_root(cfg))
        all_tags = {"mlflow.runName": str(cfg.run.id), "run_dir": str(run_dir), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp, tags={k: str(v) for k, v in all_tags.items()})
        tracker.run_id = run.info.run_id
        write_json(record_path, {"run_id": tracker.run_id, "config": config_fp, "uri": uri, "logged": []})
    except Exception as e:  # noqa: BLE001 - the run goes on without tracking
        tracker.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        tracker.failed.append("the whole run")
    return tracker


# ------------------------------------------------------------------ what each stage edge logs
def log_config(tr: Tracker, cfg: Config) -> None:
    def _do():
        params, cut = config_params(cfg)
        items = list(params.items())
        Param = _mlflow().entities.Param
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            tr.client.log_batch(tr.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        if cut:
            tr.client.set_tag(tr.run_id, "params_truncated", ",".join(cut))
            print(f"warning: MLflow params truncated to {MAX_PARAM} characters: {', '.join(cut)}",
                  file=sys.stderr, flush=True)
        tr.client.log_dict(tr.run_id, cfg.to_dict(), "config.json")
    tr.part("config", _do)


def log_data(tr: Tracker, ddir: Path, data_fp: str, training: dict, source: dict, redo: bool = False) -> None:
    """Data fingerprint, ρ and class counts (an artifact), the distribution plot.

    ``data.rho``: the imbalance of the data the model trains on (``training``: the training split's
    distribution after a train-only protocol, else the profile's); ``data.source_rho`` beside it
    when the two differ."""
    def _do():
        dist = read_json(ddir / "profile" / "distribution.json")
        tr.client.set_tag(tr.run_id, "data_fingerprint", data_fp)
        tr.client.set_tag(tr.run_id, "data.source", source["text"][:5000])
        tr.client.set_tag(tr.run_id, "data.source_kind", source["kind"])
        metrics = {"data.rho": training.get("rho"), "data.source_rho": training.get("source_rho"),
                   "data.n_classes": dist.get("n_classes"), "data.rows": dist.get("n_rows"),
                   "data.images_ingested": source.get("images"), "data.files_rejected": source.get("rejected")}
        _log_metrics(tr, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tr.client.log_dict(tr.run_id, {str(c["label"]): int(c["count"]) for c in dist["classes"]},
                           "data/class_counts.json")
        tr.client.log_artifacts(tr.run_id, str(ddir / "profile"), "data/profile")
    tr.part("data", _do, redo)


def log_manifest(tr: Tracker, run_dir: Path, name: str, redo: bool = False) -> None:
    manifest = run_dir / name / "manifest.json"
    if manifest.is_file():
        tr.part(name, lambda: tr.client.log_artifact(tr.run_id, str(manifest), name), redo)


def log_training(tr: Tracker, run_dir: Path, redo: bool = False) -> None:
    """Per-epoch metrics of rank 0 (step = epoch) and the per-class validation recall table."""
    def _do():
        history = read_json(run_dir / "train" / "train_summary.json").get("history") or []
        keys = {"train_loss": "train.loss", "rows_per_s": "train.rows_per_s", "val_loss": "val.loss",
                "val_macro_f1": "val.macro_f1", "val_balanced_accuracy": "val.balanced_accuracy",
                "val_g_mean": "val.g_mean", "val_accuracy": "val.accuracy"}
        Metric = _mlflow().entities.Metric
        batch, table = [], {"epoch": [], "class": [], "recall": []}
        for i, h in enumerate(history):
            step = int(h.get("epoch", i))
            for src, dst in keys.items():
                v = h.get(src)
                if isinstance(v, (int, float)) and v == v:
                    batch.append(Metric(dst, float(v), 0, step))
            for c, r in enumerate(h.get("val_recall") or []):
                table["epoch"].append(step)
                table["class"].append(c)
                table["recall"].append(r)
        for i in range(0, len(batch), 1000):
            tr.client.log_batch(tr.run_id, metrics=batch[i:i + 1000])
        if table["epoch"]:
            tr.client.log_table(tr.run_id, data=table, artifact_file="training/val_recall_per_class.json")
    tr.part("training", _do, redo)


def log_model(tr: Tracker, model_dir: Path, redo: bool = False) -> None:
    """The model with the ``mlflow.pytorch`` flavour and an input signature: the network with its
    scoring rule and calibration (:class:`pipeline.train.scorer.CalibratedScorer`), so
    ``mlflow.pyfunc`` / ``spark_udf`` return the corrected probabilities ``imbalance predict`` writes
    as ``probs_corrected``; the model directory itself as ``model_files``."""
    def _do():
        # deferred: torch and mlflow.pytorch are heavy
        import torch
        from mlflow.models import infer_signature

        # deferred: the scorer imports torch
        from pipeline.train.scorer import CalibratedScorer

        scorer = CalibratedScorer.load(str(model_dir))
        example = np.zeros((1, *scorer.meta["input_shape"]), dtype=np.float32)
        with torch.no_grad():
            out = scorer(torch.from_numpy(example))
        signature = infer_signature(example, out.numpy())
        mlflow = _mlflow()
        mlflow.set_tracking_uri(tr.uri)
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its pickle notice: our own code, our own file
        # log_model goes through the fluent API: attach it to this run without making it "active" globally
        with mlflow.start_run(run_id=tr.run_id, log_system_metrics=False):
            mlflow.pytorch.log_model(scorer, name="model", signature=signature, input_example=example,
                                     serialization_format="pickle",  # pt2 (torch.export) fixes the batch size
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        tr.client.log_artifacts(tr.run_id, str(model_dir), "model_files")
    tr.part("model", _do, redo)


def final_metrics(metrics: dict, labels: list) -> dict[str, float]:
    """MLflow metric names for a ``metrics.json``: headline metrics and per-class F1/recall by class."""
    out: dict[str, Any] = {
        "test.macro_f1": metrics.get("macro", {}).get("f1"),
        "test.weighted_f1": metrics.get("weighted", {}).get("f1"),
        "test.g_mean": metrics.get("g_mean"),
        "test.balanced_accuracy": metrics.get("balanced_accuracy"),
        "test.accuracy": metrics.get("accuracy"),
        "test.macro_roc_auc": metrics.get("macro", {}).get("roc_auc"),
        "test.macro_pr_auc": metrics.get("macro", {}).get("pr_auc"),
        "test.l5_f1": metrics.get("groups", {}).get("L5", {}).get("f1"),
        "test.rest_f1": metrics.get("groups", {}).get("rest", {}).get("f1"),
    }
    per_class = metrics.get("per_class") or []
    for i, pc in enumerate(per_class):
        name = _metric_safe(str(pc.get("name", labels[i] if i < len(labels) else pc.get("label", i))))
        out[f"test.f1.{name}"] = pc.get("f1")
        out[f"test.recall.{name}"] = pc.get("recall")
    for variant, v in (metrics.get("calibration") or {}).items():
        if isinstance(v, dict) and "brier" in v:
            out[f"test.calibration.{variant}.brier"] = v["brier"]
            out[f"test.calibration.{variant}.ece"] = v["ece"]
    adj = metrics.get("adjusted")
    if adj:
        out["test.adjusted.macro_f1"] = adj.get("macro", {}).get("f1")
        out["test.adjusted.balanced_accuracy"] = adj.get("balanced_accuracy")
        out["test.adjusted.g_mean"] = adj.get("g_mean")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and v == v}


def _metric_safe(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_ - . / space``."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in name)


def _log_metrics(tr: Tracker, metrics: dict[str, float], step: int = 0) -> None:
    Metric = _mlflow().entities.Metric
    items = [Metric(k, float(v), 0, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        tr.client.log_batch(tr.run_id, metrics=items[i:i + 1000])


def log_evaluation(tr: Tracker, run_dir: Path, labels: list, redo: bool = False) -> None:
    def _do():
        path = run_dir / "evaluate" / "metrics.json"
        _log_metrics(tr, final_metrics(read_json(path), labels))
        tr.client.log_artifact(tr.run_id, str(path), "evaluate")
    tr.part("evaluation", _do, redo)


def log_report(tr: Tracker, run_dir: Path, redo: bool = False) -> None:
    tr.part("report", lambda: tr.client.log_artifacts(tr.run_id, str(run_dir / "report"), "report"), redo)


def log_experiment(tr: Tracker, out: Path) -> None:
    """The experiment's statistics (stats.json, summary.csv, results, report, CD diagrams, metric-vs-ρ
    plots): every file and folder of ``out`` except the trials and shared data (their own runs)."""
    def _do():
        for p in sorted(out.iterdir()):
            if p.name in ("trials", "data", RECORD):
                continue
            if p.is_dir():
                tr.client.log_artifacts(tr.run_id, str(p), f"experiment/{p.name}")
            else:
                tr.client.log_artifact(tr.run_id, str(p), "experiment")
    tr.part("experiment", _do, redo=True)


def log_seed_spread(tr: Tracker, run_dir: Path, redo: bool = False) -> None:
    """``seeds.<metric>.mean|sd|min|max`` over the training seeds, and ``seed_spread/spread.json``."""
    def _do():
        path = run_dir / "seed_spread" / "spread.json"
        sp = read_json(path)
        _log_metrics(tr, {f"seeds.{k}.{stat}": v for k, s in sp["metrics"].items() for stat, v in s.items()
                          if v is not None})
        tr.client.log_artifact(tr.run_id, str(path), "seed_spread")
    tr.part("seed spread", _do, redo)
