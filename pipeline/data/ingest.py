"""``imbalance ingest``: a folder tree of images (``<root>/<class>/<file>.png``) → a source table.

WHOI-Plankton / IFCB collections come as one folder per class of small greyscale PNGs, each a
different size, millions of files. The stage makes one listing pass and one decode + write pass:

* **listing**: for a local root (or a shared file system mounted on every executor) each top-level
  folder is walked by a task on the executors (``os.scandir``: names, sizes, zero-byte files too),
  with Spark's rules for what a file source skips (names starting with ``_`` or ``.``, files
  without an image extension). The listing is kept in executor memory for the next pass.
* **decode + write**: the listing is spread by ``id`` over tasks of ~``files_per_task`` files (at
  least one per core); each task reads its files itself (plain ``open().read()``), decodes and
  resizes them in Arrow batches (:mod:`pipeline.data.images`, the same decoder the split stage uses
  for encoded Parquet images) and writes good and bad rows in the same job.

A root that is not a local path (``hdfs://``, ``s3a://``...) is read with Spark's ``binaryFile``
source instead (the JVM reads the bytes and hands them to the decoder through Arrow); the outputs
are the same. The summary comes from the written rows in three small aggregates (counts and sizes,
duplicates, rejected examples). It writes, into ``out/``::

    data/             the source table: id, label, image (raw uint8, size×size[×3]), path
                      (relative to root), width, height (of the original), sha1 (of the file);
                      _dataset.json beside the Parquet files
    rejected/         every file that could not be used: path, label, id, sha1, reason
    labels.json       class names (folder names, or the manifest's labels), index order
    ingest.json       the summary: counts, rejected by reason, sizes, duplicates, timing

``id`` is Spark's ``xxhash64`` (seed 42) of the UTF-8 relative path: the same file gets the same
id on every run, also after files are added. Files with identical bytes are reported, not
dropped (they are different rows to the pipeline). Nothing is collected to the driver but
aggregates; a bad file never stops the job: empty, not an image, truncated or corrupt, below
``min_size`` pixels, not in a class folder, (with a manifest) not listed in it, or unreadable
(e.g. deleted during the run) — each goes to ``rejected/`` with its reason.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pyarrow as pa

from pipeline.config import LabelFrom
from pipeline.data.images import (DECODED_FIELDS, EMPTY, EXTENSIONS, MIN_SIZE, check_options, decode_values,
                                  decoded_frame, image_shape, output_schema)
from pipeline.data.schema import DatasetInfo, write_info
from pipeline.data.source import label_index, write_labels
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, local_path, log, spark_uri, write_json

SUMMARY_FILE = "ingest.json"
DATA_DIR = "data"
REJECTED_DIR = "rejected"
NO_CLASS_FOLDER = "not in a class folder"
NOT_IN_MANIFEST = "not in the manifest"
UNREADABLE = "file could not be read"
LABEL_FROM = typing.get_args(LabelFrom)
REJECTED_COLS = ["path", "label", "id", "sha1", "reason"]
DATA_COLS = ["id", "label", "image", "path", "width", "height", "sha1"]
READERS = ("auto", "python", "spark")


def extension_glob(extensions=EXTENSIONS) -> str:
    """A case-insensitive Hadoop glob for the extensions: ``*.{[pP][nN][gG],...}``."""
    parts = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in e) for e in extensions]
    return "*.{" + ",".join(parts) + "}"


def _qualified_root(spark, root: str) -> str:
    """The root as Spark writes file paths (``file:/abs/root``), without a trailing slash."""
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(spark_uri(root))
    fs = p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.makeQualified(p).toString().rstrip("/")


def _read_manifest(spark, manifest: str):
    """``path,label`` rows from a CSV file or a Parquet table; paths relative to the root."""
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    if is_local(manifest) and not local_path(manifest).exists():
        raise InputError(f"manifest not found: {manifest}")
    try:
        if str(manifest).lower().endswith((".csv", ".csv.gz", ".txt")):
            m = spark.read.option("header", "true").csv(spark_uri(manifest))
        else:
            m = spark.read.parquet(spark_uri(manifest))
    except Exception as e:  # noqa: BLE001 - AnalysisException and friends
        raise InputError(f"cannot read manifest {manifest}: {str(e).strip().splitlines()[0][:200]}") from None
    missing = [c for c in ("path", "label") if c not in m.columns]
    if missing:
        raise InputError(f"manifest {manifest} has no '{missing[0]}' column (columns: {', '.join(m.columns)})")
    m = m.select(F.regexp_replace(F.col("path").cast("string"), r"^(\./|/)+", "").alias("path"), "label")
    dup = m.groupBy("path").count().where("count > 1").limit(1).collect()
    if dup:
        raise InputError(f"manifest {manifest} lists '{dup[0][0]}' {dup[0][1]} times")
    return m


def hidden(name: str) -> bool:
    """True for the names Spark's file sources skip: ``_x`` (but not ``_k=v`` or ``_metadata``), ``.x``,
    ``x._COPYING_``."""
    exclude = (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")
    return exclude and not name.startswith(("_common_metadata", "_metadata"))


def walk_images(top_dir: str, rel_dir: str, recursive: bool) -> Iterator[tuple[str, int]]:
    """``(relative path, bytes)`` of the image files under one folder, zero-byte ones included.

    Runs on an executor. Skips what Spark's ``binaryFile`` listing skips (:func:`hidden` names,
    other extensions); follows symbolic links to folders, as Hadoop's local file system does,
    each real folder once.
    """
    exts = tuple("." + e for e in EXTENSIONS)
    seen = set()
    stack = [(top_dir, rel_dir)]
    while stack:
        d, rel = stack.pop()
        try:
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if hidden(e.name):
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_dir():
                    if recursive:
                        stack.append((e.path, r))
                elif e.name.lower().endswith(exts) and e.is_file():
                    yield r, e.stat().st_size
            except OSError:                                  # vanished or a broken link: not listed
                continue


def _folder_tasks(root: str) -> list:
    """One walk per top-level folder, plus one for the files directly under the root."""
    top = local_path(root).resolve()
    return [(str(top), "", False)] + sorted(
        (e.path, e.name, True) for e in os.scandir(top) if e.is_dir() and not hidden(e.name))


LISTING_BATCH = 10_000


def _walk_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A ``mapInArrow`` function: folders to walk (``dir, rel, recursive``) → ``path, length`` batches."""
    def batch(paths, sizes):
        return pa.RecordBatch.from_arrays([pa.array(paths, pa.string()), pa.array(sizes, pa.int64())],
                                          names=["path", "length"])
    for b in batches:
        paths, sizes = [], []
        for d, rel, recursive in zip(*(b.column(i).to_pylist() for i in range(3))):
            for path, n in walk_images(d, rel, recursive):
                paths.append(path)
                sizes.append(n)
                if len(paths) >= LISTING_BATCH:
                    yield batch(paths, sizes)
                    paths, sizes = [], []
        if paths:
            yield batch(paths, sizes)


