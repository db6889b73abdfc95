"""spark-submit entry point of the evaluate stage (same function as ``imbalance evaluate``).

    spark-submit jobs/evaluate.py --predictions runs/x/predict --out runs/x/evaluate \
        [--label-col label] [--pred-col pred] [--n-classes K] [--distribution runs/x/profile] [--no-report]

Exit status: 0 done, 2 bad input (one line on stderr), 1 anything else.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description="class-wise metrics (exact ROC AUC / PR AUC) "
                                "of a predictions table with Spark, plus report.md / report.html")
    p.add_argument("--predictions", required=True, help="predictions Parquet (id, label, probs, pred)")
    p.add_argument("--out", required=True, help="output directory for metrics.json and the report")
    p.add_argument("--label-col", default="label", help="name of the label column (default: label)")
    p.add_argument("--pred-col", default="pred", help="column of predicted labels (default: pred)")
    p.add_argument("--n-classes", type=int, default=None, help="number of classes (default: len(probs))")
    p.add_argument("--distribution", default=None, help="profile output for the report's distribution chart")
    p.add_argument("--no-report", action="store_true", help="metrics only")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from pipeline.engines import get_spark
    from pipeline.errors import InputError
    from pipeline.evaluate import evaluate_predictions

    try:
        m = evaluate_predictions(get_spark(), a.predictions, a.out, label_col=a.label_col,
                                 pred_col=a.pred_col, n_classes=a.n_classes,
                                 report=not a.no_report, distribution=a.distribution)
    except InputError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"macro F1 {m['macro']['f1']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
          f"G-mean {m['g_mean']:.4f}  -> {a.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
