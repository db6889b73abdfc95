"""spark-submit / ray job entry point for `imbalance synth` (same arguments)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    run("synth")
