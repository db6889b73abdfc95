"""**CoSen** (``train.method: cosen``; Khan et al., "Cost-sensitive learning of deep feature
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

The searched costs of ``train.method: cost_search`` live in :mod:`pipeline.train.cost.search`.

References:

* S. H. Khan, M. Hayat, M. Bennamoun, F. A. Sohel, R. Togneri, "Cost-Sensitive Learning of Deep Feature
  Representations From Imbalanced Data", IEEE TNNLS 29(8) (2018), https://doi.org/10.1109/TNNLS.2017.2732482
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.train.cost.costs import check_keys, check_number, predict_with_costs
from pipeline.train.hook_base import MethodHook, register

COSEN_DEFAULTS = {"holdout": 0.1, "lr": 0.5, "alpha_hist": 0.5, "alpha_error": 2.0, "alpha_separability": 0.5,
                  "min_cost": 0.01, "update_every": 1, "init": "histogram"}


def cosen_params(params: Optional[dict]) -> dict:
    """CoSen's ``method_params`` with defaults; ConfigError naming the key on a bad one."""
    m = "cosen"
    p = check_keys(m, params or {}, COSEN_DEFAULTS)
    p["holdout"] = check_number(m, "holdout", p["holdout"], 0, 0.5, lo_open=True)
    p["lr"] = check_number(m, "lr", p["lr"], 0, 1, lo_open=True)
    for k in ("alpha_hist", "alpha_error", "alpha_separability"):
        p[k] = check_number(m, k, p[k], 0)
    p["min_cost"] = check_number(m, "min_cost", p["min_cost"], 0, 1, lo_open=True, hi_open=True)
    p["update_every"] = check_number(m, "update_every", p["update_every"], 1, integer=True)
    if p["init"] not in ("histogram", "ones"):
        raise ConfigError(f"config key 'train.method_params.init' (cosen): expected histogram or ones, "
                          f"got {p['init']!r}")
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
        return predict_with_costs(state, model, x)


