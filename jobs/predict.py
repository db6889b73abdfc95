"""spark-submit / `ray job submit` entry point for `imbalance predict` (same arguments), e.g.

    python jobs/predict.py conf/demo.yaml predict.model=runs/x/train/model predict.input=runs/x/split/test predict.out=runs/x/predict

Parses arguments like the CLI and calls `pipeline.predict.predict_from_config`;
exit status 2 (one line on stderr) on bad input or configuration, 1 on anything else.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _entry import run  # noqa: E402

# jobs/ must not stay on sys.path: jobs/profile.py would shadow the stdlib `profile` module,
# which pyspark and pyarrow import (cProfile -> profile).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

if __name__ == "__main__":
    run("predict")