def listed_files(spark, root: str):
    """Every image file under a local ``root``: a DataFrame of relative ``path`` and ``length``.

    The walk runs on the executors, one task per few top-level folders (so a cluster needs the
    root on a shared file system, as for ``binaryFile``), and hands its rows over as Arrow
    batches; zero-byte files are listed too.
    """
    dirs = _folder_tasks(root)
    n = max(1, min(len(dirs), 2 * spark.sparkContext.defaultParallelism))
    tasks = spark.sparkContext.parallelize(dirs, n).toDF("dir string, rel string, recursive boolean")
    return tasks.mapInArrow(_walk_batches, "path string, length long")


def empty_files(spark, root: str):
    """Zero-byte image files under a local ``root`` as a DataFrame of relative ``path``.

    Spark's file sources never list empty files, so ``binaryFile`` cannot see them.
    """
    dirs = _folder_tasks(root)
    rdd = spark.sparkContext.parallelize(dirs, max(1, min(len(dirs), 4 * spark.sparkContext.defaultParallelism)))
    return rdd.flatMap(lambda t: [(p,) for p, n in walk_images(*t) if n == 0]).toDF("path string")


def read_files(paths: list, pre: list, root: str) -> tuple[list, list]:
    """Each file's bytes, read from ``root``/``path``, and the reasons: ``(data, reasons)``.

    A file that cannot be read (deleted since the listing, no permission) gets None and the
    reason :data:`UNREADABLE`, unless it already has one.
    """
    data, reasons = [], []
    for rel, why in zip(paths, pre):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                data.append(f.read())
        except OSError:
            data.append(None)
            why = why or UNREADABLE
        reasons.append(why)
    return data, reasons


