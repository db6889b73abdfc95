"""Prior correction, temperature scaling and calibration metrics against independent references:
Dal Pozzolo et al.'s closed form, Bayes' rule by hand, a plain loop for ECE, scikit-learn's
Brier score and SciPy's optimiser for the temperature."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import brier_score_loss

from pipeline.evaluation.calibration import (
    brier_sum,
    brier_units,
    fixed_sum,
    from_fixed,
    confidence_bin,
    ece_from_partials,
    reliability_bins,
    reliability_partials,
)
from pipeline.data.prior_correction import (
    correct_probs,
    corrected_logits,
    fit_temperature,
    nll_terms,
    prior_changed,
    prior_distribution,
    prior_weights,
)


def _probs(rng, n, k):
    z = rng.normal(size=(n, k)) * 2
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_binary_rus_matches_dal_pozzolo_closed_form():
    # 0.1% positives; RUS keeps every positive and as many negatives: beta = N+ / N-
    input_counts = {"0": 99_900, "1": 100}
    achieved = {"0": 100, "1": 100}
    beta = 100 / 99_900
    pi = prior_distribution(input_counts, 2)
    pi_model = prior_distribution(achieved, 2)
    ps = np.linspace(0.0, 1.0, 101)
    probs = np.stack([1 - ps, ps], axis=1)
    got = correct_probs(probs, prior_weights(pi, pi_model))[:, 1]
    dal_pozzolo = beta * ps / (beta * ps - ps + 1)
    np.testing.assert_allclose(got, dal_pozzolo, rtol=1e-12, atol=1e-300)
    assert got[50] == pytest.approx(beta / (1 + beta))     # "50% fraud" is ~0.1% on the real prior
    assert prior_changed(pi, pi_model) and not prior_changed(pi, pi)


def test_multiclass_matches_bayes_rule_by_hand():
    rng = np.random.default_rng(0)
    probs = _probs(rng, 50, 4)
    pi = np.array([0.7, 0.2, 0.09, 0.01])
    pi_model = np.array([0.25, 0.25, 0.25, 0.25])
    got = correct_probs(probs, prior_weights(pi, pi_model))
    for i in range(len(probs)):
        num = [probs[i, c] * pi[c] / pi_model[c] for c in range(4)]
        total = sum(num)
        for c in range(4):
            assert got[i, c] == pytest.approx(num[c] / total, rel=1e-12)


def test_unseen_class_weight_one_and_identity():
    w = prior_weights([0.5, 0.3, 0.2], [0.6, 0.4, 0.0])
    assert w[2] == 1.0 and w[0] == pytest.approx(0.5 / 0.6)
    p = _probs(np.random.default_rng(1), 10, 3)
    np.testing.assert_allclose(correct_probs(p), p, rtol=1e-12)
    np.testing.assert_allclose(correct_probs(p, np.ones(3), 1.0), p, rtol=1e-12)
    with pytest.raises(ValueError):
        prior_distribution({"0": 0, "1": 0}, 2)


def test_temperature_divides_the_corrected_logits():
    p = _probs(np.random.default_rng(2), 20, 3)
    w = np.array([2.0, 1.0, 0.5])
    z = np.log(p) + np.log(w)
    want = np.exp(z / 3.0) / np.exp(z / 3.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(correct_probs(p, w, 3.0), want, rtol=1e-12)


def _ece_loop(probs, labels, m=15):
    """Guo et al.'s top-label ECE, written out: bins ((i-1)/m, i/m], i = 1..m."""
    n = len(labels)
    total = 0.0
    for i in range(1, m + 1):
        lo, hi = (i - 1) / m, i / m
        members = [r for r in range(n) if (lo < probs[r].max() <= hi) or (i == 1 and probs[r].max() == 0)]
        if not members:
            continue
        acc = np.mean([probs[r].argmax() == labels[r] for r in members])
        conf = np.mean([probs[r].max() for r in members])
        total += len(members) / n * abs(acc - conf)
    return total


