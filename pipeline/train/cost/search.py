"""**Cost search** (``train.method: cost_search``; Zhang et al., survey section "Cost-sensitive DBN
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

References:

* C. Zhang, K. C. Tan, H. Li, G. S. Hong, "A Cost-Sensitive Deep Belief Network for Imbalanced
  Classification", IEEE TNNLS 30(1) (2019), https://doi.org/10.1109/TNNLS.2018.2832648
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.data.schema import DatasetInfo, read_info
from pipeline.errors import ConfigError, InputError
from pipeline.io import file_url, read_json
from pipeline.train.cost.costs import SEARCH_METRICS, check_keys, check_number, predict_with_costs
from pipeline.train.hook_base import METHOD_STATE_FILE, METHOD_SUMMARY_FILE, MethodHook, register, save_inference_state

SEARCH_DEFAULTS = {"population": 16, "generations": 10, "F": 0.5, "CR": 0.9, "metric": "g_mean",
                   "cost_range": [0.01, 100.0], "seed": None, "shards": None, "pop_chunks": None,
                   "gpus_per_task": None, "batch_size": 4096}


def search_params(params: Optional[dict]) -> dict:
    """cost_search's ``method_params`` with defaults; ConfigError naming the key on a bad one."""
    m = "cost_search"
    p = check_keys(m, params or {}, SEARCH_DEFAULTS)
    p["population"] = check_number(m, "population", p["population"], 4, integer=True)
    p["generations"] = check_number(m, "generations", p["generations"], 0, integer=True)
    p["F"] = check_number(m, "F", p["F"], 0, 2, lo_open=True)
    p["CR"] = check_number(m, "CR", p["CR"], 0, 1)
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
            p[k] = check_number(m, k, p[k], 0 if k == "seed" else 1, integer=True)
    if p["gpus_per_task"] is not None:
        p["gpus_per_task"] = check_number(m, "gpus_per_task", p["gpus_per_task"], 0, 1)
    p["batch_size"] = check_number(m, "batch_size", p["batch_size"], 1, integer=True)
    return p


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


def differential_evolution(score: Callable[[np.ndarray], np.ndarray], dim: int, *, population: int, generations: int,
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
    # deferred: petastorm and pyarrow are slow to import
    import pyarrow.parquet as pq
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    # deferred: torch is slow to import
    from pipeline.stream.readers import decode_columns, to_float
    from pipeline.train.saved_model import load_model

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
    # deferred: torch is slow to import
    from pipeline.stream.readers import file_mtime, row_group_index

    index = list(row_group_index(file_url(val_path), file_mtime(val_path)))
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
        # deferred: ray is slow to import
        import ray

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
        # deferred: ray is slow to import
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
    # deferred: torch is slow to import
    from pipeline.train.confusion import metrics_from_confusion

    return float(metrics_from_confusion(cm)[metric])


def cost_search(model_dir: str, val_path: str, n_classes: int, params: dict, seed: int) -> dict:
    """Run the DE cost search for a trained model on the validation table; returns the state to save."""
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
    res = differential_evolution(score, n_classes, population=params["population"],
                                 generations=params["generations"], F=params["F"], CR=params["CR"], lo=lo, hi=hi,
                                 seed=seed, init=ones)
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
        p = search_params(cfg.train.method_params)
        if not val_path:
            raise InputError("train.method=cost_search needs a validation table (train.val_path, or the split's "
                             "val part) to score its cost vectors on")
        seed = p["seed"] if p["seed"] is not None else (cfg.train.seed if cfg.train.seed is not None
                                                        else cfg.run.seed)
        n_classes = int(read_json(Path(model_dir) / "model.json")["n_classes"])
        state = cost_search(str(model_dir), str(val_path), n_classes, p, int(seed))
        state["searched"] = True
        with tempfile.TemporaryDirectory(prefix=".cost-search-", dir=str(Path(model_dir).parent)) as tmp:
            save_inference_state(tmp, cls.name, state)
            for name in (METHOD_SUMMARY_FILE, METHOD_STATE_FILE):   # the .pt last: prediction keys on it
                os.replace(Path(tmp) / name, Path(model_dir) / name)

    @staticmethod
    def predict(state, model, x):
        return predict_with_costs(state, model, x)


