"""The ``sample`` stage: a Parquet table in, ``data/`` and ``manifest.json`` out.

The rows are :func:`pipeline.prep.resample.fit_resample`'s (exact per class, see there), the plan
:mod:`pipeline.prep.sampling_plan`'s and the console table :mod:`pipeline.prep.sampling_report`'s;
this module reads the input, writes the output atomically, checks the achieved counts on what was
written and records them. Spark's ``sampleBy`` (Bernoulli per row) only hits its counts in
expectation; here exactness costs one scan of two narrow columns beyond what ``sampleBy`` needs
(it, too, must count the classes to set its fractions), plus the count check on the output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from pipeline.data.schema import has_info, read_info, write_info
from pipeline.errors import InputError
from pipeline.io import atomic_dir, is_local, local_path, read_json, spark_uri, write_json
from pipeline.prep.literals import python_scalar
from pipeline.prep.sampling_plan import (STRATEGIES, TARGET_KINDS, SamplingRequest, check_request, check_target,
                                         plan_counts)
from pipeline.prep.sampling_report import format_manifest

if TYPE_CHECKING:
    from pipeline.prep.resample import SamplingPlan

__all__ = ["STRATEGIES", "TARGET_KINDS", "SamplingRequest", "check_request", "check_target", "plan_counts",
           "format_manifest", "SampleManifest", "sample_dataset", "training_counts", "read_training_counts"]


def _read_input(spark, path: str, label_col: str):
    # deferred: pyspark is slow to import
    from pyspark.sql.utils import AnalysisException

    if is_local(path) and not local_path(path).exists():
        raise InputError(f"input not found: {path}")
    try:
        df = spark.read.parquet(spark_uri(path))
    except AnalysisException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read Parquet at {path}: {msg}") from None
    if label_col not in df.columns:
        raise InputError(f"input {path} has no label column '{label_col}' "
                         f"(columns: {', '.join(df.columns)})")
    if "id" not in df.columns:
        raise InputError(f"input {path} has no 'id' column: sampling needs a unique row id")
    if "copy" in df.columns:
        raise InputError(f"input {path} already has a 'copy' column: it was sampled already "
                         "(sample the split's train/ table instead)")
    return df


def _hint_counts(table: str, df, label_col: str) -> Optional[dict]:
    """Class counts recorded in the table's ``_dataset.json`` (keys cast to the label type)."""
    # deferred: pyspark is slow to import
    from pyspark.sql import types as T

    try:
        if not has_info(table):
            return None
        info = read_info(table)
    except (InputError, OSError, ValueError, TypeError):
        return None
    if not info.class_counts or info.label_col != label_col:
        return None
    ltype = df.schema[label_col].dataType
    try:
        if isinstance(ltype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            return {int(k): int(v) for k, v in info.class_counts.items() if int(v) > 0}
        if isinstance(ltype, T.StringType):
            return {str(k): int(v) for k, v in info.class_counts.items() if int(v) > 0}
    except (TypeError, ValueError):
        return None
    return None


def _counts_json(d: Mapping) -> dict:
    return {str(k): int(v) for k, v in d.items()}


@dataclass(frozen=True)
class SampleManifest:
    """The ``sample`` stage's record, as written to ``manifest.json`` by :meth:`to_json` (labels as
    strings there): the request, the input's class counts, the planned and the achieved ones."""

    plan: SamplingPlan
    label_col: str
    table: str
    achieved: dict
    seconds: dict

    def to_json(self) -> dict:
        """The ``manifest.json`` mapping (the keys and their order are the file's contract)."""
        p, req = self.plan, self.plan.request
        return {
            "strategy": req.strategy,
            "target": p.sampling_strategy if req.strategy in ("rus", "ros") else None,
            "cap": req.cap,
            "floor": req.floor,
            "seed": int(p.random_state),
            "label_col": self.label_col,
            "input": str(self.table),
            "input_rows": int(sum(p.input_counts.values())),
            "input_counts": _counts_json(p.input_counts),
            "planned": _counts_json(p.planned),
            "achieved": _counts_json(self.achieved),
            "output_rows": int(sum(self.achieved.values())),
            "max_copies": int(p.max_copies),
            "method": "hash-rank: key=xxhash64(seed,'sample',id), rows ordered by (key, id); "
                      "copies = N//n, +1 for the N%n smallest; thresholds by " + p.path,
            "seconds": self.seconds,
        }


def _achieved(spark, data, label_col: str, plan: Mapping) -> dict:
    """Rows per class of the written sample (reads only the label column); must equal ``plan``."""
    written = spark.read.parquet(spark_uri(data))
    achieved = {python_scalar(r[0]): int(r[1]) for r in written.groupBy(label_col).count().collect()}
    achieved = {c: achieved.get(c, 0) for c in plan}
    if achieved != plan:
        bad = [c for c in plan if achieved[c] != plan[c]][:5]
        raise InputError(
            "sampled counts differ from the plan for classes "
            + ", ".join(f"{c} ({achieved[c]} vs {plan[c]})" for c in bad)
            + ": the 'id' column must be unique")
    return achieved


def sample_dataset(spark, table: str, out: str, strategy: str, *, sampling_strategy: Any = "auto",
                   cap: Optional[int] = None, floor: Optional[int] = None, random_state: int = 0,
                   label_col: str = "label", method: str = "auto", use_hint: bool = True) -> dict:
    """Sample the Parquet table at ``table`` into ``out/data/`` and write ``out/manifest.json``.

    ``strategy``, ``sampling_strategy``, ``cap``, ``floor`` and ``random_state`` are
    :func:`~pipeline.prep.resample.fit_resample`'s, whose rows are written; achieved class sizes
    are measured on what was written and must equal the plan exactly. Atomic: a failure leaves
    ``out`` as it was. Returns the manifest as written (:meth:`SampleManifest.to_json`).

    ``method``: ``auto`` (the one-pass window method, falling back to histograms when needed)
    or ``histogram`` (always histograms; same rows, used to cross-check). ``use_hint``: take
    the class counts from ``_dataset.json`` when present (they are verified).
    """
    request = check_request(strategy, cap, floor)   # fail before touching data
    # deferred: the Spark row selection imports pyspark, which the CLI's fail-fast checks never need
    from pipeline.prep.resample import resample_checked

    t0 = time.time()
    df = _read_input(spark, table, label_col)
    sampled, plan = resample_checked(df, request, sampling_strategy, random_state, label_col=label_col,
                                     method=method, class_counts=_hint_counts(table, df, label_col) if use_hint
                                     else None)
    t_thr = time.time()
    with atomic_dir(out) as tmp:
        data = tmp / "data"
        sampled.write.mode("error").parquet(spark_uri(data))
        t_write = time.time()
        achieved = _achieved(spark, data, label_col, plan.planned)
        if has_info(table):
            info = read_info(table)
            info.class_counts = _counts_json(achieved)
            write_info(data, info)
        seconds = {**plan.seconds, "write": round(t_write - t_thr, 3), "total": round(time.time() - t0, 3)}
        manifest = SampleManifest(plan, label_col, table, achieved, seconds).to_json()
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_counts(manifest: Optional[Mapping]) -> Optional[dict]:
    """Training rows per class index *before* sampling (a manifest's ``input_counts``), or None.

    Lee et al.'s L5 and every "by training rows" axis use these: after RUS every class has the
    same sampled count, so the sampled counts cannot tell the head from the tail.
    """
    return {int(k): int(v) for k, v in manifest["input_counts"].items()} if manifest else None


def read_training_counts(sample_dir) -> Optional[dict]:
    """:func:`training_counts` of ``<sample_dir>/manifest.json`` (None when there is none)."""
    path = local_path(sample_dir) / "manifest.json"
    return training_counts(read_json(path)) if path.is_file() else None
