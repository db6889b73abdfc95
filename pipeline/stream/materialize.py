"""Materialize a (sampled) table as a Petastorm-readable Parquet dataset for streaming training.

What the reader needs, and how it is produced:

* **Shuffled rows.** Rows are placed by a seeded hash ``h = xxhash64(seed, "stream", id, copy)``:
  the file (Spark partition) is chosen from ``h`` and rows are sorted by ``h`` inside it. The
  copies of one rare row made by ROS have different ``copy`` values, hence independent hashes,
  so they land in different files/row groups at random instead of in one run. This is a hash
  repartition plus a per-partition sort — no global sort, no skew (every file gets ~1/P of
  every class). The layout depends only on (data, seed, number of files).
* **Equal row groups sized for streaming.** Petastorm reads and shards whole row groups, handing
  them out round-robin (``cur_shard=i, shard_count=n``), so the shards are only as even as the
  row groups. Each file is written as *one* row group of about ``row_group_mb`` (default 32 MB):
  the number of files G is the input size over ``row_group_mb`` (bytes per row from the input's
  footers), rounded up to a multiple of ``min_files`` (default 8) so 1, 2, 4 or 8 workers get the
  same number of groups, and the hash repartition makes the files equal to within a few rows.
  (Letting the writer cut row groups by size inside larger files left each file with one full and
  one small remainder group, which round-robin sharding dealt as all-full to one worker and
  all-small to the other: 258k vs 21k rows on the plankton pre-training set.)
* **Plain Parquet + ``_dataset.json``.** ``make_batch_reader`` reads plain Parquet (it infers
  the schema from Arrow; no Unischema is needed for the batch reader); the dataset description
  is copied beside the files so readers can decode ``image``/``features`` into tensors.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

from pipeline.data.schema import has_info, read_info, write_info
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, local_path, spark_uri, write_json

MB = 1024 * 1024
SALT = "stream"


def _input_bytes(df) -> int:
    """Size of the input files as Spark's planner sees it (no data read)."""
    try:
        return int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:  # pragma: no cover - defensive: stats are always there for Parquet
        return 0


def parquet_stats(path: str | os.PathLike) -> dict:
    """Files, row groups, rows and bytes of a local Parquet directory (footers only)."""
    # deferred: pyarrow is slow to import
    import pyarrow.parquet as pq

    files, groups, rows, size = 0, 0, 0, 0
    group_rows = []
    for f in sorted(Path(path).rglob("*.parquet")):
        if any(part.startswith(("_", ".")) for part in f.relative_to(path).parts):
            continue
        md = pq.ParquetFile(f).metadata
        files += 1
        groups += md.num_row_groups
        rows += md.num_rows
        size += f.stat().st_size
        group_rows += [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    return {"files": files, "row_groups": groups, "rows": rows, "bytes": size,
            "min_row_group_rows": min(group_rows) if group_rows else 0,
            "max_row_group_rows": max(group_rows) if group_rows else 0}


def materialize(spark, table: str, out: str, *, seed: int = 0, row_group_mb: float = 32.0,
                label_col: str = "label", files: Optional[int] = None, min_files: int = 8,
                file_mb: float = 128.0) -> dict:
    """Write ``table`` (Parquet) to ``out`` shuffled and chunked for Petastorm streaming.

    ``files``: number of Parquet files, each one row group (default: input size / ``row_group_mb``
    rounded up to a multiple of ``min_files``). ``file_mb`` is kept for compatibility and unused.
    Returns stats: rows, files, row_groups, bytes, seconds, mb_per_s. Atomic: on failure
    ``out`` is left as it was.
    """
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException

    if not row_group_mb or row_group_mb <= 0:
        raise InputError(f"row_group_mb must be positive, got {row_group_mb}")
    if files is not None and files < 1:
        raise InputError(f"files must be at least 1, got {files}")
    if not is_local(out):
        raise InputError(f"materialize writes a local directory (or a mounted one), got {out}")
    if is_local(table) and not local_path(table).exists():
        raise InputError(f"input not found: {table}")
    try:
        df = spark.read.parquet(spark_uri(table))
    except AnalysisException as e:
        raise InputError(f"cannot read Parquet at {table}: {str(e).splitlines()[0]}") from None
    for col in ("id", label_col):
        if col not in df.columns:
            raise InputError(f"input {table} has no '{col}' column (columns: {', '.join(df.columns)})")
    if "copy" not in df.columns:          # an unsampled table: every row is its own first copy
        df = df.withColumn("copy", F.lit(0).cast("int"))

    t0 = time.time()
    in_bytes = _input_bytes(df)
    if files is None:
        groups = max(1, math.ceil(in_bytes / (row_group_mb * MB)))
        n_files = int(min_files) * math.ceil(groups / int(min_files))
    else:
        n_files = files
    h = F.xxhash64(F.lit(int(seed)).cast("long"), F.lit(SALT), F.col("id").cast("long")
                   if dict(df.dtypes)["id"] in ("int", "bigint", "smallint", "tinyint")
                   else F.col("id"), F.col("copy").cast("long"))
    shuffled = (df.withColumn("_h", h)
                  .repartition(n_files, F.col("_h"))
                  .sortWithinPartitions("_h")
                  .drop("_h"))
    # one row group per file: the block size is set well above a file's expected in-memory size
    block = max(int(4 * max(in_bytes / n_files, row_group_mb * MB)), 64 * 1024)
    with atomic_dir(out) as tmp:
        (shuffled.write.mode("overwrite")
                 .option("parquet.block.size", block)
                 .parquet(spark_uri(tmp)))
        seconds = time.time() - t0
        stats = parquet_stats(tmp)
        if stats["rows"] == 0:
            raise InputError(f"input {table} has no rows to materialize")
        if has_info(table):
            write_info(tmp, read_info(table))
        stats.update({
            "input": str(input), "seed": int(seed), "row_group_mb": float(row_group_mb),
            "input_bytes": in_bytes, "seconds": round(seconds, 3),
            "mb_per_s": round(stats["bytes"] / MB / seconds, 2) if seconds > 0 else None,
        })
        write_json(Path(tmp) / "_materialize.json", stats)
    return stats
