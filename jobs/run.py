"""spark-submit / `ray job submit` entry point for `imbalance run`: same arguments, same exit status.

    spark-submit --master local[2] jobs/run.py --help
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    run("run")
