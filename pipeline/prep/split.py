"""Exact stratified splits (``imbalance split``) with row validation.

Every valid row goes to exactly one of ``train/``, ``val/``, ``test/``: per class, the
``round(n_c·test)`` rows of smallest hash rank (key ``xxhash64(seed, id)``, see
:mod:`pipeline.prep.keys`) are test, the next ``round(n_c·val)`` val, the rest train. The split is
exact per class to one row, deterministic in (seed, id) and independent of how the input is
partitioned. Invalid rows — null id or label, a duplicated id, a missing/NaN/infinite feature, an
image whose bytes do not match its shape — go to ``rejected/`` with a ``reason`` column and are
counted; nothing is dropped silently. The stage fails (InputError → exit 2) only on a wrong schema
or when no valid row is left.

Labels are mapped to dense indices ``0..C-1`` (sorted original values, ``labels.json``) so later
stages can index tensors by label. Data that already carries a split — a ``split`` column with
values train/val/test, or separate tables — keeps it.
"""
from __future__ import annotations

import math
import shutil
from typing import Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.data.images import MIN_SIZE, check_options, decoded_frame, image_shape as decoded_shape
from pipeline.data.schema import FEATURES_COL, IMAGE_COL, DatasetInfo, write_info
from pipeline.data.source import frame_info, label_index, read_table, table_info, write_labels
from pipeline.errors import InputError
from pipeline.io import atomic_dir, local_path, spark_uri, write_json
from pipeline.prep.keys import BUCKET, KEY, assign_buckets, split_cutoffs
from pipeline.prep.literals import class_lookup

SPLITS = ("train", "val", "test")
SPLIT_COL = "split"
BROADCAST_IDS = 1_000_000   # duplicated ids joined by broadcast up to this many


def _reason_col(df: DataFrame, info: DatasetInfo, label_col: str, payload: bool = True) -> F.Column:
    """A column with the first reason a row is invalid, or null when the row is valid.

    ``payload=False``: only the id and label checks (no features/image column is read).
    """
    checks = [
        (F.col("id").isNull(), "null id"),
        (F.col(label_col).isNull(), f"null {label_col}"),
    ]
    if payload and info.kind == "features":
        x = F.col(FEATURES_COL)
        checks += [
            (x.isNull(), "missing features"),
            (F.size(x) != int(info.n_features), f"features length is not {info.n_features}"),
            (F.exists(x, lambda v: v.isNull()), "missing feature value"),
            (F.exists(x, lambda v: F.isnan(v)), "NaN feature"),
            (F.exists(x, lambda v: (v == float("inf")) | (v == float("-inf"))), "infinite feature"),
        ]
    elif payload and info.image_shape is None:  # encoded images: the decoder checks them (pipeline.data.images)
        checks.append((F.col(IMAGE_COL).isNull(), "missing image"))
    elif payload:
        n_bytes = math.prod(int(s) for s in info.image_shape)
        img = F.col(IMAGE_COL)
        checks += [
            (img.isNull(), "missing image"),
            (F.length(img) != n_bytes, f"image does not decode as {'x'.join(map(str, info.image_shape))} uint8"),
        ]
    expr = F.lit(None).cast("string")
    for cond, reason in reversed(checks):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def duplicate_ids(df: DataFrame, info: DatasetInfo):
    """The ids that occur more than once, as a frame ``(id, _dup)`` — or None when there are none.

    Found with a job that reads the ids alone; the rows are joined with them only when there are
    any (broadcast while few), so a clean table is never shuffled with its images.
    """
    if "id" not in df.columns:
        raise InputError("input has no 'id' column (a unique row id is required)")
    if info.kind == "features" and FEATURES_COL not in df.columns:
        raise InputError(f"input has no '{FEATURES_COL}' column")
    if info.kind == "image" and IMAGE_COL not in df.columns:
        raise InputError(f"input has no '{IMAGE_COL}' column")
    dups = df.groupBy("id").count().where("count > 1 and id is not null").select("id", F.lit(True).alias("_dup"))
    n_dups = dups.count()
    if n_dups == 0:
        return None
    return F.broadcast(dups) if n_dups <= BROADCAST_IDS else dups


