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
# Headless Chromium renders report.html in the report-rendering tests. This script changes nothing
# outside the checkout unless asked: it installs the distribution's chromium package only in CI
# (CI=true) or with --with-chromium, as root, without recommended packages and without upgrading
# anything already installed; otherwise it prints how to get it (those tests then skip, saying why).
WITH_CHROMIUM=0
for arg in "$@"; do
  case "$arg" in
    --with-chromium) WITH_CHROMIUM=1 ;;
    *) echo "install: unknown option '$arg' (the only option is --with-chromium)" >&2; exit 2 ;;
  esac
done
[ "${CI:-}" = true ] && WITH_CHROMIUM=1
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$WITH_CHROMIUM" = 1 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y -q --no-install-recommends --no-upgrade chromium
  elif [ "$WITH_CHROMIUM" = 1 ]; then
    echo "install: --with-chromium needs root for apt-get; run: sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 1
  else
    echo "install: the report-rendering tests need chromium; get it with 'bash scripts/install.sh --with-chromium' as root, or 'sudo apt-get install -y --no-install-recommends chromium' (they skip without it)" >&2
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
.venv/bin/python -c "import torch, pyarrow, numpy, pyspark, ray, petastorm; print('installed: torch', torch.__version__, '| pyarrow', pyarrow.__version__, '| numpy', numpy.__version__, '| pyspark', pyspark.__version__, '| ray', ray.__version__, '| petastorm', petastorm.__version__)"
