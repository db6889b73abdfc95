"""Example Airflow DAG: nightly data-lake retraining through the ``imbalance`` CLI.

Copy this file into Airflow's ``dags/`` folder on a machine (or image) where the project is
installed. The DAG runs ``imbalance retrain CONFIG`` (find new lake partitions, re-profile,
re-sample, warm-start from the production model, evaluate, promote only if the gate passes),
then lists the model's versions in the MLflow Model Registry so the task log shows which version
is in production.

Settings come from environment variables so the file needs no edits:
``IMBALANCE_HOME`` (the project checkout, where ``conf/`` lives), ``IMBALANCE_RETRAIN_CONFIG``
(default ``conf/retrain.yaml``, which also names the registry: ``tracking.uri`` / ``run.root`` and
``registry.model_name``), ``IMBALANCE_BIN`` (directory of the ``imbalance`` script, e.g. a virtualenv's
``bin``). Airflow is not a dependency of the project: without it this module only defines the
commands (so it can be checked and imported anywhere) and ``dag`` is ``None``.

Both tasks retry once, 30 minutes later, except when ``imbalance`` exits with status 2 (bad input or
configuration: retrying cannot help): then the task fails at once and the run fails.
"""
from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta, timezone

HOME = os.environ.get("IMBALANCE_HOME", "/opt/imbalance-pipeline")
CONFIG = os.environ.get("IMBALANCE_RETRAIN_CONFIG", "conf/retrain.yaml")
BIN = os.environ.get("IMBALANCE_BIN", "")
SCHEDULE = "30 2 * * *"  # nightly at 02:30, as deploy/cron/imbalance-retrain.cron

_path = f"export PATH={shlex.quote(BIN)}:$PATH && " if BIN else ""

RETRAIN_COMMAND = (f"{_path}cd {shlex.quote(HOME)} && "
                   f"imbalance retrain {shlex.quote(CONFIG)}")
REGISTRY_COMMAND = (f"{_path}cd {shlex.quote(HOME)} && "
                    f"imbalance registry --config {shlex.quote(CONFIG)} list")
BAD_INPUT_STATUS = 2  # the CLI's exit status for bad input/configuration

try:  # Airflow 3 moved BashOperator to the standard provider; Airflow 2 has it in core.
    from airflow import DAG
    try:
        from airflow.providers.standard.operators.bash import BashOperator as _AirflowBashOperator
    except ImportError:
        from airflow.operators.bash import BashOperator as _AirflowBashOperator
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:
        from airflow.exceptions import AirflowFailException
except ImportError:  # Airflow not installed: keep the module importable for checks
    DAG = None
    BashOperator = None
else:
    class BashOperator(_AirflowBashOperator):
        """Airflow's BashOperator, except that exit status 2 (bad input or configuration) fails the
        task without a retry: a retry would only wait ``retry_delay`` to fail the same way."""

        def execute(self, context):
            try:
                return super().execute(context)
            except Exception as e:
                proc = self.subprocess_hook.sub_process   # the finished command (Airflow 2 and 3)
                if proc is not None and proc.returncode == BAD_INPUT_STATUS:
                    raise AirflowFailException(f"{e} (bad input or configuration: not retried)") from e
                raise

dag = None
if DAG is not None:
    with DAG(
        dag_id="imbalance_retrain",
        description="Nightly retraining over the data lake with gated promotion",
        schedule=SCHEDULE,
        start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
        catchup=False,          # a retrain covers every new partition; no backfill runs needed
        max_active_runs=1,      # overlapping retrains would be safe (compare-and-set promotion), but wasteful
        default_args={"retries": 1, "retry_delay": timedelta(minutes=30),
                      "execution_timeout": timedelta(hours=6)},
        tags=["imbalance-pipeline"],
    ) as dag:
        retrain = BashOperator(task_id="retrain", bash_command=RETRAIN_COMMAND)
        registry = BashOperator(task_id="registry_summary", bash_command=REGISTRY_COMMAND)
        retrain >> registry