def read_decoded_frame(files, root: str, size: int, mode: str, resize: str, min_size: int):
    """``files`` (relative ``path``, ``reason``, other columns kept) with each file read and decoded.

    The Python workers read the files themselves, so their bytes never pass through the JVM.
    Output columns as :func:`pipeline.data.images.decoded_frame`.
    """
    # deferred: pyspark is heavy
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    check_options(size, mode, resize, min_size)
    root = str(local_path(root).resolve())
    arrow_in = to_arrow_schema(files.schema)
    schema = output_schema(arrow_in.append(pa.field("image", pa.binary())), "image")
    keep = [f.name for f in schema if f.name in arrow_in.names and f.name not in {n for n, _ in DECODED_FIELDS}]

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            data, reasons = read_files(b.column("path").to_pylist(), b.column("reason").to_pylist(), root)
            decoded = decode_values(data, reasons, size, mode, resize, min_size)
            yield pa.RecordBatch.from_arrays([b.column(n) for n in keep] + decoded, schema=schema)
    return files.mapInArrow(fn, from_arrow_schema(schema))


class Progress:
    """Driver-side progress of the decode job: files done / total and files/s on stderr.

    Spark reports finished tasks (``statusTracker``); files done are estimated as that share of
    the total, so the count moves in steps of one task's files.
    """

    def __init__(self, spark, group: str, total: int, every: float = 5.0):
        self.tracker = spark.sparkContext.statusTracker()
        self.group, self.total, self.every = group, total, every
        self.stop_event = threading.Event()
        self.t0 = time.time()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _done_fraction(self) -> float:
        tasks = done = 0
        for jid in self.tracker.getJobIdsForGroup(self.group):
            job = self.tracker.getJobInfo(jid)
            for sid in (job.stageIds if job else ()):
                st = self.tracker.getStageInfo(sid)
                if st:
                    tasks += st.numTasks
                    done += st.numCompletedTasks
        return done / tasks if tasks else 0.0

    def _loop(self) -> None:
        while not self.stop_event.wait(self.every):
            n = int(self.total * self._done_fraction())
            dt = time.time() - self.t0
            log(f"ingest: decoding {n:,}/{self.total:,} files ({100 * n / max(1, self.total):.0f}%), "
                f"{n / max(dt, 1e-9):,.0f} files/s")

    def __enter__(self) -> "Progress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=2)


def _examples(df, key: str, n: int = 3) -> dict:
    """Up to ``n`` example paths per value of ``key`` (sorted), from a small frame."""
    # deferred: pyspark is heavy
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(key).orderBy("path")
    rows = (df.select(key, "path").withColumn("_n", F.row_number().over(w)).where(F.col("_n") <= n)
            .groupBy(key).agg(F.sort_array(F.collect_list("path")).alias("paths")).collect())
    return {r[0]: list(r[1]) for r in rows}


def _duplicates(data, limit: int = 5) -> dict:
    """Files with identical bytes: groups, extra copies, groups spanning classes, a few examples.

    One shuffle by ``sha1`` counting copies (no per-file lists); the paths are looked up only for
    the ``limit`` largest groups, the first 3 of each.
    """
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    groups = (data.groupBy("sha1")
              .agg(F.count("*").alias("n"), (F.min("label") != F.max("label")).alias("across"))
              .where("n > 1")).persist()
    try:
        agg = groups.agg(F.count("*").alias("groups"), F.sum(F.col("n") - 1).alias("extra"),
                         F.sum(F.when(F.col("across"), 1).otherwise(0)).alias("conflicts")).collect()[0]
        top = [r["sha1"] for r in groups.orderBy(F.desc("n"), "sha1").limit(limit).collect()] if agg["groups"] else []
    finally:
        groups.unpersist()
    paths = {}
    if top:
        paths = {r[0]: list(r[1]) for r in data.where(F.col("sha1").isin(top)).groupBy("sha1")
                 .agg(F.slice(F.sort_array(F.collect_list("path")), 1, 3)).collect()}
    return {"groups": int(agg["groups"] or 0), "extra_copies": int(agg["extra"] or 0),
            "groups_across_classes": int(agg["conflicts"] or 0), "examples": [paths[h] for h in top]}


