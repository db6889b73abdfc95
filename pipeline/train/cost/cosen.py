"""Learned class costs (survey Table 17): CoSen (Khan et al.) and a cost search by differential
evolution (Zhang et al.'s CSDBN-DE, applied to our networks). See ``docs/methods-cost.md``.

Both methods end with a **cost vector** ξ ∈ R^C_{>0} that prediction applies to the softmax outputs

    p'_c = ξ_c · p_c / Σ_k ξ_k · p_k,        pred = argmax_c p'_c = argmax_c ξ_c · p_c

(:func:`cost_scaled_probs`; on logits this is o_c + log ξ_c, the same decision). Only the ratios of
the costs matter; they are saved with the model (``method_state.pt``, ``{"costs": ...}``) and shown
by the report.

**CoSen** (``train.method: cosen``; Khan et al., "Cost-sensitive learning of deep feature
representations from imbalanced data", survey section "Learning cost matrices with cost-sensitive
CNN (CoSen)"). The network weights θ and the costs ξ are learned alternately:

* θ-step (every batch, ξ fixed): Khan's cost-modulated outputs with the row of the true class p,
  y_n = ξ_{p,n} e^{o_n} / Σ_k ξ_{p,k} e^{o_k}, where our matrix is built from the vector as
  ξ_{p,p} = 1 and ξ_{p,q} = ξ_p (q ≠ p), costs normalised to max ξ = 1. On logits this is
  o' = o + log ξ_{p,:}, which equals (softmax is shift invariant) o' = o − log(ξ_p)·e_p: a
  cheap (low-cost) class's own logit gets a bonus −log ξ_p ≥ 0, the costliest class trains with
  plain CE — "giving higher importance to samples with higher cost" (survey). ``train.loss`` is
  applied to o' (with ``ce`` this is exactly Khan's CE variant). Rows of a fixed held-out part of
  the training table (a deterministic hash of the row's input, fraction ``holdout``) are never
  trained on.
* ξ-step (at the start of every ``update_every``-th epoch, θ fixed): one pass over the training
  shard with the current weights collects, on the held-out rows only, the confusion matrix of the
  cost-scaled decision and the deep-feature statistics per class (sums, squared norms, counts:
  O(C·d), all-reduced over workers so every worker computes the same ξ). The target costs are

      log t_c = α_h · log(n_max / n_c) + α_r · (r_c − E) + α_s · log(S_c / mean S),   t ← t / max t

  with n_c the training class sizes (class histogram), r_c = 1 − recall_c the class's held-out
  error, E the overall held-out error, and S_c the class-to-class (C2C) separability ratio
  = RMS distance of the class's features to its centroid / distance to the nearest other class
  centroid (larger: harder). ξ moves toward t by a gradient step on F(ξ) = ½‖t − ξ‖²:
  ξ ← (1 − γ)ξ + γ t, clipped to [min_cost, 1] and renormalised to max 1 (:func:`cosen_update`).

**Cost search** (``train.method: cost_search``; Zhang et al., survey section "Cost-sensitive DBN
with differential evolution (CSDBN-DE)"): train normally, then in :meth:`CostSearchHook.after_fit`
evolve a population of cost vectors by DE/rand/1/bin, scoring each by ``metric`` (default
``g_mean``, the measure Zhang et al. put into the DE objective) of the cost-scaled decision on the
validation split, and save the best. Genes are log10 costs within ``cost_range``; member 0 of
the first population is the all-ones vector (the plain argmax), and DE's one-to-one greedy
selection keeps a trial only when it is at least as good as its parent (ties on the metric, e.g.
G-mean 0 while some class is never right, are broken by the mean recall), so the best score never
decreases. The validation rows never reach the driver: Ray tasks (one per group of row groups)
compute the trained model's softmax outputs once and keep them in the Ray object store, one object
per shard; each generation then runs (shard × population chunk) tasks that return the chunk's
(C × C) confusion matrices, which the driver sums — O(population · C²) memory on the driver.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from pipeline.errors import ConfigError, InputError
from pipeline.train.hooks import METHOD_STATE_FILE, MethodHook, register, save_inference_state

# method_params that the training loop itself reads (allowed beside the method's own keys)
LOOP_KEYS = ("dynamic_sampling", "drw_epoch", "drw_beta")
SEARCH_METRICS = ("g_mean", "macro_f1", "balanced_accuracy", "macro_recall", "accuracy")


# =============================================================================================
# shared: the cost-scaled decision
# =============================================================================================
def cost_scaled_probs(probs: torch.Tensor, costs) -> torch.Tensor:
    """p'_c = ξ_c p_c / Σ_k ξ_k p_k (float64); argmax p' is the cost-sensitive decision."""
    p = probs.double()
    xi = torch.as_tensor(costs, dtype=torch.float64, device=p.device)
    s = p * xi
    return s / s.sum(dim=1, keepdim=True).clamp_min(1e-300)


def _predict_with_costs(state: dict, model, x: torch.Tensor) -> torch.Tensor:
    return cost_scaled_probs(torch.softmax(model(x).float(), dim=1), state["costs"])


# =============================================================================================
# parameter validation
# =============================================================================================
def _number(method: str, key: str, v, lo=None, hi=None, lo_open=False, hi_open=False, integer=False):
    name = f"train.method_params.{key}"
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
    if integer:
        ok = ok and float(v) == int(v)
    if ok and lo is not None:
        ok = float(v) > lo if lo_open else float(v) >= lo
    if ok and hi is not None:
        ok = float(v) < hi if hi_open else float(v) <= hi
    if not ok:
        rng = (("(" if lo_open else "[") + f"{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}"
               + (")" if hi_open or hi is None else "]"))
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"config key '{name}' ({method}): expected {kind} in {rng}, got {v!r}")
    return int(v) if integer else float(v)


def _check_keys(method: str, params: dict, defaults: dict) -> dict:
    if not isinstance(params, dict):
        raise ConfigError(f"config key 'train.method_params' must be a mapping, got {params!r}")
    known = set(defaults) | set(LOOP_KEYS)
    for k in params:
        if k == "category_centers" and params[k]:
            raise ConfigError(f"config key 'train.method_params.category_centers' cannot be combined with "
                              f"train.method={method} (prediction by centroids would ignore the costs)")
        if k not in known and k != "category_centers":
            raise ConfigError(f"unknown config key 'train.method_params.{k}' for train.method={method} "
                              f"(known: {', '.join(sorted(known))})")
    out = dict(defaults)
    out.update({k: v for k, v in params.items() if k in defaults})
    return out


COSEN_DEFAULTS = {"holdout": 0.1, "lr": 0.5, "alpha_hist": 0.5, "alpha_error": 2.0, "alpha_separability": 0.5,
                  "min_cost": 0.01, "update_every": 1, "init": "histogram"}


def cosen_params(params: Optional[dict]) -> dict:
    """CoSen's ``method_params`` with defaults; ConfigError naming the key on a bad one."""
    m = "cosen"
    p = _check_keys(m, params or {}, COSEN_DEFAULTS)
    p["holdout"] = _number(m, "holdout", p["holdout"], 0, 0.5, lo_open=True)
    p["lr"] = _number(m, "lr", p["lr"], 0, 1, lo_open=True)
    for k in ("alpha_hist", "alpha_error", "alpha_separability"):
        p[k] = _number(m, k, p[k], 0)
    p["min_cost"] = _number(m, "min_cost", p["min_cost"], 0, 1, lo_open=True, hi_open=True)
    p["update_every"] = _number(m, "update_every", p["update_every"], 1, integer=True)
    if p["init"] not in ("histogram", "ones"):
        raise ConfigError(f"config key 'train.method_params.init' (cosen): expected histogram or ones, "
                          f"got {p['init']!r}")
    return p


