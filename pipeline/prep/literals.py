"""Literal Columns of many numbers (per-class tables: cut-offs, thresholds, bits) as one SQL expression.

Built element by element, every ``F.lit(v).cast(t)`` is a few Py4J round trips (~1 ms each); a
103-class table of cut-off rows took 1.5 s of the split stage and 0.7 s of each sample just to
build its Column. Parsed by the JVM from one SQL string it is one call. Only numbers take this
path; anything else (string ids or labels) returns None and the caller builds the Column itself.

:func:`class_lookup` is the one per-class lookup Column (``values[label]`` for each row) that the
split, the sampler and the protocols build their per-class constants with.
"""
from __future__ import annotations

import numbers
from typing import Mapping, Optional, Sequence


def python_scalar(v):
    """numpy scalar → Python scalar (for dict keys and Spark literals)."""
    return v.item() if hasattr(v, "item") else v


def number_sql(v, sql_type: str) -> Optional[str]:
    """A SQL literal of the number ``v`` as ``sql_type`` (``NULL`` for None), or None if ``v`` is not a number."""
    if v is None:
        return "NULL"
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = int(v) if isinstance(v, numbers.Integral) else float(v)
    return f"CAST('{v!r}' AS {sql_type})"


def array_sql(values: Sequence, sql_type: str) -> Optional[str]:
    """``array(v0, v1, …)`` of ``sql_type`` (None → null element), or None unless all are numbers."""
    parts = [number_sql(v, sql_type) for v in values]
    return None if any(p is None for p in parts) else f"CAST(array({', '.join(parts)}) AS array<{sql_type}>)"


def map_sql(value_sql: Mapping, key_type: str) -> Optional[str]:
    """``map(k0, v0, …)`` with numeric keys of ``key_type`` and values given as SQL text, or None
    when a key is not a number or a value is None (no SQL for it)."""
    parts = []
    for k, v in value_sql.items():
        ks = number_sql(k, key_type)
        if ks is None or ks == "NULL" or v is None:
            return None
        parts += [ks, v]
    return f"map({', '.join(parts)})" if parts else None


def _dense(labels: list) -> bool:
    """Whether integer labels are dense enough (the split's 0..K-1) to index an array literal."""
    return (all(isinstance(c, int) and not isinstance(c, bool) for c in labels)
            and min(labels) >= 0 and max(labels) < 4 * len(labels) + 16)


def class_lookup(label_col: str, values: Mapping, sql_type: str):
    """A Column with ``values[label]`` (as ``sql_type``) for each row's label, null for labels not in ``values``.

    Dense integer labels index an array literal, O(1) per row; other labels use a map literal.
    Numbers are parsed from one SQL string (one Py4J call); other values are built as literals.
    """
    # deferred: pyspark is slow to import, and the pure callers of this module never need it
    from pyspark.sql import functions as F

    none = F.lit(None).cast(sql_type)
    if not values:
        return none
    labels = list(values)
    if _dense(labels):
        dense = [values.get(i) for i in range(max(labels) + 1)]
        table = array_sql(dense, sql_type)
        arr = F.expr(table) if table is not None else F.array(*[F.lit(v).cast(sql_type) if v is not None else none
                                                                for v in dense])
        label = F.col(label_col).cast("int")
        return F.when((label >= 0) & (label <= max(labels)), arr[label]).otherwise(none)
    integral = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in labels)
    table = map_sql({k: number_sql(v, sql_type) for k, v in values.items()}, "bigint") if integral else None
    if table is not None:
        return F.expr(table)[F.col(label_col)]
    pairs = []
    for c in labels:
        pairs += [F.lit(c), F.lit(values[c]).cast(sql_type)]
    return F.create_map(*pairs)[F.col(label_col)]


def int_lookup(label_col: str, values: Mapping):
    """A Column with the int ``values[label]`` of each row's label, 0 for labels not in ``values``."""
    # deferred: pyspark is slow to import
    from pyspark.sql import functions as F

    if not values:
        return F.lit(0)
    return F.coalesce(class_lookup(label_col, {k: int(v) for k, v in values.items()}, "int"), F.lit(0))
