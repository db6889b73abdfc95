"""Learned-cost mechanics against formulas written out here, scikit-learn and scipy:
Khan et al.'s cost-modulated softmax with the true class's row, the cost-scaled decision, the
CoSen cost update (costs move toward the error-prone class), C2C separability, the fixed held-out
part, DE/rand/1/bin (mutation, crossover, elitism) and the batched population confusions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import confusion_matrix

from pipeline.errors import ConfigError
from pipeline.train.cost.cosen import class_separability, cosen_logits, cosen_params, cosen_target, cosen_update, histogram_costs, holdout_mask
from pipeline.train.cost.costs import cost_scaled_probs
from pipeline.train.cost.search import confusions_numpy, de_trials, differential_evolution, pick_costs, search_params, shard_confusions




# ---------------------------------------------------------------------------- the modulation
def khan_probs(o: np.ndarray, y: np.ndarray, xi_matrix: np.ndarray) -> np.ndarray:
    """Khan et al.: y_n = ξ_{p,n} exp(o_n) / Σ_k ξ_{p,k} exp(o_k), p the true class of the row."""
    out = np.empty_like(o)
    for i in range(len(o)):
        w = xi_matrix[y[i]] * np.exp(o[i])
        out[i] = w / w.sum()
    return out


def test_cosen_logits_are_khans_row_modulation():
    rng = np.random.default_rng(0)
    c = 5
    o = rng.normal(0, 2, (40, c))
    y = rng.integers(0, c, 40)
    xi = rng.uniform(0.05, 1.0, c)
    xi /= xi.max()
    mat = np.tile(xi[:, None], (1, c))        # ξ_{p,q} = ξ_p off the diagonal
    np.fill_diagonal(mat, 1.0)                # ξ_{p,p} = 1
    got = torch.softmax(cosen_logits(torch.tensor(o), torch.tensor(y), torch.tensor(xi)), dim=1).numpy()
    np.testing.assert_allclose(got, khan_probs(o, y, mat), rtol=1e-12)
    # cross-entropy on o' = Khan's CE loss; a cheaper class (smaller ξ) loses less on the same logits
    ce = torch.nn.functional.cross_entropy(cosen_logits(torch.tensor(o), torch.tensor(y), torch.tensor(xi)),
                                           torch.tensor(y), reduction="none").numpy()
    np.testing.assert_allclose(ce, -np.log(khan_probs(o, y, mat)[np.arange(40), y]), rtol=1e-12)
    plain = torch.nn.functional.cross_entropy(torch.tensor(o), torch.tensor(y), reduction="none").numpy()
    assert np.all(ce <= plain + 1e-12)
    assert np.allclose(ce[xi[y] == 1.0], plain[xi[y] == 1.0])


def test_cost_scaled_probs_formula():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), 50)
    xi = np.array([0.2, 1.0, 3.0, 0.5])
    got = cost_scaled_probs(torch.tensor(p), xi).numpy()
    ref = p * xi / (p * xi).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert (got.argmax(1) == (p * xi).argmax(1)).all()
    # only ratios matter
    np.testing.assert_allclose(cost_scaled_probs(torch.tensor(p), 7 * xi).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("hook", ["cosen", "cost_search"])
def test_hook_predict_applies_the_saved_costs(hook):
    from pipeline.train.hooks import HOOKS

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 4).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    xi = torch.tensor([1.0, 0.1, 5.0, 0.7], dtype=torch.float64)
    with torch.no_grad():
        got = HOOKS[hook].predict({"costs": xi}, net, x)
        p = torch.softmax(net(x).float(), dim=1).double().numpy() * xi.numpy()
    np.testing.assert_allclose(got.numpy(), p / p.sum(1, keepdims=True), rtol=1e-12)
    assert got.dtype == torch.float64


# ---------------------------------------------------------------------------- the CoSen update
def test_cost_update_moves_toward_the_error_prone_class():
    """Class 2 is mostly misclassified on the held-out part: its cost grows relative to the others."""
    counts = [500, 500, 500, 500]                                  # no histogram effect
    cm = np.diag([90.0, 85, 10, 95])
    cm[2, 0], cm[2, 1] = 50, 40                                    # class 2: 10 of 100 right
    cm[0, 1], cm[1, 3], cm[3, 0] = 10, 15, 5
    sep = np.ones(4)
    xi = np.ones(4)
    t = cosen_target(counts, cm, sep, alpha_hist=0.5, alpha_error=2.0, alpha_separability=0.5)
    # the target written out: log t_c = α_r (r_c − E), max 1
    r = 1 - np.diag(cm) / cm.sum(1)
    e = 1 - np.trace(cm) / cm.sum()
    ref = np.exp(2.0 * (r - e))
    np.testing.assert_allclose(t, ref / ref.max(), rtol=1e-12)
    assert t.argmax() == 2
    new = cosen_update(xi, t, lr=0.5, min_cost=0.01)
    np.testing.assert_allclose(new, (0.5 * xi + 0.5 * t) / (0.5 * xi + 0.5 * t).max(), rtol=1e-12)
    ratio_before = xi[2] / np.delete(xi, 2)
    ratio_after = new[2] / np.delete(new, 2)
    assert np.all(ratio_after > ratio_before)
    # repeated steps converge to the target
    for _ in range(60):
        new = cosen_update(new, t, lr=0.5, min_cost=1e-6)
    np.testing.assert_allclose(new, t / t.max(), rtol=1e-9)


def test_histogram_and_separability_terms():
    # rarer classes cost more: (n_max / n_c)^α_h, max 1
    h = histogram_costs([1000, 100, 10], 0.5, 0.001)
    np.testing.assert_allclose(h, [0.1, 10 ** -0.5, 1.0], rtol=1e-12)
    # a less separable class (larger S) gets a larger target, other terms equal
    cm = np.diag([50.0, 50, 50])
    t = cosen_target([10, 10, 10], cm, np.array([0.5, 2.0, 0.5]), 0.5, 2.0, 1.0)
    assert t.argmax() == 1 and t[0] == pytest.approx(t[2])
    # min_cost clips
    assert cosen_update(np.ones(3), np.array([1e-9, 1, 1]), 1.0, 0.05).min() == pytest.approx(0.05)


def test_class_separability_against_direct_computation():
    rng = np.random.default_rng(2)
    c, d = 4, 6
    means = rng.normal(0, 3, (c, d))
    y = rng.integers(0, c - 1, 300)                               # class 3 absent
    f = means[y] + rng.normal(0, rng.uniform(0.5, 2, c)[y][:, None], (300, d))
    sums = np.zeros((c, d))
    np.add.at(sums, y, f)
    sq = np.bincount(y, weights=(f ** 2).sum(1), minlength=c)
    n = np.bincount(y, minlength=c)
    got = class_separability(sums, sq, n)
    present = [k for k in range(c) if n[k]]
    cent = np.stack([f[y == k].mean(0) for k in present])
    dist = cdist(cent, cent)
    np.fill_diagonal(dist, np.inf)
    for i, k in enumerate(present):
        within = np.sqrt(((f[y == k] - cent[i]) ** 2).sum(1).mean())
        assert got[k] == pytest.approx(within / dist[i].min(), rel=1e-9)
    assert np.isnan(got[3])


def test_holdout_mask_is_fixed_per_row():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 16, generator=g)
    m = holdout_mask(x, 0.1)
    assert 0.07 < m.float().mean().item() < 0.13
    perm = torch.randperm(4000, generator=g)
    assert torch.equal(holdout_mask(x[perm], 0.1), m[perm])              # independent of batch order
    assert torch.equal(holdout_mask(x[:37], 0.1), m[:37])                # and of batch size
    dup = torch.cat([x[:5], x[:5]])
    mm = holdout_mask(dup, 0.5)
    assert torch.equal(mm[:5], mm[5:])                                      # copies held out together
    img = torch.rand(200, 1, 8, 8, generator=g)
    assert holdout_mask(img, 0.2).shape == (200,)


# ---------------------------------------------------------------------------- differential evolution
def test_de_trials_mutation_and_crossover():
    rng = np.random.default_rng(4)
    pop = rng.uniform(-2, 2, (10, 6))
    trials = de_trials(pop, np.random.default_rng(5), F=0.5, CR=0.0, lo=-2, hi=2)
    # CR = 0: exactly one gene (j_rand) comes from the mutant, the others from the parent
    assert ((trials != pop).sum(axis=1) <= 1).all()
    # replay the generator to check each mutant gene: x_r1 + F (x_r2 − x_r3), clipped
    r = np.random.default_rng(5)
    for i in range(10):
        r1, r2, r3 = r.choice([j for j in range(10) if j != i], size=3, replace=False)
        assert len({i, r1, r2, r3}) == 4
        v = np.clip(pop[r1] + 0.5 * (pop[r2] - pop[r3]), -2, 2)
        cross = r.random(6) < 0.0
        j = r.integers(6)
        cross[j] = True
        np.testing.assert_allclose(trials[i], np.where(cross, v, pop[i]))
    full = de_trials(pop, np.random.default_rng(6), F=0.9, CR=1.0, lo=-1, hi=1)
    assert full.min() >= -1 and full.max() <= 1


def test_de_improves_and_never_worsens():
    target = np.array([1.5, -0.5, 0.25, -1.75, 0.0])

    def score(pop):
        return -((pop - target) ** 2).sum(axis=1)

    res = differential_evolution(score, 5, population=12, generations=40, F=0.5, CR=0.9, lo=-2, hi=2, seed=0,
                                 init=np.zeros((1, 5)))
    best = [h["best"] for h in res["history"]]
    assert len(best) == 41 and all(b >= a for a, b in zip(best, best[1:]))
    assert best[-1] > best[0] and best[-1] > -0.05
    assert res["best_score"] == pytest.approx(score(res["best"][None])[0])
    again = differential_evolution(score, 5, population=12, generations=40, F=0.5, CR=0.9, lo=-2, hi=2, seed=0,
                                 init=np.zeros((1, 5)))
    np.testing.assert_array_equal(again["best"], res["best"])


def test_de_ties_go_to_the_second_score():
    # objective flat (0 everywhere): selection follows the tie-breaker column
    def score(pop):
        return np.stack([np.zeros(len(pop)), -np.abs(pop).sum(axis=1)], axis=1)

    res = differential_evolution(score, 3, population=8, generations=30, F=0.5, CR=0.9, lo=-2, hi=2, seed=1)
    tb = [h["best_tiebreak"][0] for h in res["history"]]
    assert all(b >= a for a, b in zip(tb, tb[1:])) and tb[-1] > tb[0]


def test_unit_costs_kept_unless_de_beats_them():
    res = {"best": np.array([1.0, -1.0]), "scores": np.array([[0.5, 0.2], [0.5, 0.3]])}
    costs, improved = pick_costs(res, np.array([0.5, 0.3]))          # a tie: keep the plain argmax
    assert not improved and np.array_equal(costs, [1.0, 1.0])
    costs, improved = pick_costs(res, np.array([0.5, 0.25]))         # better on the tie-breaker
    assert improved and np.allclose(costs, [10.0, 0.1])
    costs, improved = pick_costs(res, np.array([0.6, 0.0]))          # worse on the metric
    assert not improved


def test_population_confusions_match_sklearn():
    rng = np.random.default_rng(7)
    c = 5
    probs = rng.dirichlet(np.ones(c), 1000).astype(np.float32)
    labels = rng.integers(0, c, 1000)
    costs = np.exp(rng.normal(0, 1, (6, c)))
    got = shard_confusions((probs, labels), costs, c)
    ref = confusions_numpy(probs, labels, costs, c)
    np.testing.assert_array_equal(got, ref)
    for k in range(6):
        pred = (probs.astype(np.float64) * costs[k]).argmax(1)
        np.testing.assert_array_equal(got[k], confusion_matrix(labels, pred, labels=list(range(c))))
    assert shard_confusions((np.zeros((0, c), np.float32), np.zeros(0, np.int64)), costs, c).sum() == 0


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("fn,params,match", [
    (cosen_params, {"holdut": 0.1}, r"train\.method_params\.holdut"),
    (cosen_params, {"holdout": 0.9}, r"train\.method_params\.holdout.*\(0, 0\.5\]"),
    (cosen_params, {"lr": "fast"}, r"train\.method_params\.lr"),
    (cosen_params, {"init": "random"}, r"train\.method_params\.init"),
    (cosen_params, {"update_every": 1.5}, r"train\.method_params\.update_every.*integer"),
    (cosen_params, {"category_centers": True}, r"category_centers.*cannot be combined"),
    (search_params, {"populaton": 8}, r"train\.method_params\.populaton"),
    (search_params, {"population": 3}, r"train\.method_params\.population"),
    (search_params, {"metric": "auc"}, r"train\.method_params\.metric"),
    (search_params, {"cost_range": [5, 1]}, r"train\.method_params\.cost_range"),
    (search_params, {"CR": 1.5}, r"train\.method_params\.CR"),
    (search_params, {"F": 0}, r"train\.method_params\.F"),
])
def test_bad_params_are_one_config_error(fn, params, match):
    with pytest.raises(ConfigError, match=match):
        fn(params)


def test_hooks_check_their_params_when_built():
    """build_hook is what the driver calls before training (trainer._check_method)."""
    from pipeline.train.hooks import build_hook

    with pytest.raises(ConfigError, match=r"train\.method_params\.nope"):
        build_hook("cosen", {"nope": 1}, 3, np.array([10.0, 5.0, 1.0]), 8)
    assert build_hook("cost_search", {"population": 8}, 3, np.array([10.0, 5.0, 1.0]), 8).p["population"] == 8


def test_defaults_and_loop_keys_pass():
    p = search_params({"dynamic_sampling": False})
    assert p["population"] == 16 and p["generations"] == 10 and p["metric"] == "g_mean"
    assert cosen_params({"drw_epoch": None})["holdout"] == 0.1
