"""Wilson intervals against scipy's closed form; the replicate-metric arithmetic on known counts."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from pipeline.evaluation.intervals import percentile_ci, replicate_metrics, wilson, wilson_per_class


@pytest.mark.parametrize("k,n", [(0, 4), (4, 4), (1, 5), (13, 30), (299, 300), (50, 1000)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_empty_and_flags():
    assert wilson(0, 0) == (None, None)
    rows = [dict(label=0, tp=3, fp=1, support=4), dict(label=1, tp=20, fp=0, support=25),
            dict(label=2, tp=0, fp=0, support=0)]
    out = wilson_per_class(rows)
    assert [r["low_support"] for r in out] == [True, False, False]
    assert out[2]["precision_ci"] == [None, None]


def test_replicate_metrics():
    # one replicate, two classes: class 0 tp 3 fp 1 fn 1; class 1 tp 0 fp 1 fn 1
    counts = {"tp": np.array([[3.0, 0.0]]), "fp": np.array([[1.0, 1.0]]), "fn": np.array([[1.0, 1.0]])}
    m = replicate_metrics(counts, np.array([4, 1]))
    assert m["f1"][0].tolist() == pytest.approx([0.75, 0.0])
    assert m["recall"][0].tolist() == pytest.approx([0.75, 0.0])
    assert m["macro_f1"][0] == pytest.approx(0.375)
    assert m["balanced_accuracy"][0] == pytest.approx(0.375)
    lo, hi = percentile_ci(np.arange(101.0))
    assert (lo, hi) == pytest.approx((2.5, 97.5))