def _counts_and_sizes(rows) -> tuple[dict, dict, dict]:
    """One aggregate over every written row: images per class, rejected per reason, original sizes.

    ``rollup(reason, label)``: the rows with a null reason per label are the class counts, the
    rejected ones summed per reason are the rejections, and the grand total's min / median / max
    of ``width`` and ``height`` are those of the usable images (rejected rows have none).
    """
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    aggs = [F.count("*").alias("n"), F.grouping_id().alias("g")]
    for c in ("width", "height"):
        aggs += [F.min(c).alias(f"{c}_min"), F.percentile_approx(c, 0.5, 10000).alias(f"{c}_median"),
                 F.max(c).alias(f"{c}_max")]
    counts, by_reason, sizes = {}, {}, None
    for r in rows.rollup("reason", "label").agg(*aggs).collect():
        if r["g"] == 0 and r["reason"] is None:
            counts[r["label"]] = int(r["n"])
        elif r["g"] == 0:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + int(r["n"])
        elif r["g"] == 3:
            sizes = {c: {"min": r[f"{c}_min"], "median": r[f"{c}_median"], "max": r[f"{c}_max"]}
                     for c in ("width", "height")}
    return counts, by_reason, sizes


def _labelled(df, m):
    """``df`` (relative ``path``) with its ``label`` and the reason it cannot be used before it is read.

    ``m``: the manifest (``path, label``) or None for class folders.
    """
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    if m is None:
        df = df.withColumn("label", F.when(F.instr("path", "/") > 0, F.substring_index("path", "/", 1)))
        return df.withColumn("reason", F.when(F.col("label").isNull(), F.lit(NO_CLASS_FOLDER)))
    return (df.join(m, on="path", how="left")
            .withColumn("reason", F.when(F.col("label").isNull(), F.lit(NOT_IN_MANIFEST))))


def _partitions(total: int, files_per_task: int, cores: int) -> int:
    """Tasks for ``total`` files: ~``files_per_task`` each, at least one per core, a multiple of the cores."""
    n = max(cores, math.ceil(total / max(1, files_per_task)))
    return cores * math.ceil(n / cores)


@dataclass
class _Ingest:
    """One ingest: its request, and what the listing found (the steps of :func:`ingest_images` share it)."""
    spark: Any
    images: str
    out: str
    size: int
    mode: str
    resize: str
    label_from: str
    manifest: Optional[str]
    min_size: int
    files_per_task: int
    progress: bool
    direct: bool                  # the Python workers list and read a local root themselves
    t0: float
    m: Any = None                 # the manifest (path, label), or None for class folders
    files: Any = None             # the listing with label and reason (and content when Spark read it)
    raw: Any = None               # Spark's binaryFile frame (None when direct)
    total: int = 0                # files listed
    total_bytes: int = 0
    n_empty: int = 0              # zero-byte files Spark's source skipped
    empties: Any = None           # those files, found by walking a local tree
    n_files: int = 0
    manifest_missing: Optional[dict] = None


