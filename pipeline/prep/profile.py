"""Class-distribution profile (``imbalance profile``): exact counts by Spark, ρ, minority classes.

``distribution.json`` (contract): ``n_rows``, ``n_classes``, ``classes`` (``{label, count,
fraction}``, largest first), ``rho`` = max class size / min class size (survey Eq. 1),
``min_class_size``, ``max_class_size``, ``minority_classes`` (see :data:`MINORITY_RULE`),
``top5_fraction``. A log-scale bar chart
``class_distribution.png`` and ``labels.json`` (original label values in index order) sit beside it.

References:

* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from pipeline.data.source import label_index, read_table, write_labels
from pipeline.errors import InputError
from pipeline.io import atomic_dir, label_key, local_path, write_json

DISTRIBUTION_FILE = "distribution.json"
CHART_FILE = "class_distribution.png"
# Which classes ``minority_classes`` lists. Dong, Gong & Zhu's Class Rectification Loss (CRL, ICCV
# 2017) splits the classes this way: taking classes from the smallest up, every class added while
# the running total stays at or below half of all rows is a minority class; the rest are majority
# classes. It is a description of the data (shown in the console, the chart and the report), used
# by no stage to change training.
MINORITY_RULE = ("the smallest classes that together hold at most half of the rows (classes taken "
                 "smallest first while their running total stays <= 50%; the minority/majority split "
                 "of Dong et al.'s Class Rectification Loss, CRL)")


def class_counts(df, label_col: str = "label") -> dict:
    """Exact rows per label (nulls excluded): a groupBy whose result has one row per class."""
    rows = df.where(F.col(label_col).isNotNull()).groupBy(label_col).count().collect()
    return {r[0]: int(r[1]) for r in rows}


def describe_counts(counts: dict) -> dict:
    """The ``distribution.json`` fields from a label → count mapping (pure)."""
    if not counts:
        raise InputError("no labelled rows: cannot profile an empty table")
    n = sum(counts.values())
    items = sorted(counts.items(), key=lambda kv: (-kv[1], label_key(kv[0])))
    smallest_first = sorted(counts.items(), key=lambda kv: (kv[1], label_key(kv[0])))
    minority, acc = [], 0
    for label, c in smallest_first:
        if acc + c > n / 2:
            break
        acc += c
        minority.append(label)
    max_c, min_c = items[0][1], items[-1][1]
    return {
        "n_rows": n,
        "n_classes": len(counts),
        "classes": [{"label": lab, "count": c, "fraction": c / n} for lab, c in items],
        "rho": max_c / min_c,
        "min_class_size": min_c,
        "max_class_size": max_c,
        "minority_classes": minority,
        "top5_fraction": sum(c for _, c in items[:5]) / n,
    }


def plot_distribution(dist: dict, path: str | Path) -> None:
    # deferred: matplotlib is slow to import
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib is slow to import
    import matplotlib.pyplot as plt

    counts = [c["count"] for c in dist["classes"]]
    minority = set(map(str, dist["minority_classes"]))
    colors = ["#d62728" if str(c["label"]) in minority else "#1f77b4" for c in dist["classes"]]
    fig, ax = plt.subplots(figsize=(max(6, min(16, 0.12 * len(counts) + 4)), 3.6))
    ax.bar(range(len(counts)), counts, color=colors, width=0.85)
    ax.set_yscale("log")
    ax.set_xlabel("class (largest first)")
    ax.set_ylabel("rows (log scale)")
    ax.set_title(f"{dist['n_classes']} classes, {dist['n_rows']:,} rows, rho = {dist['rho']:.0f}; "
                 f"red: {len(minority)} minority classes, the smallest holding <= 50% of rows together",
                 fontsize=10)
    if len(counts) <= 30:
        ax.set_xticks(range(len(counts)))
        ax.set_xticklabels([str(c["label"]) for c in dist["classes"]], rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_distribution(df, label_col: str = "label", name: str = "the table") -> dict:
    """The class distribution of a Spark DataFrame (one aggregation; nothing but the counts reaches
    the driver) — the library form of ``profile``: ``n_rows``, ``n_classes``, ``classes``
    (largest first), ``rho`` = max/min class size (survey Eq. 1), ``minority_classes``, ``top5_fraction``."""
    counts = class_counts(df, label_col)
    if not counts:
        raise InputError(f"{name} has no rows with a non-null '{label_col}'")
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(f"{name} has a single class ({label_col} = {only!r}): nothing to balance")
    dist = describe_counts(counts)
    dist["label_col"] = label_col
    return dist


def profile(spark, table: str, out: str, label_col: str = "label") -> dict:
    """Profile the class distribution of ``table`` into ``out/distribution.json`` (+ chart, labels.json)."""
    df = read_table(spark, table, label_col)
    dist = class_distribution(df, label_col, name=f"input {table}")
    counts = {c["label"]: c["count"] for c in dist["classes"]}
    out_p = local_path(out)
    with atomic_dir(out_p) as tmp:
        write_json(tmp / DISTRIBUTION_FILE, dist)
        write_labels(tmp, list(label_index(counts)))
        plot_distribution(dist, tmp / CHART_FILE)
    return dist


def minority_summary(dist: dict, show: int = 6) -> str:
    """One line saying which classes are the minority classes and by what rule (:data:`MINORITY_RULE`)."""
    minority = dist["minority_classes"]
    count = {str(c["label"]): c["count"] for c in dist["classes"]}
    share = sum(count.get(str(m), 0) for m in minority) / dist["n_rows"] if dist["n_rows"] else 0.0
    labels = ", ".join(str(m) for m in minority[:show]) + (", ..." if len(minority) > show else "")
    return (f"{len(minority)} minority classes ({labels}; {share:.1%} of the rows): {MINORITY_RULE}; "
            f"the other {dist['n_classes'] - len(minority)} are majority classes")


def format_distribution(dist: dict, top: int = 8) -> str:
    """A short printed table: the largest and smallest classes, ρ and the minority group."""
    lines = [f"{dist['n_rows']:,} rows, {dist['n_classes']} classes, rho = {dist['rho']:.1f} "
             f"(largest / smallest class), top-5 fraction = {dist['top5_fraction']:.3f}",
             minority_summary(dist),
             f"{'label':>12} {'count':>12} {'fraction':>9}"]
    classes = dist["classes"]
    shown = classes if len(classes) <= 2 * top else classes[:top] + [None] + classes[-top:]
    for c in shown:
        if c is None:
            lines.append(f"{'...':>12}")
            continue
        lines.append(f"{str(c['label']):>12} {c['count']:>12,} {c['fraction']:>9.5f}")
    return "\n".join(lines)
