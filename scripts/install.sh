#!/usr/bin/env bash
# Install imbalance-pipeline and its pinned stack into ./.venv (idempotent).
# Torch goes first from the pinned CPU wheel; constraints.txt then keeps pip from replacing it
# (an unpinned torch, or petastorm 0.13's setuptools<70 pin, makes pip pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "install: Java 17 is required by Spark 3.5 (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless)" >&2
  exit 1
fi
# headless Chromium renders report.html in the tests (tests/integration/test_report_render.py);
# installed from the distribution's packages when running as root (CI), otherwise left to the user
if [ "$(id -u)" = 0 ]; then
  command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)
elif ! command -v chromium >/dev/null 2>&1; then
  echo "install: the report-rendering tests need chromium (Debian/Ubuntu: sudo apt-get install -y chromium)" >&2
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
.venv/bin/python -c "import torch, pyarrow, numpy, pyspark, ray, petastorm; print('installed: torch', torch.__version__, '| pyarrow', pyarrow.__version__, '| numpy', numpy.__version__, '| pyspark', pyspark.__version__, '| ray', ray.__version__, '| petastorm', petastorm.__version__)"
