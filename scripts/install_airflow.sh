#!/usr/bin/env bash
# Install Apache Airflow into ./.venv-airflow (idempotent), for the Airflow tier (tests/airflow):
# `airflow dags test` runs deploy/airflow/imbalance_retrain_dag.py against it. Airflow lives in a
# virtualenv of its own, so its pins never meet the project's (.venv is not touched); its tasks call
# the project's `imbalance` script from .venv/bin.
# Airflow's constraint files are not used; the packages below are pinned instead, to the versions
# tested together, so pip resolves quickly and the same way every time.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-airflow
PINS="apache-airflow==3.3.2
apache-airflow-core==3.3.2
apache-airflow-task-sdk==1.3.2
apache-airflow-providers-standard==1.21.0
apache-airflow-providers-common-compat==1.23.0
apache-airflow-providers-common-io==1.11.0
apache-airflow-providers-common-sql==2.4.0
apache-airflow-providers-smtp==3.2.0
sqlalchemy==2.1.9
alembic==1.20.1
pydantic==2.14.4
pydantic-core==2.50.5
fastapi==0.136.3
starlette==1.10.0
cadwyn==7.0.0
httpx==0.29.0
uvicorn==0.55.0
structlog==26.1.0
pendulum==3.3.0
msgspec==0.23.0"
STAMP="$VENV/.installed-pins"

if [ -x "$VENV/bin/airflow" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ]; then
  echo "install_airflow: $VENV is up to date ($(head -1 "$STAMP"))"
  exit 0
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# a venv made from inside another venv still takes the base interpreter, never .venv's packages
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install -q "pip==26.3"
constraints=$(mktemp)
scratch=$(mktemp -d)   # AIRFLOW_HOME for the check below: Airflow writes airflow.cfg wherever that is
trap 'rm -rf "$constraints" "$scratch"' EXIT
printf '%s\n' "$PINS" > "$constraints"
# --no-compile: Python compiles the modules Airflow imports on first use; compiling all of them here
# would double the install time
"$VENV/bin/python" -m pip install -q --no-compile -c "$constraints" "$(head -1 "$constraints")"
got=$(AIRFLOW_HOME="$scratch" "$VENV/bin/airflow" version 2>/dev/null | tail -1)
[ "apache-airflow==$got" = "$(head -1 "$constraints")" ] \
  || { echo "install_airflow: $VENV/bin/airflow version says '$got'" >&2; exit 1; }
printf '%s' "$PINS" > "$STAMP"
echo "install_airflow: installed $(head -1 "$constraints") into $VENV"
