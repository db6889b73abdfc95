"""deploy/airflow/imbalance_retrain_dag.py under a real Apache Airflow: ``airflow dags test`` on
SQLite runs the tiny retrain end to end, then a broken config fails the run at once."""
from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.airflow.conftest import AIRFLOW, PROJECT_BIN, REPO, clean_env, registry_lines, run, tail

DAG_FILE = REPO / "deploy" / "airflow" / "imbalance_retrain_dag.py"
DAG_ID = "imbalance_retrain"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict:
    """A fresh AIRFLOW_HOME on SQLite with the DAG file copied into its dags folder (as a deployment
    does) and a migrated metadata database; the DAG's settings point at this checkout."""
    if not AIRFLOW.exists():
        pytest.fail(f"{AIRFLOW} is missing: run `bash scripts/install_airflow.sh` first")
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    shutil.copy(DAG_FILE, home / "dags")
    env = clean_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
                    AIRFLOW__CORE__LOAD_EXAMPLES="False",
                    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
                    IMBALANCE_HOME=str(REPO), IMBALANCE_BIN=str(PROJECT_BIN))
    r = run([AIRFLOW, "db", "migrate"], env, timeout=240)
    assert r.returncode == 0, tail(r.stdout)
    return env


def _last_run(env: dict):
    """The newest DAG run's state and its tasks' (state, try number), read from the SQLite
    metadata database (each Airflow CLI call would cost seconds of start-up)."""
    db = sqlite3.connect(f"file:{Path(env['AIRFLOW_HOME']) / 'airflow.db'}?mode=ro", uri=True)
    try:
        run_id, state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                   (DAG_ID,)).fetchone()
        tasks = {t: (s, n) for t, s, n in db.execute(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id))}
    finally:
        db.close()
    return state, tasks


def dags_test(env: dict, config: Path, logical_date: str, timeout: float):
    """``airflow dags test imbalance_retrain DATE`` with IMBALANCE_RETRAIN_CONFIG=config; returns
    the command's result, the DAG run's state and each task's (state, try number)."""
    # a task waiting for its retry (30 minutes) would keep `dags test` going: that is a failure here
    r = run([AIRFLOW, "dags", "test", DAG_ID, logical_date], dict(env, IMBALANCE_RETRAIN_CONFIG=str(config)),
            timeout=timeout, log=Path(env["AIRFLOW_HOME"]) / f"dags-test-{logical_date}.log",
            give_up=r"\[up_for_retry\]")
    return (r, *_last_run(env))


def test_dag_runs_a_retrain_and_registers_a_version(airflow_env, retrain_home):
    config = retrain_home / "conf" / "retrain.yaml"
    assert not (retrain_home / "runs").exists(), \
        "this test trains the shared retrain home first (test_cron.py reuses it): run this file before it"
    r, run_state, tasks = dags_test(airflow_env, config, "2026-11-02", timeout=420)
    assert r.returncode == 0, tail(r.stdout)
    assert run_state == "success", tail(r.stdout)
    assert tasks == {"retrain": ("success", 1), "registry_summary": ("success", 1)}, tail(r.stdout)
    # the tasks ran this checkout's CLI on the tiny config: a candidate trained, passed the gate, was promoted
    assert f"imbalance retrain {config}" in r.stdout
    assert "retrain: promoted version 1 to production" in r.stdout, tail(r.stdout)
    assert re.search(r"^\S+ \[info\s*\] \*\s+1 .*verdict=promoted .*aliases=production", r.stdout, re.M), \
        tail(r.stdout)  # registry_summary's task log shows the production version

    # the MLflow Model Registry has it, read independently of Airflow
    lines = registry_lines(config)
    assert len(lines) == 1 and re.match(r"\*\s+1\s", lines[0]), lines
    assert "verdict=promoted" in lines[0] and "aliases=production" in lines[0], lines
    (run_dir,) = (retrain_home / "runs").glob("retrain-*")
    assert (run_dir / "report" / "report.html").is_file()


def test_dag_run_fails_at_once_on_a_bad_config(airflow_env, tmp_path):
    """Exit status 2 (bad configuration) fails the retrain task without a retry (30 minutes later),
    the registry summary does not run, and `airflow dags test` reports the failed run."""
    bad = tmp_path / "retrain.yaml"
    bad.write_text("retrain:\n  lake: /nonexistent\nmodel:\n  nmae: mlp\n")
    r, run_state, tasks = dags_test(airflow_env, bad, "2026-11-03", timeout=240)
    assert r.returncode != 0, tail(r.stdout)
    assert run_state == "failed", tail(r.stdout)
    # one try: the task failed without a retry, and the summary never ran
    assert tasks == {"retrain": ("failed", 1), "registry_summary": ("upstream_failed", 0)}, tail(r.stdout)
    assert "unknown config key 'model.nmae'" in r.stdout, tail(r.stdout)
    assert "Command exited with return code 2" in r.stdout, tail(r.stdout)
    assert "not retried" in r.stdout, tail(r.stdout)