def ingest_images(spark, images: str, out: str, *, size: int = 32, mode: str = "L", resize: str = "pad",
                  label_from: str = "folder", manifest: Optional[str] = None, min_size: int = MIN_SIZE,
                  files_per_task: int = 10_000, progress: bool = True, reader: str = "auto") -> dict:
    """Ingest the image tree at ``images`` into ``out/`` (see the module docstring); return the summary.

    ``label_from``: ``folder`` (the first folder under the root is the class) or ``manifest``
    (a CSV/Parquet ``manifest`` of ``path,label`` with paths relative to the root; files it does
    not list are rejected). ``reader``: ``auto`` (the Python workers list and read a local root
    themselves, Spark's ``binaryFile`` source reads any other), ``python`` or ``spark`` to force
    one (both give the same outputs). An empty tree, a missing root, or fewer than two classes
    raise :class:`InputError` and leave nothing at ``out``.
    """
    # deferred: pyspark is heavy
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    label_from = _check_request(images, size=size, mode=mode, resize=resize, label_from=label_from,
                                manifest=manifest, min_size=min_size, reader=reader)
    job = _Ingest(spark=spark, images=images, out=out, size=size, mode=mode, resize=resize, label_from=label_from,
                  manifest=manifest, min_size=min_size, files_per_task=files_per_task, progress=progress,
                  direct=reader == "python" or (reader == "auto" and is_local(images)), t0=time.time())
    job.m = _read_manifest(spark, manifest) if label_from == "manifest" else None
    cached = None
    if job.direct:
        # listing walked once on the executors and kept there: the decode reads the same listing
        job.files = cached = _labelled(listed_files(spark, images), job.m).persist(StorageLevel.MEMORY_AND_DISK)
    else:
        prefix = _qualified_root(spark, images)
        try:
            job.raw = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
                       .option("pathGlobFilter", extension_glob()).load(spark_uri(images)))
        except Exception as e:  # noqa: BLE001 - AnalysisException: path does not exist (remote roots)
            raise InputError(f"cannot list images under {images}: {str(e).strip().splitlines()[0][:200]}") from None
        job.files = _labelled(job.raw.withColumn("path", F.expr(f"substring(path, {len(prefix) + 2})")), job.m)
    try:
        _check_listing(job)
        dec, conf = _decode_frame(job)
        return _write(job, dec, conf)
    finally:
        if cached is not None:
            cached.unpersist()


def _check_request(images: str, *, size: int, mode: str, resize: str, label_from: str, manifest: Optional[str],
                   min_size: int, reader: str) -> str:
    """The decode options, the label source and the root; returns the label source (``manifest``
    whenever a manifest is given)."""
    try:
        check_options(size, mode, resize, min_size)
    except ValueError as e:
        raise InputError(str(e)) from None
    if label_from not in LABEL_FROM:
        raise InputError(f"--label-from must be folder or manifest, got {label_from!r}")
    if label_from == "manifest" and not manifest:
        raise InputError("--label-from manifest needs --manifest CSV_OR_PARQUET")
    if manifest and label_from != "manifest":
        label_from = "manifest"
    if reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
    if reader == "python" and not is_local(images):
        raise InputError(f"reader 'python' needs a local image root, got {images}")
    if is_local(images):
        p = local_path(images)
        if not p.exists():
            raise InputError(f"image root not found: {images}")
        if not p.is_dir():
            raise InputError(f"image root is not a directory: {images}")
    return label_from


def _check_listing(job: _Ingest) -> None:
    """The listing's totals and the class check (no file contents read; zero-byte files have no class yet)."""
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    files, images = job.files, job.images
    listing = files.agg(F.count("*").alias("files"), F.sum("length").alias("bytes"),
                        F.count(F.when(F.col("length") > 0, 1)).alias("listed"),
                        F.countDistinct(F.when(F.col("length") > 0, F.col("label"))).alias("classes")).collect()[0]
    job.total, job.total_bytes = int(listing["files"]), int(listing["bytes"] or 0)
    if not job.direct:
        # Spark's file sources never list zero-byte files: find them by walking the tree
        job.n_empty = len(job.raw._jdf.inputFiles()) - job.total
        if job.n_empty > 0 and is_local(images):
            job.empties = _labelled(empty_files(job.spark, images), job.m).withColumn(
                "reason", F.coalesce(F.col("reason"), F.lit(EMPTY)))
        elif job.n_empty > 0:
            log(f"ingest: warning: {job.n_empty:,} zero-byte files under {images} are skipped by Spark "
                f"(counted in the summary, not in {REJECTED_DIR}/: the root is not a local path)")
    job.n_files = job.total + (job.n_empty if job.empties is not None else 0)
    if job.total + max(job.n_empty, 0) == 0:
        raise InputError(f"no image files ({', '.join(EXTENSIONS)}) under {images}")
    if listing["classes"] < 2:
        what = "class folder" if job.label_from == "folder" else "manifest label"
        raise InputError(f"{images} has {listing['classes']} {what}{'s' if listing['classes'] != 1 else ''} "
                         f"among its {int(listing['listed']):,} image files: need at least two classes")
    log(f"ingest: listed {job.n_files:,} image files ({job.total_bytes / 1e6:,.1f} MB, {listing['classes']} "
        f"classes) under {images} in {time.time() - job.t0:.1f}s")
    if job.m is not None:
        gone = job.m.join(files.select("path"), on="path", how="left_anti")
        if job.empties is not None:
            gone = gone.join(job.empties.select("path"), on="path", how="left_anti")
        job.manifest_missing = {"rows": gone.count(),
                                "examples": [r[0] for r in gone.orderBy("path").limit(5).collect()]}


