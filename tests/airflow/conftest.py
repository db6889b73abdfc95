"""Airflow tier: the scheduled-retraining deployments (deploy/airflow, deploy/cron) run for real.

A real Apache Airflow from ``.venv-airflow`` (``bash scripts/install_airflow.sh``; a virtualenv of
its own, so its pins never meet the project's) runs the DAG with ``airflow dags test`` on SQLite,
and the cron line runs under bash as cron would; both call this checkout's ``.venv/bin/imbalance``
for a tiny retrain over a local lake folder. Run it with ``python -m pytest -q tests/airflow``
(``pytest tests`` leaves this folder out, like tests/cluster).

Every command is a subprocess of the test; on a timeout, exactly that process and its descendants
are stopped (never a pattern kill).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
TIER = Path(__file__).resolve().parent
PROJECT_BIN = Path(sys.executable).parent          # .venv/bin: the `imbalance` script the deployments call
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
MODEL_NAME = "airflow-tier"


def pytest_ignore_collect(collection_path, config):
    """``pytest tests`` leaves this tier out (a real Airflow and a real retrain: minutes); it runs
    only when named: ``pytest -q tests/airflow``."""
    named = any(os.path.abspath(str(a).split("::")[0]).startswith(str(TIER)) for a in config.args)
    return None if named else True


def clean_env(**extra) -> dict:
    """This process's environment without anything that would steer Airflow, Spark, Ray or the
    deployments from outside the test."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")
           and not k.startswith(("AIRFLOW", "IMBALANCE_", "PYSPARK_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and every process it started (by pid: SIGTERM, then SIGKILL)."""
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def tail(text: str, n: int = 6000) -> str:
    """The end of a command's output for a failure message (Airflow's once-a-second "No tasks to
    run" lines while a task waits for its retry left out)."""
    text = "".join(ln for ln in text.splitlines(keepends=True) if "No tasks to run" not in ln)
    return text if len(text) <= n else "...\n" + text[-n:]


def run(args, env: dict, timeout: float, cwd=None, log: Path | None = None,
        give_up: str | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` to the end (stdout and stderr together, also written to ``log``). Past
    ``timeout`` seconds, or as soon as an output line matches ``give_up``, it and its descendants
    are stopped and the test fails with the output's tail."""
    args = [str(a) for a in args]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, text=True, errors="replace", start_new_session=True)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline, seen, why = time.monotonic() + timeout, 0, None
    while proc.poll() is None:
        n = len(lines)
        if time.monotonic() > deadline:
            why = f"ran past {timeout:.0f}s"
        elif give_up and any(re.search(give_up, ln) for ln in lines[seen:n]):
            why = f"printed a line matching {give_up!r}"
        if why:
            stop_tree(proc)
            break
        seen = n
        time.sleep(0.5)
    proc.wait()
    reader.join(timeout=30)
    out = "".join(lines)
    if log is not None:
        log.write_text(out)
    if why:
        pytest.fail(f"{' '.join(args[:4])} {why}{f' (all of it: {log})' if log else ''}:\n{tail(out)}")
    return subprocess.CompletedProcess(args, proc.returncode, out)


def write_partition(lake: Path, date: str, sizes, seed: int, dim: int = 8) -> None:
    """One ``ingest_date=`` partition of Gaussian-class feature vectors with the given class sizes."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(123).normal(0, 2.0, (len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = means[labels] + rng.normal(size=(len(labels), dim))
    d = lake / f"ingest_date={date}"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array(np.arange(len(labels)), pa.int64()),
                             "label": pa.array(labels, pa.int64()),
                             "features": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32()))}),
                   d / "part-0.parquet")


TINY_RETRAIN = """\
# a tiny retrain: one small lake partition, one epoch of a small MLP on one Ray worker
run:
  root: {root}/runs
registry:
  model_name: {model}
retrain:
  lake: {root}/lake
  tolerance: 0.05
  minority_recall_tolerance: 0.1
split:
  val: 0.1
  test: 0.2
model:
  name: mlp
  hidden: [16]
train:
  epochs: 1
  lr: 0.01
  num_workers: 1
stream:
  batch_size: 64
  row_group_mb: 0.05
spark:
  master: local[2]
  shuffle_partitions: 2
  driver_memory: 1g
ray:
  num_cpus: 2
"""


@pytest.fixture(scope="session")
def retrain_home(tmp_path_factory) -> Path:
    """A deployment's home: ``conf/retrain.yaml`` (the tiny retrain) over ``lake/`` (one partition),
    with the runs and the MLflow registry under ``runs/``. Shared by the Airflow and the cron tests:
    whichever runs first trains and promotes version 1; after that the lake has nothing new."""
    root = tmp_path_factory.mktemp("retrain-home")
    write_partition(root / "lake", "2026-11-01", [300, 100, 40, 20], seed=1)
    (root / "conf").mkdir()
    (root / "conf" / "retrain.yaml").write_text(TINY_RETRAIN.format(root=root, model=MODEL_NAME))
    return root


def registry_lines(config: Path) -> list[str]:
    """``imbalance registry --config CONFIG list``, run from the project's venv: one line per version."""
    r = run([PROJECT_BIN / "imbalance", "registry", "--config", config, "list"], clean_env(), timeout=180, cwd=REPO)
    assert r.returncode == 0, tail(r.stdout)
    return [ln for ln in r.stdout.splitlines() if ln.strip()]
