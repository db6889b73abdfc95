"""spark-submit against a standalone master, with executors that only know our code via --py-files."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import REPO, VENV_BIN, clean_env

SUBMIT_TIMEOUT = 900


def submit_command(cluster, wheel, exec_python, job: str, args: list, py_files: bool = True,
                   extra_conf: dict | None = None, archives: str | None = None) -> list:
    """The README's command: the venv's spark-submit, the wheel on --py-files, executors on exec_python."""
    conf = {"spark.pyspark.python": str(exec_python), "spark.pyspark.driver.python": str(exec_python),
            "spark.executor.memory": "768m", "spark.executor.cores": "1", **(extra_conf or {})}
    cmd = [str(VENV_BIN / "spark-submit"), "--master", cluster.url, "--driver-memory", "1g"]
    if py_files:
        cmd += ["--py-files", str(wheel)]
    if archives:
        cmd += ["--archives", archives]
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    return cmd + [str(REPO / "jobs" / job), *map(str, args)]


def spark_submit(cluster, wheel, exec_python, job: str, args: list, cwd: Path, py_files: bool = True,
                 extra_conf: dict | None = None, archives: str | None = None) -> subprocess.CompletedProcess:
    cmd = submit_command(cluster, wheel, exec_python, job, args, py_files, extra_conf, archives)
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)


def app_of(cluster, app_name: str, since_ms: float) -> dict:
    """The standalone master's record of the application, and proof its executors ran on workers."""
    apps = [a for a in cluster.state()["completedapps"] + cluster.state()["activeapps"]
            if a["name"] == app_name and a["starttime"] >= since_ms]
    assert apps, f"the master registered no application {app_name!r} (did it run in local mode?)"
    app = apps[-1]
    assert app["state"] == "FINISHED" and app["cores"] >= 1, app
    # each worker keeps a work directory per executor it launched for the application
    ran_on = [w for w in cluster.root.glob("work*") if (w / app["id"]).is_dir()]
    assert ran_on, f"no worker launched an executor for {app['id']}"
    return app


@pytest.fixture(scope="module")
def submitted_run(spark_cluster, wheel, exec_python, tmp_path_factory):
    """``spark-submit jobs/run.py conf/tabular.yaml`` on the standalone cluster, once for this module."""
    tmp = tmp_path_factory.mktemp("submit-run")
    t0 = time.time() * 1000
    args = [REPO / "conf" / "tabular.yaml", f"run.root={tmp / 'runs'}", "run.id=tabular", "data.rows=3000",
            "train.epochs=1", "train.num_workers=1", "spark.shuffle_partitions=4", "spark.app_name=cluster-run"]
    r = spark_submit(spark_cluster, wheel, exec_python, "run.py", args, cwd=tmp)
    return tmp, t0, r


def test_run_via_spark_submit_on_standalone(spark_cluster, submitted_run):
    tmp, t0, r = submitted_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    app_of(spark_cluster, "cluster-run", t0)
    summary = json.loads((tmp / "runs" / "tabular" / "summary.json").read_text())
    assert summary["ran"][0] == "source" and summary["ran"][-1] == "report"
    assert (tmp / "runs" / "tabular" / "evaluate" / "metrics.json").is_file()


@pytest.mark.parametrize("job", ["profile", "sample"])
def test_profile_and_sample_jobs_via_spark_submit(spark_cluster, wheel, exec_python, submitted_run, tmp_path, job):
    run_tmp, _, r = submitted_run
    assert r.returncode == 0, "the run job failed: see test_run_via_spark_submit_on_standalone"
    split = run_tmp / "runs" / "tabular" / "split" / "train"
    args = ["--input", split, "--out", tmp_path / job] + (["--strategy", "ros"] if job == "sample" else [])
    t1 = time.time() * 1000
    r = spark_submit(spark_cluster, wheel, exec_python, f"{job}.py", args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    app_of(spark_cluster, "imbalance-pipeline", t1)
    assert (tmp_path / job / ("manifest.json" if job == "sample" else "distribution.json")).is_file()


def test_executor_environment_shipped_with_archives(spark_cluster, wheel, exec_python, submitted_run, tmp_path):
    """The executors' interpreter comes from a packed environment shipped with ``--archives``.

    Spark unpacks ``exec-env.tar.gz#environment`` into each executor's working directory, so
    ``spark.pyspark.python=./environment/bin/python`` is a path relative to it; no node needs the
    environment installed. (The driver, in client mode, uses an interpreter of its own.)
    """
    run_tmp, _, r = submitted_run
    assert r.returncode == 0, "the run job failed: see test_run_via_spark_submit_on_standalone"
    packed = tmp_path / "exec-env.tar.gz"
    subprocess.run(["tar", "-czf", str(packed), "-C", str(exec_python.parent.parent), "."], check=True, timeout=120)
    split = run_tmp / "runs" / "tabular" / "split" / "train"
    t1 = time.time() * 1000
    r = spark_submit(spark_cluster, wheel, exec_python, "profile.py", ["--input", split, "--out", tmp_path / "prof"],
                     cwd=tmp_path, archives=f"{packed}#environment",
                     extra_conf={"spark.pyspark.python": "./environment/bin/python"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    app = app_of(spark_cluster, "imbalance-pipeline", t1)
    unpacked = [w / app["id"] for w in spark_cluster.root.glob("work*")
                if list((w / app["id"]).glob("*/environment/bin/python"))]
    assert unpacked, "no executor unpacked the environment archive"
    assert (tmp_path / "prof" / "distribution.json").is_file()