def test_ece_matches_a_plain_loop_and_adds_over_blocks():
    rng = np.random.default_rng(3)
    probs = _probs(rng, 600, 5)
    labels = rng.integers(0, 5, size=600)
    whole = reliability_partials(probs, labels)
    parts = reliability_partials(probs[:250], labels[:250]) + reliability_partials(probs[250:], labels[250:])
    assert (parts == whole).all()
    assert ece_from_partials(whole) == pytest.approx(_ece_loop(probs, labels), rel=1e-12)
    bins = reliability_bins(whole)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 600


def test_partial_sums_have_the_same_bits_in_any_order_and_any_split():
    """Spark merges partitions in any order and rows fall into partitions and batches differently
    from run to run: the Brier sum and the confidence sums must not change in their last bits."""
    rng = np.random.default_rng(8)
    probs = _probs(rng, 20_000, 7)
    labels = rng.integers(0, 7, size=20_000)
    whole_b, whole_r = brier_units(probs, labels), reliability_partials(probs, labels)
    for trial in range(5):
        perm = rng.permutation(20_000)
        cuts = np.sort(rng.choice(np.arange(1, 20_000), size=6, replace=False))
        blocks = np.split(perm, cuts)
        assert sum(brier_units(probs[i], labels[i]) for i in reversed(blocks)) == whole_b
        assert (sum(reliability_partials(probs[i], labels[i]) for i in blocks) == whole_r).all()
        floats = [brier_sum(probs[i], labels[i]) for i in blocks]
        assert brier_sum(probs, labels) == pytest.approx(sum(floats), rel=1e-12)
    assert abs(from_fixed(fixed_sum(np.full(3, 0.1))) - 0.3) <= 3 * 2.0 ** -41   # each value rounded once


def test_confidence_bins_are_right_closed():
    # 1/15 belongs to the first bin ((0, 1/15]), just above it to the second, 1.0 to the last
    assert list(confidence_bin(np.array([1 / 15, 1 / 15 + 1e-9, 0.5, 1.0]))) == [0, 1, 7, 14]


def test_brier_is_the_multiclass_sum_twice_sklearns_binary():
    rng = np.random.default_rng(4)
    p1 = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p1).astype(int)
    probs = np.stack([1 - p1, p1], axis=1)
    assert brier_sum(probs, y) / 200 == pytest.approx(2 * brier_score_loss(y, p1), rel=1e-12)
    p = _probs(rng, 30, 4)
    lab = rng.integers(0, 4, size=30)
    loop = sum(sum((p[i, c] - (lab[i] == c)) ** 2 for c in range(4)) for i in range(30))
    assert brier_sum(p, lab) == pytest.approx(loop, rel=1e-12)


def test_temperature_fit_matches_scipy_and_recovers_an_overconfident_scale():
    rng = np.random.default_rng(5)
    n, k = 20_000, 4
    z = rng.normal(size=(n, k)) * 1.5
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in true])
    over = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)      # three times too confident
    logits = corrected_logits(over)
    blocks = np.array_split(np.arange(n), 7)

    def terms(beta):
        return sum(nll_terms(logits[b], labels[b], beta) for b in blocks)

    t = fit_temperature(terms)

    def nll(temp):
        return -log_softmax(logits / temp, axis=1)[np.arange(n), labels].sum()

    ref = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x
    assert t == pytest.approx(ref, rel=1e-4)
    assert t == pytest.approx(3.0, rel=0.05)
    # the derivatives are those of the NLL (finite differences)
    f, g, h = nll_terms(logits, labels, 0.7)
    eps = 1e-5
    fp, gp, _ = nll_terms(logits, labels, 0.7 + eps)
    fm, gm, _ = nll_terms(logits, labels, 0.7 - eps)
    assert g == pytest.approx((fp - fm) / (2 * eps), rel=1e-5)
    assert h == pytest.approx((gp - gm) / (2 * eps), rel=1e-4)
