"""Shared helper of the ``jobs/`` entry points: run one CLI subcommand and exit with its status.

``spark-submit jobs/profile.py --input … --out …`` behaves exactly like
``imbalance profile --input … --out …`` (the SparkSession picks up spark-submit's master), and
``ray job submit -- python jobs/run.py CONFIG`` like ``imbalance run CONFIG``.
"""
from __future__ import annotations

import os
import sys

JOBS_DIR = os.path.dirname(os.path.abspath(__file__))


def run(command: str) -> None:
    # jobs/ must not stay on sys.path: jobs/profile.py would shadow the standard library's
    # `profile` module, which pyspark imports (cProfile -> profile).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != JOBS_DIR]
    # From a checkout the package is the parent of jobs/; under spark-submit --py-files it may
    # come from a wheel or zip already on the path.
    root = os.path.dirname(JOBS_DIR)
    if root not in sys.path:
        sys.path.append(root)
    from pipeline.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
