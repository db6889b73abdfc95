"""Benchmark: class-wise evaluation in Spark vs scikit-learn single-process, same data, one run.

Plankton-shaped predictions: 103 classes with the plankton preset's class proportions
(``pipeline.data.synth.plankton_class_counts``), probabilities from a Dirichlet model correlated
with the label, rounded to 4 decimals (so there are many ties; the residual goes to the largest
entry so rows still sum to 1), ``pred = argmax``. For each size we time

* ours: ``evaluate_predictions`` (every metrics.json field, exact OvR ROC AUC and AP for every
  class, metrics written) on a local Spark with ``--cores`` cores, reading the Parquet table;
* scikit-learn: read the same Parquet with pyarrow into numpy, then the same metrics
  (``confusion_matrix``, ``precision_recall_fscore_support``, imbalanced-learn's
  ``sensitivity_specificity_support`` and ``geometric_mean_score``, ``balanced_accuracy_score``,
  Brier by hand, ``roc_auc_score`` and ``average_precision_score`` per class) in one process;
* optionally (``--mllib``) Spark MLlib's ``BinaryClassificationEvaluator`` (binned AUC) per class.

Run:  python bench/bench_evaluate.py --rows 340000 3400000 --repeats 3 --markdown docs/bench-evaluate.md
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K = 103


def class_counts(rows: int) -> np.ndarray:
    try:
        from pipeline.data.synth import plankton_class_counts

        c = np.asarray(plankton_class_counts(rows), dtype=np.int64)
        if len(c) == K:
            return c
    except ImportError:
        pass
    w = 1.0 / np.arange(1, K + 1) ** 1.4            # Zipf-like stand-in
    c = np.floor(w / w.sum() * rows).astype(np.int64)
    c[0] += rows - c.sum()
    return c


def generate(path: Path, rows: int, seed: int = 0, chunk: int = 200_000) -> None:
    """Write the predictions table (id, label, probs, pred) in chunks with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    counts = class_counts(rows)
    labels = np.repeat(np.arange(K), counts)
    rng.shuffle(labels)
    path.mkdir(parents=True)
    for f, start in enumerate(range(0, rows, chunk)):
        y = labels[start:start + chunk]
        n = len(y)
        alpha = np.full((n, K), 0.15)
        alpha[np.arange(n), y] = 2.0 + 3.0 * rng.random(n)   # model confidence varies per row
        g = rng.gamma(alpha)
        p = np.round(g / g.sum(axis=1, keepdims=True), 4)
        top = p.argmax(axis=1)
        p[np.arange(n), top] = 0.0
        p[np.arange(n), top] = 1.0 - p.sum(axis=1)
        pred = p.argmax(axis=1)
        probs = pa.ListArray.from_arrays(pa.array(np.arange(0, n * K + 1, K, dtype=np.int32)),
                                         pa.array(p.ravel()))
        pq.write_table(pa.table({"id": pa.array(np.arange(start, start + n), pa.int64()),
                                 "label": pa.array(y, pa.int64()), "probs": probs,
                                 "pred": pa.array(pred, pa.int64())}),
                       path / f"part-{f:05d}.parquet")


def brier(y, probs, chunk=100_000) -> float:
    """mean over rows of Σ_c (p_c − [y = c])², in chunks to bound memory."""
    total = 0.0
    for s in range(0, len(y), chunk):
        d = probs[s:s + chunk].copy()
        d[np.arange(len(d)), y[s:s + chunk]] -= 1.0
        total += float(np.einsum("ij,ij->", d, d))
    return total / len(y)


def sklearn_metrics(path: Path) -> tuple[dict, float]:
    """Same metrics single-process; returns (metrics, seconds spent reading)."""
    import pyarrow.parquet as pq
    from imblearn.metrics import geometric_mean_score, sensitivity_specificity_support
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix,
                                 precision_recall_fscore_support, roc_auc_score)

    t0 = time.perf_counter()
    t = pq.read_table(path, columns=["label", "probs", "pred"])
    y = t.column("label").to_numpy()
    pred = t.column("pred").to_numpy()
    probs = t.column("probs").combine_chunks().flatten().to_numpy().reshape(len(y), K)
    t_read = time.perf_counter() - t0
    labels = list(range(K))
    present = [c for c in labels if np.any(y == c)]
    cm = confusion_matrix(y, pred, labels=labels)
    prf = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    sen, spe, _ = sensitivity_specificity_support(y, pred, labels=labels, average=None)
    out = {
        "cm": cm, "prf": prf, "spe": spe,
        "g_mean": geometric_mean_score(y, pred, labels=present, average="multiclass"),
        "gm_class": geometric_mean_score(y, pred, labels=labels, average=None),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "brier": brier(y, probs),
        "roc_auc": {c: roc_auc_score(y == c, probs[:, c]) for c in present},
        "pr_auc": {c: average_precision_score(y == c, probs[:, c]) for c in present},
    }
    return out, t_read