SEARCH_DEFAULTS = {"population": 16, "generations": 10, "F": 0.5, "CR": 0.9, "metric": "g_mean",
                   "cost_range": [0.01, 100.0], "seed": None, "shards": None, "pop_chunks": None,
                   "gpus_per_task": None, "batch_size": 4096}


def search_params(params: Optional[dict]) -> dict:
    """cost_search's ``method_params`` with defaults; ConfigError naming the key on a bad one."""
    m = "cost_search"
    p = _check_keys(m, params or {}, SEARCH_DEFAULTS)
    p["population"] = _number(m, "population", p["population"], 4, integer=True)
    p["generations"] = _number(m, "generations", p["generations"], 0, integer=True)
    p["F"] = _number(m, "F", p["F"], 0, 2, lo_open=True)
    p["CR"] = _number(m, "CR", p["CR"], 0, 1)
    if p["metric"] not in SEARCH_METRICS:
        raise ConfigError(f"config key 'train.method_params.metric' (cost_search): expected one of "
                          f"{', '.join(SEARCH_METRICS)}, got {p['metric']!r}")
    cr = p["cost_range"]
    if (not isinstance(cr, (list, tuple)) or len(cr) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                              for v in cr) or not 0 < cr[0] < cr[1] < math.inf):
        raise ConfigError(f"config key 'train.method_params.cost_range' (cost_search): expected [low, high] with "
                          f"0 < low < high, got {cr!r}")
    p["cost_range"] = [float(cr[0]), float(cr[1])]
    for k in ("seed", "shards", "pop_chunks"):
        if p[k] is not None:
            p[k] = _number(m, k, p[k], 0 if k == "seed" else 1, integer=True)
    if p["gpus_per_task"] is not None:
        p["gpus_per_task"] = _number(m, "gpus_per_task", p["gpus_per_task"], 0, 1)
    p["batch_size"] = _number(m, "batch_size", p["batch_size"], 1, integer=True)
    return p


