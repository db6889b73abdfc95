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

What the MLflow UI shows: the headline test metrics (``test.macro_f1``, ``test.balanced_accuracy``,
...) as metrics; the per-class results as one table artifact, ``evaluate/per_class.json`` (logged
with ``log_table``: one row per class, the UI's artifact view shows it as a table) instead of a
metric chart per class. The experiment is tagged ``mlflow.experimentKind=custom_model_development``
(model training, not GenAI), and a finished top-level run prints one ``MLflow:`` line with a link
to the experiment's runs list in the UI (:func:`runs_link`).

MLflow failing (a server that went away) never fails the run: the first error turns tracking off
for the rest of the process's run, and :meth:`Tracker.finish` prints one warning line naming what
was not logged.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipeline.config import Config
from pipeline.io import fingerprint, local_path, read_json, write_json
from pipeline.prep.sampling import read_training_counts

RECORD = "tracking.json"
MAX_PARAM = 6000  # MLflow's limit on a param value's length (characters)
PER_CLASS_TABLE = "evaluate/per_class.json"
# MLflow 3's UI: the experiment kind its own "GenAI / Model training" selector writes
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def tracking_uri(cfg: Config) -> str:
    """``tracking.uri``, or the SQLite store under ``run.root``."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return "sqlite:///" + str(local_path(cfg.run.root).resolve() / "mlflow.db")


def artifact_root(cfg: Config) -> Optional[str]:
    """Where a new experiment keeps artifacts: ``mlartifacts`` beside a local SQLite store (for the
    default store ``<run.root>/mlartifacts``), not MLflow's ``./mlruns`` of whatever directory the
    command ran in; a server decides for itself (None)."""
    uri = tracking_uri(cfg)
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


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
    """The id of experiment ``name``, created if missing, tagged as a model-training experiment
    (a kind already set, e.g. in the UI, is left as it is)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def runs_link(uri: str, experiment: str) -> str:
    """The MLflow UI's page of experiment ``experiment``'s runs on tracking URI ``uri``: the server
    itself for an ``http(s)`` URI, else where ``mlflow ui --backend-store-uri <uri>`` serves.

    MLflow 3's UI opens an experiment on its GenAI overview unless it is told otherwise: the
    ``runs`` tab and ``workflowType=machine_learning`` (its "Model training" mode) open the runs
    list, whatever mode the browser last used."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"


class Tracker:
    """One MLflow run and the parts of it logged so far.

    Use :func:`start`; every ``log_*`` method is a no-op when tracking is off, already done for this
    MLflow run (see the module docstring) or MLflow has failed once in this process.
    """

    def __init__(self, client, run_id: Optional[str], record_path: Optional[Path], logged: list[str],
                 uri: str = "", parent_run_id: Optional[str] = None):
        self.client = client
        self.run_id = run_id
        self.record_path = record_path
        self.logged = logged
        self.uri = uri
        self.parent_run_id = parent_run_id
        self.experiment_id: Optional[str] = None
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
        """End the MLflow run; one warning line if something was not logged, else (a finished
        top-level run) one ``MLflow:`` line with the link to its experiment's runs."""
        if self.client is None:
            return
        if self.active and self.run_id:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as e:  # noqa: BLE001
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                self.failed.append("run end")
        if self.active and self.run_id and status == "FINISHED" and not self.parent_run_id:
            try:
                print(self.link_line(), flush=True)
            except Exception:  # noqa: BLE001 - the link is a convenience; the run is logged
                pass
        if self.failed:
            print(f"warning: MLflow tracking at {self.uri} failed ({self.error}); not logged: "
                  f"{', '.join(self.failed)} (the run directory has everything)", file=sys.stderr, flush=True)

    def link_line(self) -> str:
        """``MLflow: <runs link>``, with the command that serves a store that is not a server."""
        if self.experiment_id is None:
            self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
        line = f"MLflow: {runs_link(self.uri, self.experiment_id)}"
        if not self.uri.startswith(("http://", "https://")):
            line += f"  (serve it with: mlflow ui --backend-store-uri {shlex.quote(self.uri)})"
        return line


def start(cfg: Config, run_dir: Path, tags: Optional[dict] = None, parent_run_id: Optional[str] = None) -> Tracker:
    """Open (or resume, see the module docstring) the MLflow run of ``run_dir``."""
    if not cfg.tracking.enabled:
        return Tracker(None, None, None, [])
    uri = tracking_uri(cfg)
    record_path = run_dir / RECORD
    config_fp = fingerprint({k: v for k, v in cfg.to_dict().items() if k != "tracking"}, uri)
    rec = read_json(record_path) if record_path.is_file() else {}
    tracker = Tracker(None, None, record_path, [], uri, parent_run_id)
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
        tracker.run_id, tracker.experiment_id = run.info.run_id, exp
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
        log_metrics(tr, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
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
            _log_table(tr, table, "training/val_recall_per_class.json")
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


def final_metrics(metrics: dict) -> dict[str, float]:
    """MLflow metric names for a ``metrics.json``'s headline metrics (the per-class results are a
    table: :func:`per_class_table`)."""
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


def per_class_table(metrics: dict, labels: Optional[list] = None,
                    train_counts: Optional[dict] = None) -> dict[str, list]:
    """The per-class rows of a ``metrics.json`` as table columns, one row per class in class order:
    ``class`` (its name), ``label`` (its index), ``train_rows`` (training rows before sampling, when
    ``train_counts`` is given), ``support`` (test rows), precision, recall and F1 with 95% Wilson
    intervals of precision and recall (``*_lo``, ``*_hi``), specificity, G-mean, ROC and PR AUC, and
    after threshold moving (``metrics["adjusted"]``) ``*_adjusted`` precision, recall and F1.
    Undefined values (a class absent from the test set) are null."""
    # deferred: intervals imports pyarrow
    from pipeline.evaluation.intervals import wilson_per_class

    per_class = metrics.get("per_class") or []
    labels = labels or []
    wilson = {w["label"]: w for w in wilson_per_class(per_class)}
    adjusted = {r["label"]: r for r in (metrics.get("adjusted") or {}).get("per_class") or []}
    cols: dict[str, list] = {}
    for i, pc in enumerate(per_class):
        c = pc.get("label", i)
        w = wilson[c]
        row = {"class": str(pc.get("name", labels[i] if i < len(labels) else c)), "label": c}
        if train_counts is not None:
            row["train_rows"] = train_counts.get(c)
        row.update({"support": pc.get("support"),
                    "precision": pc.get("precision"), "precision_lo": w["precision_ci"][0],
                    "precision_hi": w["precision_ci"][1],
                    "recall": pc.get("recall"), "recall_lo": w["recall_ci"][0], "recall_hi": w["recall_ci"][1],
                    "f1": pc.get("f1"), "specificity": pc.get("specificity"), "g_mean": pc.get("g_mean"),
                    "roc_auc": pc.get("roc_auc"), "pr_auc": pc.get("pr_auc")})
        if adjusted:
            a = adjusted.get(c, {})
            row.update({f"{k}_adjusted": a.get(k) for k in ("precision", "recall", "f1")})
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    return cols


def _log_table(tr: Tracker, data: dict[str, list], artifact_file: str) -> None:
    """A table artifact: ``log_table`` registers it (the run's ``mlflow.loggedArtifacts`` tag, which
    makes the UI show it as a table), then the file is written again in the same layout with the
    values as they are (``log_table`` keeps 10 decimals) — which also replaces, rather than appends
    to, a table already in the run when its stage ran again."""
    folder = posixpath.dirname(artifact_file) or None
    if artifact_file not in {f.path for f in tr.client.list_artifacts(tr.run_id, folder)}:
        tr.client.log_table(tr.run_id, data=data, artifact_file=artifact_file)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / posixpath.basename(artifact_file)
        path.write_text(table_json(data))
        tr.client.log_artifact(tr.run_id, str(path), folder)


def table_json(data: dict[str, list]) -> str:
    """Columns as the JSON ``log_table`` writes and ``load_table`` reads (pandas' ``split`` layout:
    ``{"columns": [...], "data": [[row], ...]}``), floats in full; NaN becomes null."""
    cols = list(data)
    n = len(data[cols[0]]) if cols else 0

    def value(v):
        if isinstance(v, (np.integer, np.floating)):
            v = v.item()
        return None if isinstance(v, float) and v != v else v
    return json.dumps({"columns": cols, "data": [[value(data[c][i]) for c in cols] for i in range(n)]},
                      allow_nan=False)


def log_metrics(tr: Tracker, metrics: dict[str, float], step: int = 0) -> None:
    """Log scalar metrics at ``step`` to the open run (in batches MLflow accepts)."""
    Metric = _mlflow().entities.Metric
    items = [Metric(k, float(v), 0, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        tr.client.log_batch(tr.run_id, metrics=items[i:i + 1000])


def log_evaluation(tr: Tracker, run_dir: Path, labels: list, redo: bool = False) -> None:
    """The headline test metrics, the per-class table (:func:`per_class_table`, with the training
    rows from the sample manifest) and ``metrics.json``."""
    def _do():
        path = run_dir / "evaluate" / "metrics.json"
        metrics = read_json(path)
        log_metrics(tr, final_metrics(metrics))
        _log_table(tr, per_class_table(metrics, labels, read_training_counts(run_dir / "sample")), PER_CLASS_TABLE)
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
        log_metrics(tr, {f"seeds.{k}.{stat}": v for k, s in sp["metrics"].items() for stat, v in s.items()
                          if v is not None})
        tr.client.log_artifact(tr.run_id, str(path), "seed_spread")
    tr.part("seed spread", _do, redo)
