"""spark-submit / `ray job submit` entry point for `imbalance ingest`: same arguments, same exit status.

    spark-submit --master local[2] jobs/ingest.py --help
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    run("ingest")
