"""The ``rare`` synth preset's NumPy parts: exact positives, sub-populations, duplicates, heavy tails,
informative vs nuisance columns (no Spark)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kurtosis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline.data.synth import synthesize
from pipeline.data.synth_rare import (DUP_EXACT, DUP_NEAR, GROUPS, NEG_SHARES, POS_SHARES, feature_layout,
                                      rare_counts, rare_table)
from pipeline.errors import InputError


@pytest.fixture(scope="module")
def table():
    return rare_table(20_000, seed=3, positive_rate=0.05, features=32)


@pytest.mark.parametrize("rows,rate", [(1000, 0.001), (20_000, 0.001), (123_457, 0.001), (5_000_000, 0.001),
                                       (999, 0.013), (77_777, 0.2), (10, 0.3), (1_000_003, 0.0123)])
def test_exact_positive_count(rows, rate):
    counts = rare_counts(rows, rate)
    assert counts.tolist() == [rows - round(rows * rate), round(rows * rate)]


def test_at_least_one_positive_and_labels_match_counts():
    assert rare_counts(100, 0.001).tolist() == [99, 1]
    t = rare_table(3000, seed=0, positive_rate=0.01, features=8, batch=700)
    assert int(t["label"].sum()) == 30 and t["id"].tolist() == list(range(3000))
    assert t["x"].shape == (3000, 8) and t["x"].dtype == np.float32


def test_positives_are_spread_over_ids():
    t = rare_table(20_000, seed=0, positive_rate=0.01, features=8)
    per_block = t["label"].reshape(20, 1000).sum(1)        # 200 positives, ~10 per block of 1000 ids
    assert per_block.min() >= 5 and per_block.max() <= 15


def test_deterministic_for_a_seed_and_different_for_another(table):
    again = rare_table(20_000, seed=3, positive_rate=0.05, features=32)
    for k in ("label", "group", "copied", "x"):
        assert np.array_equal(table[k], again[k]), k
    other = rare_table(20_000, seed=4, positive_rate=0.05, features=32)
    assert np.array_equal(table["label"], other["label"])   # the label permutation depends on rows only
    assert not np.allclose(table["x"], other["x"])


def test_sub_population_shares_are_exact(table):
    groups, labels = table["group"], table["label"]
    n_neg, n_pos = rare_counts(20_000, 0.05)
    counts = np.bincount(groups, minlength=len(GROUPS))
    assert (labels[groups >= 4] == 1).all() and (labels[groups < 4] == 0).all()
    assert np.abs(counts[4:] - POS_SHARES * n_pos).max() <= 1          # 540, 400, 50, 10 of 1000
    assert np.abs(counts[:4] - NEG_SHARES * n_neg).max() <= 1
    assert counts[GROUPS.index("major_flipped")] >= 1 and counts[GROUPS.index("pos_rare")] == 50


def test_sub_populations_live_where_documented(table):
    x = table["x"][:, feature_layout(32)["informative"]]
    g = table["group"]
    orig = table["copied"] == 0
    mean = {name: x[(g == i) & orig].mean(0) for i, name in enumerate(GROUPS)}
    major = x[(g < 3) & orig].mean(0)
    assert np.linalg.norm(mean["pos_easy"] - major) > 3.5                 # far from the majority
    assert np.linalg.norm(mean["pos_overlap"] - mean["major_a"]) < 1.0     # inside it
    assert np.linalg.norm(mean["pos_rare"] - major) > 2.5                 # its own region ...
    assert np.linalg.norm(mean["pos_rare"] - mean["pos_easy"]) > 3.5      # ... away from the easy cluster
    # label noise (10 and 2 rows here): flipped rows lie with the other class
    near = lambda a, b, c: np.linalg.norm(mean[a] - mean[b]) + 1.0 < np.linalg.norm(mean[a] - mean[c])  # noqa: E731
    assert near("pos_flipped", "major_a", "pos_easy") and near("major_flipped", "pos_easy", "major_a")


def test_exact_and_near_duplicates_present(table):
    x, copied, labels = table["x"], table["copied"], table["label"]
    assert 0.5 * DUP_EXACT * 20_000 < (copied == 1).sum() < 2 * DUP_EXACT * 20_000
    assert 0.5 * DUP_NEAR * 20_000 < (copied == 2).sum() < 2 * DUP_NEAR * 20_000
    _, first, n = np.unique(x, axis=0, return_index=True, return_counts=True)
    assert len(x) - len(first) == (copied == 1).sum()                      # each exact copy repeats one row
    for i in np.flatnonzero(copied == 1)[:20]:
        twins = np.flatnonzero((x == x[i]).all(1))
        assert len(twins) >= 2 and (labels[twins] == labels[i]).all() and twins.min() < i
    for i in np.flatnonzero(copied == 2)[:20]:
        d = np.abs(x - x[i]).max(1)
        d[i] = np.inf
        j = int(np.argmin(d))
        assert 0 < d[j] < 0.1 and labels[j] == labels[i] and j < i


def test_heavy_tailed_columns(table):
    lay = feature_layout(32)
    x = table["x"].astype(np.float64)
    for name in ("lognormal", "student_t"):
        k = kurtosis(x[:, lay[name]], axis=0, fisher=False)
        assert (k > 4.5).all(), (name, k)
    assert (x[:, lay["lognormal"]] > 0).all()
    k_gauss = kurtosis(x[:, lay["nuisance"]], axis=0, fisher=False)
    assert np.abs(k_gauss - 3).max() < 0.5


def _auc(x, y, cols):
    half = len(y) // 2
    m = LogisticRegression(max_iter=2000).fit(x[:half, cols], y[:half])
    return roc_auc_score(y[half:], m.predict_proba(x[half:, cols])[:, 1])


def test_informative_columns_separate_classes_hard_but_learnable(table):
    lay, x, y = feature_layout(32), table["x"], table["label"]
    assert 0.7 < _auc(x, y, lay["informative"]) < 0.99
    assert 0.7 < _auc(x, y, slice(None)) < 0.99


def test_nuisance_columns_carry_no_signal(table):
    lay, x, y = feature_layout(32), table["x"], table["label"]
    assert 0.45 < _auc(x, y, lay["nuisance"]) < 0.55
    assert 0.45 < _auc(x, y, lay["student_t"]) < 0.55


@pytest.mark.parametrize("features", [4, 5, 32, 64])
def test_layout_covers_every_column(features):
    lay = feature_layout(features)
    cols = np.concatenate([np.arange(features)[s] for s in lay.values()])
    assert sorted(cols.tolist()) == list(range(features))
    assert all(s.stop > s.start for k, s in lay.items() if k != "student_t" or features >= 16)


@pytest.mark.parametrize("kw,msg", [({"positive_rate": 0.0}, "--positive-rate"), ({"positive_rate": 0.5}, "--positive-rate"),
                                    ({"positive_rate": float("nan")}, "--positive-rate"),
                                    ({"features": 3}, "--features"), ({"features": 8.5}, "--features")])
def test_bad_arguments_are_one_clear_line(kw, msg):
    with pytest.raises(InputError, match=msg) as e:
        synthesize(None, "rare", 1000, 0, "/nonexistent/never-written", **kw)
    assert "\n" not in str(e.value)
