"""spark-submit / `ray job submit` entry point for the train stage: `python jobs/train.py CONFIG [key=value ...]`.

Parses arguments like `imbalance train`, calls the stage function, prints its result; exit status 2
(one line on stderr) on bad input or configuration, 1 on anything else.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import main  # noqa: E402


if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