def _with_reasons(df: DataFrame, info: DatasetInfo, label_col: str, payload: bool, dups) -> DataFrame:
    df = df.withColumn("reason", _reason_col(df, info, label_col, payload))
    if dups is None:
        return df
    # Duplicated ids break (id, copy) uniqueness downstream: reject every row of such an id.
    df = df.join(dups, on="id", how="left")
    return df.withColumn("reason", F.when(F.col("_dup") & F.col("reason").isNull(), F.lit("duplicate id"))
                         .otherwise(F.col("reason"))).drop("_dup")


def _index_labels(df: DataFrame, label_col: str, mapping: dict) -> DataFrame:
    return df.withColumn(label_col, class_lookup(label_col, mapping, "bigint"))


def _check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"split fractions must satisfy 0 <= val, test and val + test < 1 (val={val}, test={test})")


def _checked_frames(df, info: DatasetInfo, label_col: str, decode: dict, optimistic: bool):
    """``(checked, cheap)``: the rows with their ``reason`` (null when valid; encoded images decoded),
    and — when ``optimistic`` — the same rows checked on id and label alone (else None)."""
    encoded = info.kind == "image" and info.image_shape is None
    if encoded:
        try:
            check_options(decode["size"], decode["mode"], decode["resize"], decode["min_size"])
        except ValueError as e:
            raise InputError(str(e)) from None
        if IMAGE_COL not in df.columns:
            raise InputError(f"input has no '{IMAGE_COL}' column")
    dups = duplicate_ids(df, info)
    checked = _with_reasons(df, info, label_col, True, dups)
    cheap = _with_reasons(df, info, label_col, False, dups) if optimistic and not encoded else None
    if encoded:  # decode the rows that passed (the decoder keeps a reason already set), one pass
        checked = decoded_frame(checked, **decode)
        info.image_shape = decoded_shape(decode["size"], decode["mode"])
    if SPLIT_COL in df.columns:
        def split_check(frame):
            return frame.withColumn(
                "reason", F.when(F.col("reason").isNull() & ~F.col(SPLIT_COL).isin(*SPLITS),
                                 F.lit("split is not train/val/test")).otherwise(F.col("reason")))
        checked = split_check(checked)
        cheap = split_check(cheap) if cheap is not None else None
    return checked, cheap


def _tally(narrow: DataFrame, label_col: str):
    """Valid rows per label and rejected rows per reason, from the narrow (id, label, reason) copy."""
    counts: dict = {}
    reasons: dict = {}
    for reason, lab, c in narrow.groupBy("reason", label_col).count().collect():
        if reason is None:
            counts[lab] = counts.get(lab, 0) + int(c)
        else:
            reasons[reason] = reasons.get(reason, 0) + int(c)
    if not counts:
        why = f", mostly: {max(reasons, key=reasons.get)}" if reasons else ""
        raise InputError(f"no valid row left ({sum(reasons.values())} rejected{why})")
    return counts, reasons


