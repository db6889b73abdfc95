"""Engine start-up: one SparkSession and one Ray runtime per process.

Local by default (Spark ``local[*]``, a local Ray instance); a master given by spark-submit (or
``spark.master`` in the config) and a Ray address (``ray.address``) select a cluster instead.

Worker output on the driver's console (``ray.log_to_driver: true``): Ray forwards every line its
workers and its own actors print (Ray Train's controller, its placement-group cleaner, Ray Data's
operators...) to the driver, each prefixed with ``(Name pid=N)``. :func:`get_ray` replaces Ray's
printer with :func:`_route_worker_output`: once :func:`route_worker_logs` has named a file (the
trainer names ``<run>/train/ray-workers.log``), every forwarded line goes to that file, and only
the lines a worker marked for the user (:data:`pipeline.io.CONSOLE_MARK`: one per epoch) and
Ray's distributed progress bars reach the console. ``ray.log_to_driver: false`` forwards nothing
(Ray keeps the workers' output in its session logs, ``/tmp/ray/session_*/logs``).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from pipeline.config import RaySection, SparkSection
from pipeline.io import CONSOLE_MARK

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from pipeline.config import RaySection, SparkSection

log = logging.getLogger(__name__)
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"   # set by Ray in the driver of a submitted job
LOG4J_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")


def launched_by_spark_submit() -> bool:
    """True when spark-submit started this process: its JVM (and the master it was given) is already up.

    ``SparkConf().get("spark.master")`` cannot tell before a SparkContext exists (it returns None
    even under ``spark-submit --master local[1]``); the gateway variables spark-submit exports can.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: "SparkSection | None" = None) -> "SparkSession":
    """Return the process's SparkSession, creating it on first use.

    Spark's Python workers are pinned to the running interpreter (``spark.pyspark.python``),
    otherwise they pick ``python3`` from PATH and fail with "No module named pyarrow".
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import SparkSession

    cfg = cfg or SparkSection()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    if not is_cluster_master(cfg.master):   # a cluster's executors must reach the driver by its address
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(cfg.app_name)
    # spark.master in the config wins; under spark-submit its --master stands (setting one here
    # would override it); otherwise Spark runs embedded in this process.
    if cfg.master:
        builder = builder.master(cfg.master)
    elif not launched_by_spark_submit():
        builder = builder.master("local[*]")
    builder = (
        builder
        # under spark-submit, PYSPARK_PYTHON is what --conf spark.pyspark.python named
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.pyspark.driver.python", os.environ["PYSPARK_DRIVER_PYTHON"])
        .config("spark.ui.enabled", "true" if cfg.ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.sql.parquet.compression.codec", "snappy")
        .config("spark.sql.session.timeZone", "UTC")
        # Our stage markers are our own _SUCCESS files; Spark's empty ones would confuse readers.
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.hadoop.parquet.enable.summary-metadata", "false")
        # lake partition values (ingest_date=2026-11-26) stay strings, not dates
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG4J_FILE}")
        .config("spark.executor.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG4J_FILE}")
    )
    for k, v in (cfg.conf or {}).items():
        builder = builder.config(str(k), str(v))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if is_cluster_master(cfg.master) and not launched_by_spark_submit():
        # no spark-submit --py-files: ship this package to the executors as spark-submit would
        spark.sparkContext.addPyFile(str(package_zip()))
    return spark


def is_cluster_master(master: Optional[str]) -> bool:
    """A master whose executors run elsewhere (standalone, YARN, Kubernetes), not ``local[...]``."""
    return bool(master) and not str(master).startswith("local")


# ------------------------------------------------------------------ this package on cluster workers
def package_dir() -> Path:
    """A directory holding this package (``pipeline/``) as the driver imports it.

    Imported from a zip (spark-submit ``--py-files imbalance_pipeline.zip``), the package is
    extracted once into a temporary directory, since Ray ships directories and wheels, not zips.
    """
    here = Path(__file__).resolve().parent
    if here.is_dir():
        return here
    archive = next(p for p in here.parents if p.is_file())          # .../imbalance_pipeline.zip
    out = Path(tempfile.mkdtemp(prefix="imbalance-pipeline-"))
    with zipfile.ZipFile(archive) as z:
        z.extractall(out, [n for n in z.namelist() if n.startswith("pipeline/")])
    return out / "pipeline"


def package_zip() -> Path:
    """This package as a zip with ``pipeline/`` at its root, for ``SparkContext.addPyFile``."""
    src = package_dir()
    out = Path(tempfile.mkdtemp(prefix="imbalance-pipeline-")) / "imbalance_pipeline.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, Path("pipeline") / f.relative_to(src))
    return out




def get_ray(cfg: "RaySection | None" = None) -> None:
    """Connect to (or start) the process's Ray runtime; a no-op when already initialised."""
    # deferred: ray is slow to import
    import ray

    cfg = cfg or RaySection()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = dict(
        ignore_reinit_error=True,
        log_to_driver=cfg.log_to_driver,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    if cfg.address:
        kwargs["address"] = cfg.address
        # A Ray job (`ray job submit --working-dir`) brings its code; any other driver ships this
        # package to the cluster's workers, whose environment has the pinned stack only.
        if RAY_JOB_ENV not in os.environ:
            kwargs["runtime_env"] = {"py_modules": [str(package_dir())]}
    else:
        # "local": a private instance every time. With no address Ray would join whatever cluster
        # `ray start` left on this machine (/tmp/ray/ray_current_cluster), and hang if it is gone.
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        # local workers must import this package and its interpreter's site-packages
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    ray.init(**kwargs)
    if cfg.log_to_driver:
        _install_worker_output_router()


# ------------------------------------------------------------------ forwarded worker output
_worker_log: Optional[Path] = None        # where forwarded worker lines go (None: Ray's own printer)
_ray_printer: Optional[Callable] = None   # Ray's printer, kept for its progress bars and the default
_log_lock = threading.Lock()
_TQDM_MAGIC = "__ray_tqdm_magic_token__"  # ray.experimental.tqdm_ray.RAY_TQDM_MAGIC


def route_worker_logs(path: "str | os.PathLike") -> Path:
    """From now on, write every line Ray forwards from its workers to ``path`` (appended) and show
    only the marked lines on the console; returns the path."""
    global _worker_log
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _worker_log = p
    return p


def _route_worker_output(data: dict) -> None:
    """Ray's log dispatcher calls this for each batch of lines from one worker process."""
    lines = data.get("lines") or []
    if _worker_log is None or data.get("pid") in ("autoscaler", "raylet"):
        if _ray_printer is not None:  # no worker log named: Ray's printing, minus our mark
            _ray_printer(dict(data, lines=[ln.replace(CONSOLE_MARK, "", 1) for ln in lines]))
        return
    who = f"({data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')}, " \
          f"{data.get('ip', '')}, {'stderr' if data.get('is_err') else 'stdout'})"
    stamp = time.strftime("%H:%M:%S")
    with _log_lock, open(_worker_log, "a", encoding="utf-8") as f:
        for line in lines:
            if _TQDM_MAGIC not in line:
                f.write(f"{stamp} {who} {line}\n")
    shown = [ln[len(CONSOLE_MARK):] for ln in lines if ln.startswith(CONSOLE_MARK)]
    if shown:
        print("\n".join(shown), file=sys.stderr, flush=True)
    bars = [ln for ln in lines if _TQDM_MAGIC in ln]
    if bars and _ray_printer is not None:
        _ray_printer(dict(data, lines=bars))


def _install_worker_output_router() -> None:
    """Swap Ray's driver-side printer of forwarded worker lines for :func:`_route_worker_output`.

    Ray (2.55) has no public hook for this: ``ray.init(log_to_driver=...)`` is all or nothing and
    ``RAY_DEDUP_LOGS`` only folds repeated lines. The printer is registered on Ray's stdstream
    dispatcher as ``"ray_print_logs"``; where that is missing (another Ray version) Ray's own
    printing stays.
    """
    global _ray_printer
    try:
        # deferred: ray is slow to import
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout
        return
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    handlers = dict(getattr(dispatcher, "handlers", []) or [])
    if "ray_print_logs" not in handlers:  # pragma: no cover - another Ray version
        return
    _ray_printer = handlers["ray_print_logs"]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _route_worker_output)


def stop_ray() -> None:
    # deferred: ray is slow to import
    import ray

    if ray.is_initialized():
        ray.shutdown()
