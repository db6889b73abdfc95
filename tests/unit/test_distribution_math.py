"""Pure parts of the foundation: distribution fields, plankton proportions, protocol targets."""
import numpy as np
import pytest

from pipeline.prep.protocols import protocol_targets
from pipeline.data.synth import exact_counts, plankton_class_counts, tabular_fractions
from pipeline.prep.profile import describe_counts
from pipeline.errors import InputError
from pipeline.prep.keys import split_cutoffs


def test_describe_counts_against_numpy():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5000, size=17)
    counts = {f"c{i}": int(s) for i, s in enumerate(sizes)}
    d = describe_counts(counts)
    assert d["n_rows"] == sizes.sum()
    assert d["n_classes"] == 17
    assert d["rho"] == pytest.approx(sizes.max() / sizes.min())
    assert d["max_class_size"] == sizes.max() and d["min_class_size"] == sizes.min()
    assert [c["count"] for c in d["classes"]] == sorted(sizes.tolist(), reverse=True)
    assert d["top5_fraction"] == pytest.approx(np.sort(sizes)[::-1][:5].sum() / sizes.sum())
    # CRL minority: smallest classes whose total is at most half the data
    asc = np.sort(sizes)
    k = int(np.searchsorted(np.cumsum(asc), sizes.sum() / 2, side="right"))
    assert len(d["minority_classes"]) == k
    assert sum(counts[c] for c in d["minority_classes"]) <= sizes.sum() / 2
    assert sum(f["fraction"] for f in d["classes"]) == pytest.approx(1.0)


@pytest.mark.parametrize("rows", [3_400_000, 340_000])
def test_plankton_shape_matches_whoi(rows):
    c = plankton_class_counts(rows)
    assert len(c) == 103 and c.sum() == rows
    assert list(c) == sorted(c, reverse=True)
    frac = c / rows
    assert 0.88 <= frac[:5].sum() <= 0.91           # five classes hold ~90%
    assert 0.012 <= frac[4] <= 0.014                # the 5th largest ~1.3%
    assert 600 <= c.max() / c.min() <= 700          # rho ~ 650
    if rows == 3_400_000:
        assert 2_200_000 <= c[0] <= 2_400_000 and c.min() < 3_600


def test_exact_counts_sum_and_proportion():
    f = tabular_fractions(10, 100.0)
    for rows in (1000, 12345):
        c = exact_counts(f, rows)
        assert c.sum() == rows and (c >= 1).all()
        assert np.abs(c / rows - f).max() < 2 / rows + 1e-12
    with pytest.raises(InputError):
        exact_counts(f, 5)


def test_step_and_linear_targets():
    counts = {i: 100 + i for i in range(10)}
    t = protocol_targets(counts, "step", rho=10, mu=0.3, seed=0)
    assert sorted(t.values()) == [10, 10, 10] + [100] * 7
    t = protocol_targets(counts, "linear", rho=10, seed=0)
    assert max(t.values()) == 100 and min(t.values()) == 10
    assert sorted(t.values()) == sorted(int(round(100 * (1 - i / 9 * 0.9))) for i in range(10))
    with pytest.raises(InputError):
        protocol_targets(counts, "zigzag", rho=10)


def test_split_cutoffs_exact_per_class():
    cut = split_cutoffs({"a": 10, "b": 3, "c": 1001}, [0.2, 0.1])
    assert cut["a"] == [2, 3] and cut["b"] == [1, 1] and cut["c"] == [200, 300]


def test_the_minority_classes_message_names_the_classes_and_the_rule():
    from pipeline.prep.profile import describe_counts, format_distribution

    dist = describe_counts({"a": 50, "b": 29, "c": 15, "d": 5, "e": 1})
    assert dist["minority_classes"] == ["e", "d", "c", "b"]       # 1+5+15+29 = 50 <= 100/2; + a would not be
    text = format_distribution(dist)
    line = next(ln for ln in text.splitlines() if "minority" in ln)
    assert line.startswith("4 minority classes (e, d, c, b; 50.0% of the rows): the smallest classes that "
                           "together hold at most half of the rows")
    assert "Class Rectification Loss" in line and "the other 1 are majority classes" in line
