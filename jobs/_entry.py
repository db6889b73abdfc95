"""Shared helper of the ``jobs/`` entry points: run one CLI subcommand and exit with its status.

``spark-submit jobs/profile.py --input … --out …`` behaves exactly like
``imbalance profile --input … --out …``; the SparkSession picks up spark-submit's master.
"""
from __future__ import annotations

import os
import sys


def run(command: str) -> None:
    # Under spark-submit with --py-files the package may come from a zip; from a checkout it is
    # the parent of jobs/.
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipeline.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