def split_frame(df, val: float = 0.1, test: float = 0.2, random_state: int = 0, label_col: str = "label", *,
                info: Optional[DatasetInfo] = None, image_shape: Optional[list] = None, size: int = 32,
                mode: str = "L", resize: str = "pad", min_size: int = MIN_SIZE, optimistic: bool = False):
    """Split a Spark DataFrame exactly per class; return ``(split, rejected, summary)`` — the library form of ``split``.

    Each class's rows are ranked by a hash of (``random_state``, ``id``): the first
    ``round(n_c·test)`` are test, the next ``round(n_c·val)`` val, the rest train, so every class
    keeps its share whatever the partitioning. An existing ``split`` column (train/val/test) is
    kept instead. Invalid rows (null label, NaN/inf/missing features, bad image bytes) are not
    dropped: they are in ``rejected`` with a ``reason``. ``split`` has the valid rows with their
    label replaced by its dense index (``summary["labels"]`` maps index → original label) and a
    ``split`` column; both frames are lazy. ``summary``: ``labels``, ``counts`` (index → valid
    rows), ``rejected`` (count), ``info`` (the table's description). ``info``/``image_shape``
    describe the columns when the frame alone cannot (raw image bytes need their shape).

    Encoded images: an ``image`` column of PNG/JPEG/... bytes with no shape is decoded and resized
    to ``size`` × ``size`` in ``mode`` by ``resize`` (:mod:`pipeline.data.images`, the decoder of
    ``imbalance ingest``); rows that do not decode, or are narrower or lower than ``min_size``, are
    rejected with the decoder's reason.

    ``optimistic``: count the classes from the id and label checks alone (the features or image
    column is not read for them) — exact only if no row fails a features/image check, which the
    caller must verify on what it wrote (``split_dataset`` compares the written total with
    ``summary["counts"]`` and redoes the split exactly when they differ).
    """
    _check_fractions(val, test)
    info = info or frame_info(df, label_col, image_shape)
    decode = {"size": size, "mode": mode, "resize": resize, "min_size": min_size}
    checked, cheap = _checked_frames(df, info, label_col, decode, optimistic)
    valid = checked.where(F.col("reason").isNull()).drop("reason")
    rejected = checked.where(F.col("reason").isNotNull())
    # The counts and the rows at the cut-offs come from a narrow, persisted copy of (id, label,
    # reason): one read of the table for all of them; only the final write reads every column.
    narrow = (cheap if cheap is not None else checked).select("id", label_col, "reason").persist()
    try:
        counts, reasons = _tally(narrow, label_col)
        mapping = label_index(counts)
        indexed = _index_labels(valid, label_col, mapping)
        idx_counts = {mapping[k]: v for k, v in counts.items()}
        if SPLIT_COL in df.columns:
            assigned = indexed
        else:
            cut = split_cutoffs(idx_counts, [test, val])
            narrow_valid = _index_labels(narrow.where(F.col("reason").isNull()).drop("reason"), label_col, mapping)
            assigned = assign_buckets(indexed, label_col, idx_counts, cut, random_state, ranks_from=narrow_valid)
            assigned = assigned.withColumn(
                SPLIT_COL, F.element_at(F.array(*[F.lit(s) for s in ("test", "val", "train")]), F.col(BUCKET) + 1)
            ).drop(BUCKET, KEY)
    finally:
        narrow.unpersist()
    # columns in the order the split has always written them: label (split) or id (pre-split) first
    first = ["id"] if SPLIT_COL in df.columns else [label_col, "id"]
    assigned = assigned.select(*first, *[c for c in assigned.columns if c not in first])
    return assigned, rejected, {"labels": list(mapping), "counts": idx_counts, "rejected": sum(reasons.values()),
                                "rejected_reasons": reasons, "info": info, "presplit": SPLIT_COL in df.columns,
                                "optimistic": cheap is not None}


def _write_splits(spark, assigned, fit: dict, info: DatasetInfo, label_col: str, tmp):
    """Write ``assigned`` as ``tmp/{train,val,test}`` (with ``_dataset.json``); return the counts
    read back from the written files and the data columns."""
    labels = fit["labels"]
    info.n_classes = len(labels)
    info.labels = labels
    data_cols = [c for c in assigned.columns if c != SPLIT_COL]
    assigned.write.partitionBy(SPLIT_COL).parquet(spark_uri(tmp / "_all"))
    # the counts of all three splits, read back from the written files in one job (label column only)
    written: dict = {name: {} for name in SPLITS}
    if any((tmp / "_all" / f"{SPLIT_COL}={name}").exists() for name in SPLITS):
        for name, lab, n in (spark.read.parquet(spark_uri(tmp / "_all"))
                             .groupBy(SPLIT_COL, label_col).count().collect()):
            written[name][int(lab)] = int(n)
    split_counts = {}
    for name in SPLITS:
        part_dir = tmp / "_all" / f"{SPLIT_COL}={name}"
        target = tmp / name
        if part_dir.exists():
            part_dir.rename(target)
        else:
            spark.createDataFrame([], assigned.select(*data_cols).schema).write.parquet(spark_uri(target))
        c = written[name]
        split_counts[name] = {str(k): c.get(k, 0) for k in range(len(labels))}
        write_info(target, DatasetInfo(**{**info.to_dict(), "class_counts": split_counts[name]}))
    shutil.rmtree(tmp / "_all", ignore_errors=True)
    return split_counts, data_cols