def _decode_frame(job: _Ingest) -> tuple[Any, dict]:
    """The decoded rows (with ``_ok``), and the Spark settings the decode + write job runs with."""
    # deferred: pyspark is heavy
    from pyspark.sql import functions as F

    files, opts = job.files, {"size": job.size, "mode": job.mode, "resize": job.resize, "min_size": job.min_size}
    avg = job.total_bytes / max(1, job.total)
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(max(16, min(1000, int(64e6 / max(avg, 1)))))}
    if job.direct:
        # tasks of ~files_per_task files spread by id (a hash of the path): every core busy, the
        # bytes read by the Python workers themselves
        files = files.withColumn("id", F.xxhash64(F.col("path").cast("string")))
        parts = _partitions(job.total, job.files_per_task, job.spark.sparkContext.defaultParallelism)
        dec = read_decoded_frame(files.select("path", "label", "reason", "id").repartition(parts, "id"),
                                 job.images, **opts)
    else:
        # file partitions of ~files_per_task files (Spark packs files by bytes + an open cost each)
        open_cost = 4096
        conf["spark.sql.files.openCostInBytes"] = str(open_cost)
        conf["spark.sql.files.maxPartitionBytes"] = str(int(max(1, job.files_per_task) * (avg + open_cost)))
        dec = decoded_frame(files.select("path", "label", "reason", F.col("content").alias("image")), **opts)
        if job.empties is not None:
            dec = dec.unionByName(job.empties.select(
                "path", "label", F.lit(None).cast("binary").alias("image"), F.lit(None).cast("int").alias("width"),
                F.lit(None).cast("int").alias("height"), F.sha1(F.lit(b"")).alias("sha1"), "reason"))
        dec = dec.withColumn("id", F.xxhash64(F.col("path").cast("string")))
    return dec.withColumn("_ok", F.col("reason").isNull()), conf


def _write(job: _Ingest, dec, conf: dict) -> dict:
    """The decode + write job (one Spark job under ``conf``), then the tables and the summary."""
    spark, n_files = job.spark, job.n_files
    old = {k: spark.conf.get(k, None) for k in conf}
    group = f"imbalance-ingest-{int(time.time() * 1000)}"
    t1 = time.time()
    with atomic_dir(local_path(job.out)) as tmp:
        for k, v in conf.items():
            spark.conf.set(k, v)
        spark.sparkContext.setJobGroup(group, f"imbalance ingest {job.images}")
        try:
            with (Progress(spark, group, n_files) if job.progress else contextlib.nullcontext()):
                (dec.select(*DATA_COLS, "reason", "_ok").write.partitionBy("_ok")
                 .parquet(spark_uri(tmp / "_all")))
        finally:
            for k, v in old.items():
                if v is None:
                    spark.conf.unset(k)
                else:
                    spark.conf.set(k, v)
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        dt = time.time() - t1
        log(f"ingest: decoded and wrote {n_files:,} files in {dt:.1f}s ({n_files / max(dt, 1e-9):,.0f} files/s)")
        summary = _tables_and_summary(job, dec, tmp, dt)
    return summary