def mllib_auc(spark, path: Path) -> None:
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(path)).select("label", "probs").cache()
    ev = BinaryClassificationEvaluator(rawPredictionCol="raw", labelCol="y", metricName="areaUnderROC")
    for c in range(K):
        d = df.select((F.col("label") == c).cast("double").alias("y"),
                      array_to_vector(F.array(F.lit(0.0) - F.col("probs")[c], F.col("probs")[c])).alias("raw"))
        ev.evaluate(d)
    df.unpersist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[340_000, 3_400_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-repeats", type=int, default=1,
                    help="repeats for sizes above 1M rows (default 1: scikit-learn alone takes minutes)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", default=None, help="directory for the generated tables (default: temp)")
    ap.add_argument("--mllib", action="store_true", help="also time MLlib BinaryClassificationEvaluator")
    ap.add_argument("--markdown", default=None, help="write a markdown section to this file")
    a = ap.parse_args(argv)

    from pipeline.config import SparkSection
    from pipeline.engines import get_spark
    from pipeline.evaluation.evaluate import evaluate_predictions

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-eval-"))
    spark = get_spark(SparkSection(master=f"local[{a.cores}]", shuffle_partitions=4 * a.cores,
                                   driver_memory="4g"))
    results = []
    for rows in a.rows:
        path = work / f"pred-{rows}"
        if not path.exists():
            t0 = time.perf_counter()
            generate(path, rows)
            print(f"[{rows}] generated in {time.perf_counter() - t0:.1f}s", flush=True)
        ours, sk, sk_read, ml = [], [], [], []
        ref = None
        repeats = a.repeats if rows <= 1_000_000 else a.large_repeats
        for r in range(repeats):
            out = work / f"eval-{rows}"
            t0 = time.perf_counter()
            m = evaluate_predictions(spark, str(path), str(out))
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref, t_read = sklearn_metrics(path)
            sk.append(time.perf_counter() - t0)
            sk_read.append(t_read)
            print(f"[{rows}] repeat {r}: ours {ours[-1]:.1f}s  sklearn {sk[-1]:.1f}s "
                  f"(read {t_read:.1f}s)", flush=True)
            if a.mllib:
                t0 = time.perf_counter()
                mllib_auc(spark, path)
                ml.append(time.perf_counter() - t0)
        # the figures only count if they agree
        worst = max(abs(m["per_class"][c]["roc_auc"] - v) for c, v in ref["roc_auc"].items())
        worst = max(worst, max(abs(m["per_class"][c]["pr_auc"] - v) for c, v in ref["pr_auc"].items()))
        assert np.array_equal(np.array(m["confusion_matrix"]), ref["cm"])
        assert abs(m["brier"] - ref["brier"]) < 1e-9 and worst < 1e-9, worst
        res = dict(rows=rows, ours=statistics.median(ours), sklearn=statistics.median(sk),
                   sklearn_compute=statistics.median([s - r_ for s, r_ in zip(sk, sk_read)]),
                   mllib=statistics.median(ml) if ml else None, max_diff=worst, repeats=repeats)
        res["ratio"] = res["ours"] / res["sklearn"]
        results.append(res)
        print(f"[{rows}] median ours {res['ours']:.1f}s, sklearn {res['sklearn']:.1f}s "
              f"(compute only {res['sklearn_compute']:.1f}s), ratio ours/sklearn {res['ratio']:.2f}, "
              f"max |AUC/AP diff| {worst:.2e}", flush=True)
        shutil.rmtree(work / f"eval-{rows}", ignore_errors=True)

    cmd = "python bench/bench_evaluate.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    lines = ["## Evaluate: exact class-wise metrics in Spark vs scikit-learn", "",
             f"Machine: {os.cpu_count()} cores (shared), Spark local[{a.cores}]; 103 classes, plankton "
             "proportions, probs rounded to 4 decimals (ties). Medians of "
             + ", ".join(f"{r['repeats']} run(s) at {r['rows']:,}" for r in results)
             + "; ours reads Parquet and writes metrics.json; scikit-learn reads the "
             "same Parquet with pyarrow and computes the same fields single-process.", "",
             "| rows | ours (s) | scikit-learn (s) | sklearn compute only (s) | ours / sklearn | ours rows/s |"
             + (" MLlib binned AUC (s) |" if a.mllib else "") + " max abs diff AUC/AP |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if a.mllib else "") + " ---: |"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['ours']:.1f} | {r['sklearn']:.1f} | {r['sklearn_compute']:.1f} | "
                     f"{r['ratio']:.2f} | {r['rows'] / r['ours']:,.0f} |"
                     + (f" {r['mllib']:.1f} |" if a.mllib else "") + f" {r['max_diff']:.1e} |")
    if len(results) >= 2:
        r0, r1 = results[0], results[-1]
        lines += ["", f"Scaling {r0['rows']:,} → {r1['rows']:,} rows (×{r1['rows'] / r0['rows']:.0f}): "
                  f"ours ×{r1['ours'] / r0['ours']:.2f}, scikit-learn ×{r1['sklearn'] / r0['sklearn']:.2f}."]
    lines += ["", f"Reproduce: `{cmd}`", ""]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(text)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