def split_dataset(
    spark,
    table: str | dict,
    out: str,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    *,
    label_col: str = "label",
    image_shape: Optional[list] = None,
    size: int = 32,
    mode: str = "L",
    resize: str = "pad",
    min_size: int = MIN_SIZE,
) -> dict:
    """Split ``table`` into ``out/{train,val,test}/`` exactly per class; invalid rows to ``out/rejected/``.

    ``table`` is one table path, or a dict ``{"train": path, "val": path, "test": path}`` of
    tables that are already split. A ``split`` column in a single table is honoured too.
    The rows are :func:`split_frame`'s (which also decodes encoded images). Returns a summary ``{"counts": {split: {label_index: rows}},
    "rejected": n, "labels": [...]}`` also written to ``out/split.json``.
    """
    _check_fractions(val, test)
    if isinstance(table, dict):
        parts = []
        first = None
        for name in SPLITS:
            path = table.get(name)
            if path is None:
                raise InputError(f"pre-split input is missing the '{name}' table")
            part = read_table(spark, path, label_col)
            first = first or (path, part)
            parts.append(part.withColumn(SPLIT_COL, F.lit(name)))
        cols = parts[0].columns
        df = parts[0]
        for p in parts[1:]:
            df = df.unionByName(p.select(*cols))
        info = table_info(first[0], first[1], label_col, image_shape)
    else:
        df = read_table(spark, table, label_col)
        info = table_info(table, df, label_col, image_shape)

    with atomic_dir(local_path(out)) as tmp:
        # First without reading the features/images for the counts; if a row then fails a
        # features/image check (the written total falls short of the counts), redo it exactly.
        for optimistic in (True, False):
            fit_info = DatasetInfo(**info.to_dict())
            try:
                assigned, rejected, fit = split_frame(df, val, test, seed, label_col, info=fit_info, size=size,
                                                      mode=mode, resize=resize, min_size=min_size,
                                                      optimistic=optimistic)
            except InputError as e:
                if str(e).startswith("no valid row"):
                    raise InputError(f"no valid row left in {table}{str(e)[len('no valid row left'):]}") from None
                raise
            split_counts, data_cols = _write_splits(spark, assigned, fit, fit_info, label_col, tmp)
            written = sum(sum(c.values()) for c in split_counts.values())
            if not fit["optimistic"] or written == sum(fit["counts"].values()):
                break
            for child in tmp.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        labels, n_rejected = fit["labels"], fit["rejected"]
        if n_rejected:
            rejected.write.parquet(spark_uri(tmp / "rejected"))
        else:  # nothing to quarantine: an empty table with the schema, without another pass
            spark.createDataFrame([], rejected.schema).write.parquet(spark_uri(tmp / "rejected"))
        write_labels(tmp, labels)
        summary = {"counts": split_counts, "rejected": int(n_rejected), "labels": labels,
                   "seed": seed, "val": val, "test": test, "label_col": label_col,
                   "presplit": fit["presplit"], "data_cols": data_cols}
        if n_rejected:
            summary["rejected_reasons"] = {r[0]: int(r[1]) for r in spark.read.parquet(spark_uri(tmp / "rejected"))
                                           .groupBy("reason").count().collect()}
        write_json(tmp / "split.json", summary)
    return summary
