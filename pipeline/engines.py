"""Engine start-up: one SparkSession and one Ray runtime per process.

Local by default (Spark ``local[*]``, a local Ray instance); a master given by spark-submit (or
``spark.master`` in the config) and a Ray address (``ray.address``) select a cluster instead.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from pipeline.config import RaySection, SparkSection

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from pipeline.config import RaySection, SparkSection

log = logging.getLogger(__name__)
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
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
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
    return spark


def stop_spark() -> None:
    # deferred: pyspark is slow to import
    from pyspark.sql import SparkSession

    s = SparkSession.getActiveSession()
    if s is not None:
        s.stop()


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


def stop_ray() -> None:
    # deferred: ray is slow to import
    import ray

    if ray.is_initialized():
        ray.shutdown()
