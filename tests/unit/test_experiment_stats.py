"""Experiment statistics against independent references: scipy's Friedman and t intervals, exact
Wilcoxon p-values by enumeration, Demšar's (2006) published tables and worked example, Holm by hand."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.flows import experiment_stats as es
from pipeline.errors import InputError


def _trials(methods=("a", "b", "c", "d"), levels=(10, 100), seeds=range(5), effects=None, noise=0.02,
            rng_seed=0, metrics=("macro_f1", "g_mean")):
    rng = np.random.default_rng(rng_seed)
    effects = effects or {m: 0.05 * i for i, m in enumerate(methods)}
    rows = []
    for m in methods:
        for lv in levels:
            for s in seeds:
                row = {"method": m, "level": lv, "seed": s}
                for j, met in enumerate(metrics):
                    row[met] = 0.6 + effects[m] - 0.02 * np.log10(lv) + rng.normal(0, noise) + 0.01 * j
                rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- summaries

def test_summary_matches_pandas_and_scipy_t_interval():
    df = _trials()
    df.loc[3, "g_mean"] = np.nan  # one missing value: n drops to 4 for that group
    s = es.summarize_trials(df, ["macro_f1", "g_mean"])
    assert len(s) == 4 * 2 * 2
    for (m, lv), g in df.groupby(["method", "level"]):
        for met in ("macro_f1", "g_mean"):
            x = g[met].dropna().to_numpy()
            row = s[(s.method == m) & (s.level == lv) & (s.metric == met)].iloc[0]
            assert row["n"] == len(x)
            assert row["mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert row["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
            # bounded metrics: the t-interval of logit(x), mapped back to [0, 1]
            z = np.log(x / (1 - x))
            lo, hi = stats.t.interval(0.95, len(z) - 1, loc=z.mean(), scale=stats.sem(z))
            assert row["ci_low"] == pytest.approx(1 / (1 + np.exp(-lo)), rel=1e-10)
            assert row["ci_high"] == pytest.approx(1 / (1 + np.exp(-hi)), rel=1e-10)
            assert 0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1
    assert s[(s.metric == "g_mean")]["n"].min() == 4


def test_bounded_interval_stays_inside_unit_interval_and_unbounded_stays_t():
    # two seeds at 0.05 and 0.11: the raw t-interval is [-0.35, 0.51]
    df = pd.DataFrame({"method": ["a", "a"], "level": [1, 1], "seed": [0, 1], "macro_f1": [0.05, 0.11],
                       "train_loss": [0.05, 0.11]})
    s = es.summarize_trials(df, ["macro_f1", "train_loss"]).set_index("metric")
    assert 0 < s.loc["macro_f1", "ci_low"] < 0.05 and 0.11 < s.loc["macro_f1", "ci_high"] < 1
    assert s.loc["train_loss", "ci_low"] == pytest.approx(-0.301, abs=1e-3)


def test_iman_davenport_degenerate_is_not_infinite():
    res = es.iman_davenport(4.0, 2, 3)     # two blocks agreeing perfectly on 3 methods: chi2 = N(k-1)
    assert res["statistic"] is None and res["p_value"] is None and res["degenerate"]


def test_summary_single_trial_has_no_interval_and_bad_columns_raise():
    df = _trials(seeds=[0])
    s = es.summarize_trials(df, ["macro_f1"])
    assert (s["n"] == 1).all() and s["std"].isna().all() and s["ci_half"].isna().all()
    assert np.allclose(s.sort_values(["method", "level"])["mean"].to_numpy(),
                       df.sort_values(["method", "level"])["macro_f1"].to_numpy())
    with pytest.raises(InputError, match="roc"):
        es.summarize_trials(df, ["macro_roc_auc"])
    with pytest.raises(InputError, match="empty"):
        es.summarize_trials(df.iloc[:0], ["macro_f1"])


# ---------------------------------------------------------------------------- Friedman

def test_friedman_matches_scipy_with_ties():
    df = _trials(methods=("a", "b", "c", "d", "e"), seeds=range(6), noise=0.05, rng_seed=3)
    df["macro_f1"] = df["macro_f1"].round(2)  # create ties within blocks
    res = es.friedman_test(df, "macro_f1")
    wide = df.pivot(index=["level", "seed"], columns="method", values="macro_f1")
    ref = stats.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
    assert res["applicable"] and res["k"] == 5 and res["n_blocks"] == 12
    assert res["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    # Iman–Davenport, formula written here: F = (N-1)χ² / (N(k-1) - χ²) on (k-1, (k-1)(N-1)) df
    n, k, chi = 12, 5, ref.statistic
    f = (n - 1) * chi / (n * (k - 1) - chi)
    assert res["iman_davenport"]["statistic"] == pytest.approx(f, rel=1e-10)
    assert res["iman_davenport"]["p_value"] == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)), rel=1e-8)
    # average ranks: rank 1 = highest value, ties averaged (rankdata on the negated rows)
    ranks = np.mean([stats.rankdata(-row) for row in wide.to_numpy()], axis=0)
    assert res["avg_ranks"] == pytest.approx(dict(zip(wide.columns, ranks)))


def test_friedman_average_ranks_by_hand():
    # 3 blocks × 3 methods; ranks (1 = best): block1 a1 b2 c3, block2 a1.5 b1.5 c3, block3 b1 a2 c3
    df = pd.DataFrame({"method": list("abc") * 3, "level": [1] * 9, "seed": [0] * 3 + [1] * 3 + [2] * 3,
                       "macro_f1": [0.9, 0.8, 0.1, 0.7, 0.7, 0.2, 0.5, 0.6, 0.3]})
    res = es.friedman_test(df, "macro_f1")
    assert res["avg_ranks"] == pytest.approx({"a": 4.5 / 3, "b": 4.5 / 3, "c": 3.0})
    # lower-is-better metrics rank the other way round
    df["brier"] = df["macro_f1"]
    assert es.friedman_test(df, "brier")["avg_ranks"]["c"] == pytest.approx(1.0)


def test_friedman_two_methods_equals_sign_test_statistic():
    # k = 2 without ties: χ²_F = (wins_a − wins_b)² / N; here a wins 8 of 10 blocks → 3.6
    a = np.array([0.9] * 8 + [0.1] * 2)
    df = pd.DataFrame({"method": ["a"] * 10 + ["b"] * 10, "level": 5, "seed": list(range(10)) * 2,
                       "macro_f1": np.concatenate([a, np.full(10, 0.5)])})
    res = es.friedman_test(df, "macro_f1")
    assert res["statistic"] == pytest.approx(3.6)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(3.6, 1))
    assert res["avg_ranks"] == pytest.approx({"a": 1.2, "b": 1.8})


def test_friedman_degenerate_cases_are_reported_not_raised():
    one_method = _trials(methods=("a",))
    r = es.friedman_test(one_method, "macro_f1")
    assert not r["applicable"] and "method" in r["reason"]
    one_block = _trials(levels=(10,), seeds=[0])
    r = es.friedman_test(one_block, "macro_f1")
    assert not r["applicable"] and "block" in r["reason"]
    equal = _trials()
    equal["macro_f1"] = 0.5
    r = es.friedman_test(equal, "macro_f1")
    assert not r["applicable"] and "equal" in r["reason"]
    assert r["avg_ranks"] == pytest.approx({m: 2.5 for m in "abcd"})


def test_friedman_drops_incomplete_blocks_and_rejects_duplicates():
    df = _trials()
    df.loc[(df.method == "b") & (df.seed == 0) & (df.level == 10), "macro_f1"] = np.nan
    r = es.friedman_test(df, "macro_f1")
    assert r["n_blocks"] == 9 and r["n_blocks_dropped"] == 1
    with pytest.raises(InputError, match="one trial per block"):
        es.friedman_test(pd.concat([df, df.iloc[:1]]), "macro_f1")


# ---------------------------------------------------------------------------- Nemenyi

# Demšar (2006), Table 5(a): critical values q_α of the two-tailed Nemenyi test.
DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
DEMSAR_Q10 = {2: 1.645, 3: 2.052, 4: 2.291, 5: 2.459, 6: 2.589, 7: 2.693, 8: 2.780, 9: 2.855, 10: 2.920}


@pytest.mark.parametrize("alpha,table", [(0.05, DEMSAR_Q05), (0.10, DEMSAR_Q10)])
def test_nemenyi_q_matches_demsar_table(alpha, table):
    for k, q in table.items():
        # the printed table truncates to 3 decimals in places (2.3437 → 2.343), hence 1e-3
        assert es.nemenyi_q(k, alpha) == pytest.approx(q, abs=1e-3), k
    # grows with k beyond the table (up to ~20 methods)
    qs = [es.nemenyi_q(k, alpha) for k in range(2, 21)]
    assert all(b > a for a, b in zip(qs, qs[1:]))


def test_nemenyi_reproduces_demsar_worked_example():
    # Demšar (2006) Sec. 3.2.4: C4.5 variants on 14 data sets. Average ranks 3.143, 2.000, 2.893,
    # 1.964; χ²_F = 9.28, F_F = 3.69; CD = 1.25 at α=0.05 (no pair differs) and 1.12 at α=0.10
    # (C4.5 is worse than C4.5+m and than C4.5+m+cf).
    ranks = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}
    n, k = 14, 4
    chi = 12 * n / (k * (k + 1)) * (sum(r * r for r in ranks.values()) - k * (k + 1) ** 2 / 4)
    assert chi == pytest.approx(9.28, abs=0.01)
    assert es.iman_davenport(chi, n, k)["statistic"] == pytest.approx(3.69, abs=0.01)
    r05 = es.nemenyi(ranks, n, 0.05)
    assert r05["cd"] == pytest.approx(1.25, abs=0.005)
    assert r05["significant_pairs"] == []
    r10 = es.nemenyi(ranks, n, 0.10)
    assert r10["cd"] == pytest.approx(1.12, abs=0.005)
    assert {(p["a"], p["b"]) for p in r10["significant_pairs"]} == {("C4.5+m+cf", "C4.5"), ("C4.5+m", "C4.5")}
    # the CD formula itself
    assert r10["cd"] == pytest.approx(es.nemenyi_q(4, 0.10) * np.sqrt(4 * 5 / (6 * 14)))


def test_cd_cliques_by_hand():
    ranks = {"a": 1.0, "b": 1.5, "c": 2.2, "d": 3.6, "e": 3.9}
    # CD 1.3: a-b-c span 1.2 < 1.3; c-d 1.4 too far; d-e 0.3
    assert es.cd_cliques(ranks, 1.3) == [["a", "b", "c"], ["d", "e"]]
    # CD 1.5: a..c (1.2); b's group b..c lies inside it; c-d 1.4 yes but c-e 1.7 no; d-e
    assert es.cd_cliques(ranks, 1.5) == [["a", "b", "c"], ["c", "d"], ["d", "e"]]
    assert es.cd_cliques(ranks, 0.1) == []


# ---------------------------------------------------------------------------- Holm and Wilcoxon

def test_holm_hand_worked_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    # 0.04·1 = 0.04 → max so far 0.06. Reject the first two (0.03 > 0.05/2 stops the procedure).
    adj, rej = es.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rej.tolist() == [True, False, False, True]
    # NaN is not a test: m = 2 for the others
    adj, rej = es.holm([0.02, np.nan, 0.04], alpha=0.05)
    assert adj[0] == pytest.approx(0.04) and np.isnan(adj[1]) and adj[2] == pytest.approx(0.04)
    assert rej.tolist() == [True, False, True]
    assert es.holm([0.6, 0.9])[0] == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_agrees_with_sequential_rejection_rule():
    rng = np.random.default_rng(7)
    for _ in range(200):
        m = rng.integers(1, 12)
        p = rng.uniform(0, 0.1, m) ** rng.uniform(0.5, 2)
        _, rej = es.holm(p, 0.05)
        # the textbook loop: walk up the sorted p-values, reject while p_(i) <= α/(m-i+1)
        expect = np.zeros(m, bool)
        for i, idx in enumerate(np.argsort(p, kind="mergesort")):
            if p[idx] > 0.05 / (m - i):
                break
            expect[idx] = True
        assert rej.tolist() == expect.tolist()


def _exact_wilcoxon_p(d):
    """Two-sided exact p of the signed-rank test by enumerating all 2^n sign patterns (no ties)."""
    d = np.asarray(d, float)
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    w_plus = ranks[d > 0].sum()
    n = len(d)
    dist = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=n)]
    dist = np.array(dist)
    w = min(w_plus, ranks.sum() - w_plus)
    return min(1.0, 2 * np.mean(dist <= w + 1e-9))


def test_wilcoxon_holm_against_exact_enumeration_and_holm_by_hand():
    rng = np.random.default_rng(11)
    blocks = [(lv, s) for lv in (10, 50) for s in range(4)]  # 8 blocks
    base = rng.uniform(0.5, 0.7, len(blocks))
    vals = {"a": base + rng.normal(0.05, 0.02, 8), "b": base + rng.normal(0.0, 0.02, 8),
            "c": base + rng.normal(-0.05, 0.02, 8)}
    rows = [{"method": m, "level": lv, "seed": s, "macro_f1": vals[m][i]}
            for m in vals for i, (lv, s) in enumerate(blocks)]
    res = es.wilcoxon_holm(pd.DataFrame(rows), "macro_f1", alpha=0.05)
    assert [(r["a"], r["b"]) for r in res] == [("a", "b"), ("a", "c"), ("b", "c")]
    ps = [_exact_wilcoxon_p(vals[r["a"]] - vals[r["b"]]) for r in res]
    for r, p in zip(res, ps):
        assert r["n"] == 8
        assert r["p_value"] == pytest.approx(p, rel=1e-9)
        assert r["median_diff"] == pytest.approx(np.median(vals[r["a"]] - vals[r["b"]]))
    order = np.argsort(ps)
    expect_adj = np.empty(3)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (3 - i) * ps[idx]))
        expect_adj[idx] = running
    assert [r["p_holm"] for r in res] == pytest.approx(expect_adj.tolist())
    assert [r["reject"] for r in res] == [bool(x <= 0.05) for x in expect_adj]
    assert res[1]["better"] == "a"  # a's effect is +0.05, c's −0.05


def test_wilcoxon_all_zero_differences():
    df = _trials(methods=("a", "b"))
    df.loc[df.method == "b", "macro_f1"] = df.loc[df.method == "a", "macro_f1"].to_numpy()
    (r,) = es.wilcoxon_holm(df, "macro_f1")
    assert r["p_value"] == 1.0 and not r["reject"] and "zero" in r["note"] and r["better"] is None


# ---------------------------------------------------------------------------- plots and report

def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    df = _trials()
    s = es.summarize_trials(df, ["macro_f1"])
    assert _is_png(es.plot_metric_vs_rho(s, "macro_f1", tmp_path / "f1.png"))
    s2 = s.assign(level=s["level"].map({10: "step-10", 100: "linear-100"}))  # categorical levels
    assert _is_png(es.plot_metric_vs_rho(s2, "macro_f1", tmp_path / "f1cat.png"))
    fr = es.friedman_test(df, "macro_f1")
    ne = es.nemenyi(fr["avg_ranks"], fr["n_blocks"])
    assert _is_png(es.plot_critical_difference(fr["avg_ranks"], ne["cd"], tmp_path / "cd.png", title="t"))
    with pytest.raises(InputError):
        es.plot_metric_vs_rho(s, "nope", tmp_path / "x.png")


def test_write_experiment_report(tmp_path):
    df = _trials(methods=("baseline", "ros", "rus"), levels=(10, 50, 100), seeds=range(3))
    df["balanced_accuracy"] = 0.75  # all equal: Friedman not applicable for this metric
    (tmp_path / "trials").mkdir()  # other content of the directory is left alone
    out = es.write_experiment_report(df, tmp_path, metrics=["macro_f1", "g_mean", "balanced_accuracy"])
    for name in ("results.csv", "summary.csv", "stats.json", "report.md", "report.html",
                 "cd_macro_f1.png", "macro_f1_vs_rho.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "trials").is_dir()
    assert not list(tmp_path.glob(".report.tmp-*"))
    assert not (tmp_path / "cd_balanced_accuracy.png").exists()

    def strict(c):
        raise ValueError(c)
    st = json.loads((tmp_path / "stats.json").read_text(), parse_constant=strict)
    assert st["metrics"]["macro_f1"]["friedman"]["applicable"] is True
    assert st["metrics"]["macro_f1"]["friedman"]["statistic"] == pytest.approx(
        es.friedman_test(df, "macro_f1")["statistic"])
    assert st["metrics"]["balanced_accuracy"]["friedman"]["applicable"] is False
    assert len(st["metrics"]["g_mean"]["wilcoxon_holm"]) == 3
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), df, check_dtype=False)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 3 * 3 * 3
    md = (tmp_path / "report.md").read_text()
    g = df[(df.method == "ros") & (df.level == 50)]["macro_f1"]
    assert f"{g.mean():.4f} ± {g.std(ddof=1):.4f}" in md
    assert "Friedman test not applicable" in md and "equal" in md
    assert "ρ=50" in md and "CD =" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 + 2  # 3 metric-vs-ρ plots + 2 CD diagrams
    assert "src='cd_" not in page and f"{g.mean():.4f}" in page


def test_report_degenerate_inputs(tmp_path):
    one = _trials(methods=("only",), levels=(10,), seeds=[0])
    res = es.write_experiment_report(one, tmp_path / "r1", metrics=["macro_f1"])
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "not applicable" in md and "only 1 method" in md
    assert res["stats"]["metrics"]["macro_f1"]["wilcoxon_holm"] == []
    # metrics=None: the default metrics that are present
    res = es.write_experiment_report(_trials(), tmp_path / "r2")
    assert set(res["stats"]["metrics"]) == {"macro_f1", "g_mean"}
    # a missing metric column is bad input and leaves nothing behind
    with pytest.raises(InputError, match="l5_f1"):
        es.write_experiment_report(_trials(), tmp_path / "r3", metrics=["l5_f1"])
    assert not (tmp_path / "r3" / "report.html").exists()


def test_paired_differences_match_scipy_paired_t_and_report_the_cost(tmp_path):
    """Method − reference within (level, seed) blocks: the mean and scipy's paired Student-t interval;
    an incomplete block is left out; the report tables the differences and the training cost."""
    df = _trials(methods=("baseline", "ros", "rus"), levels=(10, 100), seeds=range(4), noise=0.03)
    df = df[~((df.method == "rus") & (df.level == 100) & (df.seed == 3))]     # one trial missing
    df["train_rows_seen"] = np.where(df.method == "rus", 2_000, 80_000)
    got = {d["method"]: d for d in es.paired_differences(df, "macro_f1", "baseline", ["level", "seed"])}
    for m, n in (("ros", 8), ("rus", 7)):
        a = df[df.method == m].set_index(["level", "seed"])["macro_f1"]
        b = df[df.method == "baseline"].set_index(["level", "seed"])["macro_f1"]
        d = (a - b).dropna()
        ci = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert got[m]["n"] == n and got[m]["mean"] == pytest.approx(d.mean())
        assert got[m]["ci"] == pytest.approx(list(ci))
    es.write_experiment_report(df, tmp_path, metrics=["macro_f1"], reference="baseline")
    md = (tmp_path / "report.md").read_text()
    assert "Paired difference to baseline" in md and f"{got['ros']['mean']:+.4f}" in md
    assert "Training cost" in md and "| rus | 2,000 |" in md
    st = json.loads((tmp_path / "stats.json").read_text())
    assert {d["method"] for d in st["paired_differences"]} == {"ros", "rus"}


def test_trial_rows_carry_the_binary_metrics_and_training_cost(tmp_path):
    """A two-class trial's row holds the metrics.json["binary"] values under their dotted keys (its
    threshold-moving variant the same: moving thresholds does not move scores) and the rows read."""
    from pipeline.flows.experiment import BINARY_METRICS, _rows_from
    from pipeline.io import write_json

    (tmp_path / "train").mkdir()
    write_json(tmp_path / "train" / "train_summary.json",
               {"epochs_run": 2, "best_epoch": 2, "history": [{"rows": 1000}, {"rows": 1010}]})
    binary = {"pr_auc": 0.3, "roc_auc": 0.9, "recall_at_precision": {"0.5": 0.4, "0.9": 0.05},
              "precision_at_k": {"0.001": 0.5, "0.01": 0.1}}
    head = {"macro_f1": 0.6}
    summary = {"run_dir": str(tmp_path), "seconds": {"train": 3.0}, "metrics": head, "binary": binary,
               "metrics_adjusted": {"macro_f1": 0.7}}
    rows = _rows_from(summary, {"name": "base", "rho": None},
                      {"name": "baseline", "threshold_variant": "prior_threshold"}, 0)
    assert [r["method"] for r in rows] == ["baseline", "prior_threshold"]
    for r in rows:
        assert [r[k] for k in BINARY_METRICS] == [0.3, 0.9, 0.4, 0.05, 0.5, 0.1]
        assert r["train_rows_seen"] == 2010 and r["epochs_run"] == 2
    assert rows[0]["macro_f1"] == 0.6 and rows[1]["macro_f1"] == 0.7
