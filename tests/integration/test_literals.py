"""Per-class literal tables built as one SQL expression hold the same values as element-wise literals."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from pipeline.prep.literals import array_sql, int_lookup, map_sql, number_sql


def test_number_sql_takes_only_numbers():
    assert number_sql(None, "bigint") == "NULL"
    assert number_sql("3", "bigint") is None and number_sql(True, "int") is None
    assert array_sql([1, "a"], "bigint") is None
    assert map_sql({"a": "1"}, "bigint") is None and map_sql({1: None}, "bigint") is None


def test_tables_match_elementwise_literals(spark):
    longs = [-(2 ** 63), 2 ** 63 - 1, 0, None, np.int64(7), 123456789012345]
    doubles = [0.1, -1e-300, 1e300, float("inf"), None, np.float32(0.5)]
    row = spark.range(1).select(
        F.expr(array_sql(longs, "bigint")).alias("a"),
        F.array(*[F.lit(None if v is None else int(v)).cast("bigint") for v in longs]).alias("a_ref"),
        F.expr(array_sql(doubles, "double")).alias("d"),
        F.array(*[F.lit(None if v is None else float(v)).cast("double") for v in doubles]).alias("d_ref"),
        F.expr(map_sql({3: "named_struct('k', CAST('-5' AS bigint))",
                        10: "named_struct('k', CAST('9' AS bigint))"}, "bigint"))[F.lit(10)]["k"].alias("m"),
    ).first()
    assert row["a"] == row["a_ref"] == [None if v is None else int(v) for v in longs]
    assert row["d"] == row["d_ref"]
    assert row["m"] == 9


def test_int_lookup_numbers_and_strings(spark):
    df = spark.createDataFrame([(0, "a"), (4, "b"), (9, "z")], "n long, s string")
    got = df.select(int_lookup("n", {0: 3, 4: 7}).alias("x"), int_lookup("s", {"a": 1, "b": 2}).alias("y"),
                    int_lookup("n", {}).alias("z")).collect()
    assert [(r.x, r.y, r.z) for r in got] == [(3, 1, 0), (7, 2, 0), (0, 0, 0)]