def _tables_and_summary(job: _Ingest, dec, tmp, dt: float) -> dict:
    """From the written rows in ``tmp/_all``: the data and rejected tables, ``_dataset.json``, the
    labels and the summary (one aggregate for counts and sizes)."""
    spark, images, n_files = job.spark, job.images, job.n_files
    written = spark.read.parquet(spark_uri(tmp / "_all")).select(*[c for c in DATA_COLS if c != "image"], "reason")
    counts, by_reason, sizes = _counts_and_sizes(written)
    n_rejected = sum(by_reason.values())
    ok_dir, bad_dir = tmp / "_all" / "_ok=true", tmp / "_all" / "_ok=false"
    if bad_dir.exists():
        bad = spark.read.parquet(spark_uri(bad_dir)).select(*REJECTED_COLS)
        bad.write.parquet(spark_uri(tmp / REJECTED_DIR))
    else:
        spark.createDataFrame([], dec.select(*REJECTED_COLS).schema).write.parquet(spark_uri(tmp / REJECTED_DIR))
    if not ok_dir.exists():
        top = max(by_reason, key=by_reason.get)
        raise InputError(f"no usable image under {images}: all {n_files:,} files rejected (mostly: {top})")
    ok_dir.rename(tmp / DATA_DIR)
    shutil.rmtree(tmp / "_all", ignore_errors=True)
    if len(counts) < 2:
        raise InputError(f"only one class left after rejecting bad files under {images} "
                         f"({next(iter(counts))!r}, {n_rejected:,} rejected): need at least two")
    mapping = label_index(counts)
    labels = list(mapping)
    info = DatasetInfo(kind="image", n_classes=len(labels), image_shape=image_shape(job.size, job.mode),
                       labels=labels, class_counts={str(mapping[k]): v for k, v in counts.items()})
    write_info(tmp / DATA_DIR, info)
    write_labels(tmp, labels)
    data = spark.read.parquet(spark_uri(tmp / DATA_DIR)).select("sha1", "label", "path")
    rejected = spark.read.parquet(spark_uri(tmp / REJECTED_DIR))
    summary = {
        "root": str(images), "table": str(local_path(job.out) / DATA_DIR), "files": n_files,
        "bytes": job.total_bytes, "images": sum(counts.values()), "classes": len(labels),
        "class_counts": {str(k): counts[k] for k in labels},
        "rejected": n_rejected,
        "rejected_reasons": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "rejected_examples": _examples(rejected, "reason") if n_rejected else {},
        "sizes": sizes, "duplicates": _duplicates(data),
        "options": {"size": job.size, "mode": job.mode, "resize": job.resize, "label_from": job.label_from,
                    "manifest": job.manifest, "min_size": job.min_size},
        "image_shape": info.image_shape, "output_bytes_per_image": math.prod(info.image_shape),
        "seconds": round(time.time() - job.t0, 2), "decode_seconds": round(dt, 2),
        "files_per_s": round(n_files / max(dt, 1e-9), 1),
    }
    if job.n_empty > 0 and job.empties is None:
        summary["empty_files_not_listed"] = job.n_empty
    if job.manifest_missing is not None:
        summary["manifest_rows_without_file"] = job.manifest_missing
    write_json(tmp / SUMMARY_FILE, summary)
    return summary


def format_summary(s: dict) -> str:
    """The printed summary table of an ingest."""
    lines = [f"{s['images']:,} images in {s['classes']} classes from {s['files']:,} files "
             f"({s['files_per_s']:,.0f} files/s); rejected {s['rejected']:,}"]
    for reason, n in s["rejected_reasons"].items():
        ex = ", ".join(s.get("rejected_examples", {}).get(reason, [])[:2])
        lines.append(f"  rejected {n:>9,}  {reason}" + (f"  (e.g. {ex})" if ex else ""))
    sz = s["sizes"]
    lines.append(f"{'':>8} {'min':>7} {'median':>7} {'max':>7}")
    for c in ("width", "height"):
        lines.append(f"{c:>8} {sz[c]['min']:>7} {sz[c]['median']:>7} {sz[c]['max']:>7}")
    d = s["duplicates"]
    if d["groups"]:
        lines.append(f"duplicates: {d['extra_copies']:,} extra copies in {d['groups']:,} groups of identical files "
                     f"({d['groups_across_classes']} across classes), e.g. {' = '.join(d['examples'][0])}")
    else:
        lines.append("duplicates: none")
    mm = s.get("manifest_rows_without_file")
    if mm and mm["rows"]:
        lines.append(f"manifest rows with no file: {mm['rows']:,} (e.g. {', '.join(mm['examples'][:2])})")
    lines.append(f"images: {s['image_shape']} uint8 = {s['output_bytes_per_image']} bytes each -> {s['table']}")
    return "\n".join(lines)