# =============================================================================================
# CoSen: pure parts
# =============================================================================================
def cosen_logits(logits: torch.Tensor, y: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Khan's modulation with the true class's row: o'_q = o_q + log ξ_{y,q}, ξ_{y,y} = 1 and
    ξ_{y,q} = ξ_y (q ≠ y) — written in its shift-equivalent form o' = o − log(ξ_y)·e_y."""
    bonus = -torch.log(costs.to(logits.device, logits.dtype))[y]
    return logits.scatter_add(1, y.view(-1, 1), bonus.view(-1, 1))


def histogram_costs(class_counts: Sequence[float], alpha_hist: float, min_cost: float) -> np.ndarray:
    """Initial CoSen costs from the class histogram alone: (n_max / n_c)^α_h, max 1."""
    n = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    t = np.exp(alpha_hist * np.log(n.max() / n))
    return _normalise(t, min_cost)


def _normalise(xi: np.ndarray, min_cost: float) -> np.ndarray:
    xi = np.asarray(xi, dtype=np.float64)
    xi = xi / xi.max()
    xi = np.clip(xi, min_cost, 1.0)
    return xi / xi.max()


def class_separability(feature_sums: np.ndarray, sq_norm_sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """C2C separability ratio per class (NaN for a class without rows, or when only one class has
    rows): RMS distance of the class's features to its centroid / distance from its centroid to
    the nearest other class centroid. Larger means less separable."""
    fs = np.asarray(feature_sums, dtype=np.float64)
    sq = np.asarray(sq_norm_sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    out = np.full(len(n), np.nan)
    present = n > 0
    if present.sum() < 2:
        return out
    mu = fs[present] / n[present, None]
    within = np.sqrt(np.maximum(sq[present] / n[present] - (mu ** 2).sum(axis=1), 0.0))
    d = np.sqrt(np.maximum(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1), 0.0))
    np.fill_diagonal(d, np.inf)
    out[present] = within / np.maximum(d.min(axis=1), 1e-12)
    return out


def cosen_target(class_counts: Sequence[float], confusion: np.ndarray, separability: np.ndarray,
                 alpha_hist: float, alpha_error: float, alpha_separability: float) -> np.ndarray:
    """Target costs t (max 1) from the class histogram, the held-out confusion and the separability.

    log t_c = α_h log(n_max/n_c) + α_r (r_c − E) + α_s log(S_c / mean S). A class absent from the
    held-out part gets r_c = E and S_c = mean S (only its histogram term counts).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(axis=1)
    total = cm.sum()
    err = 1.0 - np.trace(cm) / total if total > 0 else 0.0
    r = np.where(support > 0, 1.0 - np.diag(cm) / np.maximum(support, 1), err)
    s = np.asarray(separability, dtype=np.float64).copy()
    ok = np.isfinite(s) & (s > 0)
    s_rel = np.ones_like(s)
    if ok.any():
        s_rel[ok] = s[ok] / s[ok].mean()
    n = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    log_t = alpha_hist * np.log(n.max() / n) + alpha_error * (r - err) + alpha_separability * np.log(s_rel)
    return np.exp(log_t - log_t.max())


def cosen_update(costs: np.ndarray, target: np.ndarray, lr: float, min_cost: float) -> np.ndarray:
    """One gradient step on F(ξ) = ½‖t − ξ‖²: ξ ← ξ − γ(ξ − t), clipped to [min_cost, 1], max 1."""
    xi = np.asarray(costs, dtype=np.float64)
    return _normalise(xi - lr * (xi - np.asarray(target, dtype=np.float64)), min_cost)


_HASH_W: dict = {}


def holdout_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A fixed held-out part of the training rows: a deterministic hash of each row's input,
    u = frac(x · w) with w a constant random vector, held out when u < fraction. Equal rows
    (e.g. ROS copies) are held out together; batched on the rows' device."""
    flat = x.reshape(len(x), -1)
    dtype = torch.float32 if flat.device.type == "mps" else torch.float64
    key = (flat.shape[1], str(flat.device), dtype)
    w = _HASH_W.get(key)
    if w is None:
        g = torch.Generator().manual_seed(0x5EED)
        w = _HASH_W[key] = (torch.randn(flat.shape[1], generator=g, dtype=torch.float64) * 3.0 + 0.1).to(
            flat.device, dtype)
    u = torch.remainder(flat.to(dtype) @ w, 1.0)
    return u < fraction


# =============================================================================================
# CoSen: the hook
# =============================================================================================
@register
class CoSenHook(MethodHook):
    """CoSen (Khan et al.): class costs learned jointly with the weights, alternating the two."""

    name = "cosen"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        self.p = cosen_params(params)
        counts = np.asarray(class_counts if class_counts is not None else np.ones(n_classes), dtype=np.float64)
        self.counts = counts
        self.costs = (histogram_costs(counts, self.p["alpha_hist"], self.p["min_cost"])
                      if self.p["init"] == "histogram" else np.ones(self.n_classes))
        self.updates: list[dict] = []      # one entry per ξ-step (small: C numbers each)
        self.last_update_epoch = -1
        self._xi_t: Optional[torch.Tensor] = None

    # ---- θ-step
    def _xi(self, device) -> torch.Tensor:
        if self._xi_t is None or self._xi_t.device != torch.device(device):
            self._xi_t = torch.as_tensor(self.costs, dtype=torch.float32, device=device)
        return self._xi_t

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits = model(x)
        logits = logits.float()
        keep = ~holdout_mask(x, self.p["holdout"])
        if not bool(keep.any()):
            return logits.sum() * 0.0       # every row is held out: no gradient, DDP still in step
        return loss_fn(cosen_logits(logits[keep], y[keep], self._xi(logits.device)), y[keep])

    # ---- ξ-step
    def start_epoch(self, ctx):
        if ctx.epoch < 1 or ctx.epoch % self.p["update_every"] or self.last_update_epoch >= ctx.epoch:
            return
        stats = self.holdout_statistics(ctx)
        c, d = self.n_classes, self.feature_dim
        stats = ctx.all_reduce(stats).double().cpu().numpy()
        cm = stats[:c * c].reshape(c, c)
        fsum = stats[c * c:c * c + c * d].reshape(c, d)
        sq = stats[c * c + c * d:c * c + c * d + c]
        cnt = stats[c * c + c * d + c:]
        sep = class_separability(fsum, sq, cnt)
        target = cosen_target(self.counts, cm, sep, self.p["alpha_hist"], self.p["alpha_error"],
                              self.p["alpha_separability"])
        self.costs = cosen_update(self.costs, target, self.p["lr"], self.p["min_cost"])
        self._xi_t = None
        m_err = 1.0 - np.trace(cm) / cm.sum() if cm.sum() else None
        self.updates.append({"epoch": int(ctx.epoch), "costs": self.costs.tolist(), "holdout_rows": int(cm.sum()),
                             "holdout_error": m_err,
                             "class_error": [None if s == 0 else float(1 - cm[i, i] / s)
                                             for i, s in enumerate(cm.sum(axis=1))]})
        self.last_update_epoch = int(ctx.epoch)

    @torch.no_grad()
    def holdout_statistics(self, ctx) -> torch.Tensor:
        """This worker's held-out confusion (cost-scaled decision), per-class feature sums, squared
        norms and counts, packed in one float64 CPU tensor (to be all-reduced)."""
        model = ctx.model
        was = model.training
        model.eval()
        c, d = self.n_classes, self.feature_dim
        dev = ctx.device
        acc_t = torch.float32 if dev.type == "mps" else torch.float64
        cm = torch.zeros(c * c, dtype=torch.int64, device=dev)
        fsum = torch.zeros(c, d, dtype=acc_t, device=dev)
        sq = torch.zeros(c, dtype=acc_t, device=dev)
        cnt = torch.zeros(c, dtype=acc_t, device=dev)
        xi = self._xi(dev)
        for x, y in ctx.table_once():
            mask = holdout_mask(x, self.p["holdout"])
            if not bool(mask.any()):
                continue
            xh, yh = x[mask], y.to(dev)[mask]
            with ctx.autocast:
                logits, feats = model(xh, return_features=True)
            pred = (torch.softmax(logits.float(), dim=1) * xi).argmax(dim=1)
            cm += torch.bincount(yh * c + pred, minlength=c * c)
            f = feats.to(acc_t)
            fsum.index_add_(0, yh, f)
            sq.index_add_(0, yh, (f * f).sum(dim=1))
            cnt.index_add_(0, yh, torch.ones(len(yh), dtype=acc_t, device=dev))
        model.train(was)
        return torch.cat([cm.double().cpu(), fsum.double().cpu().reshape(-1), sq.double().cpu(),
                          cnt.double().cpu()])

    # ---- state
    def state_dict(self):
        return {"costs": self.costs.tolist(), "updates": list(self.updates),
                "last_update_epoch": self.last_update_epoch}

    def load_state_dict(self, state):
        self.costs = np.asarray(state["costs"], dtype=np.float64)
        self.updates = list(state.get("updates", []))
        self.last_update_epoch = int(state.get("last_update_epoch", -1))
        self._xi_t = None

    def inference_state(self):
        return {"costs": torch.tensor(self.costs, dtype=torch.float64), "method": "cosen",
                "updates": list(self.updates), "params": dict(self.p)}

    @staticmethod
    def predict(state, model, x):
        return _predict_with_costs(state, model, x)


# =============================================================================================
# Differential evolution (DE/rand/1/bin): pure parts
# =============================================================================================
def de_trials(pop: np.ndarray, rng: np.random.Generator, F: float, CR: float, lo: float, hi: float) -> np.ndarray:
    """One DE/rand/1/bin trial per member: v = x_r1 + F (x_r2 − x_r3) with r1, r2, r3 distinct and
    ≠ i, clipped to [lo, hi]; binomial crossover with rate CR and one forced gene j_rand."""
    n, d = pop.shape
    trials = np.empty_like(pop)
    for i in range(n):
        r1, r2, r3 = rng.choice([j for j in range(n) if j != i], size=3, replace=False)
        v = np.clip(pop[r1] + F * (pop[r2] - pop[r3]), lo, hi)
        cross = rng.random(d) < CR
        cross[rng.integers(d)] = True
        trials[i] = np.where(cross, v, pop[i])
    return trials


def _at_least(t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic t ≥ f for (P, k) score arrays (column 0 first, ties by the next)."""
    ge = np.ones(len(t), dtype=bool)
    decided = np.zeros(len(t), dtype=bool)
    for j in range(t.shape[1]):
        gt, lt = t[:, j] > f[:, j], t[:, j] < f[:, j]
        ge = np.where(~decided & lt, False, ge)
        decided |= gt | lt
    return ge


def _best_index(fit: np.ndarray) -> int:
    return int(np.lexsort(fit.T[::-1])[-1]) if fit.shape[1] > 1 else int(np.argmax(fit[:, 0]))


def differential_evolution(score: Callable[[np.ndarray], np.ndarray], dim: int, population: int, generations: int,
                           F: float, CR: float, lo: float, hi: float, seed: int,
                           init: Optional[np.ndarray] = None) -> dict:
    """Maximise ``score`` by DE/rand/1/bin. ``score`` maps a whole population (P, dim) to (P,)
    scores, or to (P, k) scores compared lexicographically (column 0 is the objective, the others
    break its ties).

    The initial population is uniform in [lo, hi] with the rows of ``init`` placed first. A trial
    replaces its parent when it scores at least as well (greedy one-to-one selection), so the best
    score is non-decreasing. Returns ``{"best", "best_score", "history": [{generation, best,
    mean}], "population", "scores"}`` (history and best_score on column 0).
    """
    def run(pop):
        f = np.asarray(score(pop), dtype=np.float64)
        return f.reshape(len(pop), -1)

    rng = np.random.default_rng(seed)
    pop = rng.uniform(lo, hi, size=(population, dim))
    if init is not None:
        init = np.atleast_2d(np.asarray(init, dtype=np.float64))
        pop[:len(init)] = np.clip(init, lo, hi)
    fit = run(pop)

    def entry(g):
        b = _best_index(fit)
        return {"generation": g, "best": float(fit[b, 0]), "mean": float(fit[:, 0].mean()),
                "best_tiebreak": [float(v) for v in fit[b, 1:]]}

    history = [entry(0)]
    for g in range(1, generations + 1):
        trials = de_trials(pop, rng, F, CR, lo, hi)
        tfit = run(trials)
        better = _at_least(tfit, fit)
        pop[better], fit[better] = trials[better], tfit[better]
        history.append(entry(g))
    b = _best_index(fit)
    return {"best": pop[b].copy(), "best_score": float(fit[b, 0]), "history": history, "population": pop,
            "scores": fit}


def pick_costs(res: dict, baseline_scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """(costs, improved): the DE result's best vector 10^g when it scores strictly better
    (lexicographically) than the unit costs' ``baseline_scores``, else the unit costs."""
    b = _best_index(res["scores"])
    base = np.asarray(baseline_scores, dtype=np.float64).reshape(1, -1)
    improved = bool(not _at_least(base, res["scores"][b][None])[0])
    return (10.0 ** res["best"] if improved else np.ones(len(res["best"]))), improved


def confusions_numpy(probs: np.ndarray, labels: np.ndarray, costs: np.ndarray, n_classes: int) -> np.ndarray:
    """Reference: (P, C, C) confusion matrices of argmax(ξ_p · probs) for each cost vector ξ_p."""
    out = np.zeros((len(costs), n_classes, n_classes), dtype=np.int64)
    for k, xi in enumerate(np.asarray(costs, dtype=np.float64)):
        pred = np.argmax(probs.astype(np.float64) * xi, axis=1)
        np.add.at(out[k], (labels, pred), 1)
    return out


# =============================================================================================
# Cost search on Ray: validation softmax per shard (object store), confusions per generation
# =============================================================================================
def _task_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_shard(model_dir: str, val_path: str, pieces: list, info_d: dict, batch_size: int):
    """(meta, (probs float32 (n, C), labels int64 (n,))) for the given row groups of ``val_path``:
    the trained model's softmax outputs, batched on the task's device."""
    import pyarrow.parquet as pq
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    from pipeline.data.schema import DatasetInfo
    from pipeline.io import file_url
    from pipeline.stream.readers import decode_columns, to_float
    from pipeline.train.trainer import load_model

    dev = _task_device()
    model, meta = load_model(model_dir, device=dev)
    info = DatasetInfo(**info_d)
    fs, _ = get_filesystem_and_path_or_paths(file_url(val_path))
    probs, labels = [], []
    open_path, handle, pf = None, None, None
    try:
        with torch.no_grad():
            for path, rg in pieces:
                if path != open_path:
                    if handle is not None:
                        handle.close()
                    handle = fs.open(path)
                    pf, open_path = pq.ParquetFile(handle), path
                t = pf.read_row_group(rg, columns=[info.feature_col, info.label_col])
                x, y, _ = decode_columns({info.feature_col: t.column(info.feature_col),
                                          info.label_col: t.column(info.label_col)}, info)
                for s in range(0, len(y), batch_size):
                    xb = to_float(x[s:s + batch_size], dev)
                    probs.append(torch.softmax(model(xb).float(), dim=1).cpu().numpy())
                labels.append(y.numpy())
    finally:
        if handle is not None:
            handle.close()
    c = int(meta["n_classes"])
    p = np.concatenate(probs) if probs else np.zeros((0, c), np.float32)
    lab = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    return {"rows": int(len(lab)), "class_counts": np.bincount(lab, minlength=c).tolist()}, (p, lab)


def shard_confusions(data, costs: np.ndarray, n_classes: int) -> np.ndarray:
    """(P, C, C) confusions of argmax(ξ_p · probs) over one shard, batched on the task's device."""
    probs, labels = data
    dev = _task_device()
    c = int(n_classes)
    xi = torch.tensor(np.asarray(costs, dtype=np.float64), device=dev)
    pn = len(xi)
    cm = torch.zeros(pn * c * c, dtype=torch.int64, device=dev)
    if len(labels):
        step = max(1, (1 << 22) // max(1, pn * c))
        offs = (torch.arange(pn, device=dev) * c * c).view(pn, 1)
        for s in range(0, len(labels), step):
            p = torch.tensor(probs[s:s + step], device=dev).double()
            y = torch.tensor(labels[s:s + step], device=dev)
            pred = (p.unsqueeze(0) * xi.unsqueeze(1)).argmax(dim=2)          # (P, b)
            cm += torch.bincount((offs + y.view(1, -1) * c + pred).reshape(-1), minlength=pn * c * c)
    return cm.view(pn, c, c).cpu().numpy()


def val_shards(val_path: str, n_shards: Optional[int], cpus: float) -> list[list]:
    """The validation table's row groups (Petastorm's order, footers only), dealt round-robin into
    ``n_shards`` groups (default: 2 per cluster CPU, at most one per row group)."""
    from pipeline.io import file_url
    from pipeline.stream.readers import _mtime, _row_group_index

    index = list(_row_group_index(file_url(val_path), _mtime(val_path)))
    if not index:
        raise InputError(f"validation table {val_path} has no row groups")
    k = n_shards if n_shards is not None else max(1, int(2 * cpus))
    k = min(k, len(index))
    return [index[i::k] for i in range(k)]


class ValidationScores:
    """The trained model's validation softmax outputs, one Ray object per shard (never on the
    driver), and the population confusions computed from them by Ray tasks."""

    def __init__(self, model_dir: str, val_path: str, n_classes: int, shards: Optional[int] = None,
                 gpus_per_task: Optional[float] = None, batch_size: int = 4096):
        import ray

        from pipeline.data.schema import read_info

        info = read_info(val_path)
        if info.n_classes != n_classes:
            raise InputError(f"validation table {val_path} has {info.n_classes} classes, the model {n_classes}")
        res = ray.cluster_resources()
        self.n_classes = int(n_classes)
        self.cpus = float(res.get("CPU", 1))
        gpus = gpus_per_task if gpus_per_task is not None else (0.25 if res.get("GPU", 0) > 0 else 0.0)
        self.opts = {"num_cpus": 1}
        if gpus > 0:
            self.opts["num_gpus"] = gpus
        score = ray.remote(score_shard)
        self._conf = ray.remote(shard_confusions)
        metas, self.data = [], []
        for pieces in val_shards(val_path, shards, self.cpus):
            m, d = score.options(num_returns=2, **self.opts).remote(str(model_dir), str(val_path), pieces,
                                                                    info.to_dict(), int(batch_size))
            metas.append(m)
            self.data.append(d)
        self.metas = ray.get(metas)           # rows and class counts per shard: O(shards · C)
        self.rows = int(sum(m["rows"] for m in self.metas))

    def confusions(self, costs: np.ndarray, chunks: Optional[int] = None) -> np.ndarray:
        """(P, C, C) confusion matrices of the cost vectors over the whole validation table: one
        task per (shard, population chunk), summed on the driver as they finish."""
        import ray

        costs = np.atleast_2d(np.asarray(costs, dtype=np.float64))
        n = len(costs)
        k = chunks if chunks is not None else max(1, min(n, int(self.cpus) // max(1, len(self.data))))
        parts = [np.arange(n)[i::k] for i in range(min(k, n))]
        refs = {}
        for j, idx in enumerate(parts):
            for d in self.data:
                refs[self._conf.options(**self.opts).remote(d, costs[idx], self.n_classes)] = j
        out = np.zeros((n, self.n_classes, self.n_classes), dtype=np.int64)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            out[parts[refs[done[0]]]] += ray.get(done[0])
        return out

    def release(self) -> None:
        self.data = []


def _metric(cm: np.ndarray, metric: str) -> float:
    from pipeline.train.loop import metrics_from_confusion

    return float(metrics_from_confusion(cm)[metric])


def cost_search(model_dir: str, val_path: str, n_classes: int, params: dict, seed: int) -> dict:
    """Run the DE cost search for a trained model on the validation table; returns the state to save."""
    import time

    t0 = time.perf_counter()
    vs = ValidationScores(model_dir, val_path, n_classes, params["shards"], params["gpus_per_task"],
                          params["batch_size"])
    lo, hi = (math.log10(v) for v in params["cost_range"])
    calls = {"n": 0}

    def score(genes: np.ndarray) -> np.ndarray:
        calls["n"] += len(genes)
        cms = vs.confusions(10.0 ** genes, params["pop_chunks"])
        # ties on the metric (G-mean is 0 while any class is never right) go to the mean recall
        return np.array([[_metric(cm, params["metric"]), _metric(cm, "macro_recall")] for cm in cms])

    ones = np.zeros((1, n_classes))
    res = differential_evolution(score, n_classes, params["population"], params["generations"], params["F"],
                                 params["CR"], lo, hi, seed, init=ones)
    base = score(ones)[0]
    vs.release()
    costs, improved = pick_costs(res, base)
    costs = costs / np.exp(np.mean(np.log(costs)))     # geometric mean 1 (only ratios matter)
    return {"costs": torch.tensor(costs, dtype=torch.float64), "method": "cost_search",
            "metric": params["metric"], "score": res["best_score"] if improved else float(base[0]),
            "baseline_score": float(base[0]), "improved": bool(improved),
            "history": res["history"], "val_rows": vs.rows, "evaluations": calls["n"],
            "seconds": round(time.perf_counter() - t0, 3),
            "params": {k: params[k] for k in ("population", "generations", "F", "CR", "cost_range")}, "seed": seed}


@register
class CostSearchHook(MethodHook):
    """CSDBN-DE on our networks: plain training, then a DE search of the output costs on validation."""

    name = "cost_search"
    needs_validation = True

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        self.p = search_params(params)

    def inference_state(self):
        # Until after_fit has searched, the model predicts with unit costs (the plain argmax).
        return {"costs": torch.ones(self.n_classes, dtype=torch.float64), "method": "cost_search",
                "searched": False}

    @classmethod
    def after_fit(cls, model_dir, cfg, val_path):
        from pipeline.engines import get_ray
        from pipeline.io import read_json

        p = search_params(cfg.train.method_params)
        if not val_path:
            raise InputError("train.method=cost_search needs a validation table (train.val_path, or the split's "
                             "val part) to score its cost vectors on")
        seed = p["seed"] if p["seed"] is not None else (cfg.train.seed if cfg.train.seed is not None
                                                        else cfg.run.seed)
        get_ray(cfg.ray)
        n_classes = int(read_json(Path(model_dir) / "model.json")["n_classes"])
        state = cost_search(str(model_dir), str(val_path), n_classes, p, int(seed))
        state["searched"] = True
        with tempfile.TemporaryDirectory(prefix=".cost-search-", dir=str(Path(model_dir).parent)) as tmp:
            save_inference_state(tmp, cls.name, state)
            os.replace(Path(tmp) / METHOD_STATE_FILE, Path(model_dir) / METHOD_STATE_FILE)

    @staticmethod
    def predict(state, model, x):
        return _predict_with_costs(state, model, x)


__all__ = ["CoSenHook", "CostSearchHook", "cost_scaled_probs", "cosen_logits", "cosen_target", "cosen_update",
           "class_separability", "histogram_costs", "holdout_mask", "cosen_params", "search_params",
           "differential_evolution", "de_trials", "confusions_numpy", "shard_confusions", "score_shard",
           "ValidationScores", "cost_search", "val_shards"]
