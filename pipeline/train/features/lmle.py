"""Deep-feature hybrid methods of the survey (issue 8 items 3–6): LMLE, DOS and CRL.

Each is a :class:`pipeline.train.hooks.MethodHook` selected by ``train.method`` with its parameters
in ``train.method_params`` (see ``docs/methods-feature.md`` for the formulas, defaults and the
assumptions made where the papers are silent).

* **LMLE** — Large Margin Local Embedding (Huang, Li, Loy & Tang, CVPR 2016; survey "Large Margin
  Local Embedding (LMLE)"), ``train.method: lmle``. Per-class k-means clusters in the (L2-normalised)
  deep-feature space, re-clustered every ``recluster_every`` epochs; for every anchor of a batch a
  *quintuplet* (anchor; farthest same-cluster positive p+; nearest same-class other-cluster p−;
  farthest same-class p−−; nearest other-class negative n) and the *triple-header hinge loss*

      L_th = max(0, g1 + D(a,p+) − D(a,p−)) + max(0, g2 + D(a,p−) − D(a,p−−)) + max(0, g3 + D(a,p−−) − D(a,n)),

  D = squared Euclidean distance of unit-norm features; L = loss_fn(logits, y) + λ · mean_c mean_{a∈c} L_th.
  Prediction: the cluster-wise kNN rule over the saved cluster centres (:func:`lmle_knn_scores`).

* **DOS** — Deep Over-Sampling (Ando & Huang, ECML-PKDD 2017; survey "Deep over-sampling (DOS)"),
  ``train.method: dos``. Each row of class c gets its k_c nearest in-class neighbours v_1..v_k in
  deep-feature space (from a per-class feature bank refreshed every epoch) as targets:

      L = loss_fn(g(f(x)), y) + λ_f · (1/n) Σ_i Σ_j ‖f(x_i) − v_ij‖² / d + λ_g · (1/n) Σ_i Σ_j CE(g(v_ij), y_i),

  the micro-cluster loss (pulls f(x_i) toward its neighbours' local mean) plus the classifier g's
  cross-entropy on the neighbours' features (the over-sampling in feature space).

* **CRL** — Class Rectification Loss with hard-sample mining (Dong, Gong & Zhu, ICCV 2017; survey
  "Class rectification loss (CRL) and hard sample mining", Eq. 17), ``train.method: crl``. In each
  batch the minority classes are the smallest classes whose total count is at most half the batch;
  class-level and/or instance-level hard positives/negatives of every minority anchor form triplets

      L_crl = mean_T max(0, m + d(a,p) − d(a,n)),   L = α L_crl + (1 − α) loss_fn,   α = min(1, η Ω_imb),

  with Ω_imb = ½ Σ_c |n_c/n − 1/C_b| (the total-variation distance of the batch's class mix from
  uniform over its C_b classes: the least fraction of the batch that must change class for a
  uniform batch).

Scale (item 6): all feature-space state (banks, centres) is O(classes × bank_size × d), built by a
streaming pass over this worker's shard (``ctx.table_once()``) with a bottom-k random-key sample per
class, merged across DDP workers by one all-reduce so that every worker holds the same bank; the
neighbour and quintuplet searches run with ``torch.cdist`` on the model's device, a chunk of batch
rows × the bank at a time — never all pairs over the data set.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.train.hooks import EpochContext, MethodHook, register, save_inference_state

# method_params keys read by the loop / pipeline itself (not by these hooks): allowed beside ours
SHARED_KEYS = {"dynamic_sampling", "category_centers", "centroid_metric", "centroid_temperature", "drw_epoch",
               "drw_beta", "pretrain", "pretrain_epochs"}
CHUNK = 1024  # anchors per distance block


# ------------------------------------------------------------------ parameter checking
def _int(lo: int) -> Callable[[str, Any], int]:
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"config key 'train.method_params.{key}': expected an integer >= {lo}, got {v!r}")
        return int(v)
    return check


def _num(lo: float, strict: bool = False, hi: Optional[float] = None) -> Callable[[str, Any], float]:
    def check(key, v):
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > lo if strict else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(f"config key 'train.method_params.{key}': expected a number {rng}, got {v!r}")
        return float(v)
    return check


def _choice(*opts: str) -> Callable[[str, Any], str]:
    def check(key, v):
        if v not in opts:
            raise ConfigError(f"config key 'train.method_params.{key}': expected one of {', '.join(opts)}, got {v!r}")
        return v
    return check


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"config key 'train.method_params.{key}': expected true/false, got {v!r}")
    return v


def _margins(key, v):
    if (not isinstance(v, (list, tuple)) or len(v) != 3
            or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0
                   for g in v)):
        raise ConfigError(f"config key 'train.method_params.{key}': expected a list of 3 numbers >= 0 "
                          f"[g1, g2, g3], got {v!r}")
    return [float(g) for g in v]


def _k_spec(n_classes: int) -> Callable[[str, Any], Any]:
    def check(key, v):
        if v is None:
            return None
        if isinstance(v, list):
            if len(v) != n_classes or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in v):
                raise ConfigError(f"config key 'train.method_params.{key}': expected an integer >= 0 or a list of "
                                  f"{n_classes} integers >= 0 (one per class), got {v!r}")
            return [int(k) for k in v]
        return _int(0)(key, v)
    return check


def check_params(method: str, params: Optional[dict], spec: dict) -> dict:
    """``params`` with defaults filled in; an unknown key or a bad value raises :class:`ConfigError`
    naming ``train.method_params.<key>``."""
    params = dict(params or {})
    for k in params:
        if k not in spec and k not in SHARED_KEYS:
            raise ConfigError(f"unknown config key 'train.method_params.{k}' for train.method={method} "
                              f"(known: {', '.join(sorted(spec))})")
    return {k: (check(k, params[k]) if k in params else default) for k, (default, check) in spec.items()}


# ------------------------------------------------------------------ shared pieces
_PROJ: dict = {}


def row_fingerprint(x: torch.Tensor) -> torch.Tensor:
    """One float64 per row: a fixed random projection of the input (identifies a row — and its
    over-sampled copies — in a feature bank without row ids, so a row is never its own neighbour)."""
    flat = x.reshape(len(x), -1).double()
    d = flat.shape[1]
    if d not in _PROJ:
        g = torch.Generator().manual_seed(20161)
        _PROJ[d] = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    return flat @ _PROJ[d].to(flat.device)


def same_rows(fp_a: torch.Tensor, fp_b: torch.Tensor) -> torch.Tensor:
    """(n, m) bool: row i of a and row j of b have the same fingerprint (to 1e-9 relative)."""
    a, b = fp_a.double()[:, None], fp_b.double().to(fp_a.device)[None, :]
    return (a - b).abs() <= 1e-9 * (a.abs() + b.abs() + 1.0)


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, m), via ``torch.cdist`` on the tensors' device."""
    return torch.cdist(a.float(), b.float()).pow(2)


class FeatureBank:
    """Per-class uniform sample of at most ``size`` deep features (bottom-k by a random key).

    Every row gets a random key; a class keeps the ``size`` rows with the smallest keys seen so far.
    Bottom-k samples merge exactly: the ``size`` smallest keys of the union of the workers' banks are
    a uniform sample of the union of their shards, so :meth:`merge` (one all-reduce gather) leaves
    the same bank on every worker. Memory: O(n_classes × size × dim), whatever the row count.
    """

    def __init__(self, n_classes: int, size: int, dim: int, seed: int = 0):
        self.c, self.size, self.dim = int(n_classes), int(size), int(dim)
        self.feats = torch.zeros(self.c, self.size, self.dim)
        self.keys = torch.full((self.c, self.size), math.inf, dtype=torch.float64)
        self.fps = torch.zeros(self.c, self.size, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(int(seed))

    def add(self, feats: torch.Tensor, y: torch.Tensor, fps: torch.Tensor) -> None:
        feats, y, fps = feats.detach().float().cpu(), y.long().cpu(), fps.double().cpu()
        keys = torch.rand(len(y), generator=self.gen, dtype=torch.float64)
        for c in torch.unique(y).tolist():
            if not 0 <= c < self.c:
                continue
            m = y == c
            k = torch.cat([self.keys[c], keys[m]])
            keep = torch.topk(k, self.size, largest=False).indices
            self.keys[c] = k[keep]
            self.feats[c] = torch.cat([self.feats[c], feats[m]])[keep]
            self.fps[c] = torch.cat([self.fps[c], fps[m]])[keep]

    def merge(self, all_reduce: Callable[[torch.Tensor], torch.Tensor], rank: int, world_size: int) -> None:
        if world_size <= 1:
            return
        def gather(t):
            g = torch.zeros((world_size,) + tuple(t.shape), dtype=t.dtype)
            g[rank] = t
            return all_reduce(g).cpu()
        keys = gather(self.keys).permute(1, 0, 2).reshape(self.c, -1)
        feats = gather(self.feats).permute(1, 0, 2, 3).reshape(self.c, -1, self.dim)
        fps = gather(self.fps).permute(1, 0, 2).reshape(self.c, -1)
        keep = torch.topk(keys, self.size, dim=1, largest=False).indices
        self.keys = torch.gather(keys, 1, keep)
        self.fps = torch.gather(fps, 1, keep)
        self.feats = torch.gather(feats, 1, keep[:, :, None].expand(-1, -1, self.dim))

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features (M, d), class (M,), fingerprints (M,)) of the filled slots, class by class."""
        valid = torch.isfinite(self.keys)
        cls = torch.arange(self.c)[:, None].expand(-1, self.size)
        return self.feats[valid].clone(), cls[valid].clone(), self.fps[valid].clone()


@torch.no_grad()
def collect_bank(ctx: EpochContext, size: int, seed: int, normalize: bool) -> FeatureBank:
    """One pass over this worker's shard (``ctx.table_once()``, eval mode) into a per-class bank,
    merged across workers: every worker returns the same bank."""
    net = ctx.model
    was = net.training
    net.eval()
    bank = FeatureBank(ctx.n_classes, size, int(net.feature_dim), seed=seed * 1_000_003 + ctx.epoch * 101 + ctx.rank)
    for x, y in ctx.table_once():
        with ctx.autocast:
            _, f = net(x, return_features=True)
        f = f.float()
        if normalize:
            f = F.normalize(f, dim=1)
        bank.add(f, y, row_fingerprint(x))
    net.train(was)
    bank.merge(ctx.all_reduce, ctx.rank, ctx.world_size)
    return bank


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding (deterministic for a seed): (centres (k', d), labels (n,)),
    k' = min(k, n). An emptied cluster is re-seeded with the point farthest from its centre."""
    x = x.double()
    n = len(x)
    k = max(1, min(int(k), n))
    g = torch.Generator().manual_seed(int(seed))
    idx = [int(torch.randint(n, (1,), generator=g))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        j = int(torch.multinomial(p, 1, generator=g))
        idx.append(j)
        d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(1))
    centres = x[idx].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for it in range(iters):
        dist = torch.cdist(x, centres).pow(2)
        new = dist.argmin(1)
        if it > 0 and torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            m = labels == j
            if m.any():
                centres[j] = x[m].mean(0)
            else:
                far = dist.gather(1, labels[:, None]).squeeze(1).argmax()
                centres[j] = x[far]
                labels[far] = j
    return centres.float(), labels


def cluster_bank(feats: torch.Tensor, cls: torch.Tensor, n_classes: int, k: int, iters: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class k-means on a bank: (centres (M, d), centre_class (M,), bank cluster ids (global centre index))."""
    centres, ccls = [], []
    assign = torch.full((len(cls),), -1, dtype=torch.long)
    for c in range(n_classes):
        m = cls == c
        if not m.any():
            continue
        cen, lab = kmeans(feats[m], k, iters, seed=seed * 7919 + c)
        assign[m] = lab + sum(len(t) for t in centres)
        centres.append(cen)
        ccls.append(torch.full((len(cen),), c, dtype=torch.long))
    if not centres:
        return torch.zeros(0, feats.shape[1]), torch.zeros(0, dtype=torch.long), assign
    return torch.cat(centres), torch.cat(ccls), assign


def nearest_own_centre(f: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, centre_class: torch.Tensor
                       ) -> torch.Tensor:
    """Index of the nearest centre of each row's own class (−1 when its class has no centre)."""
    d = sq_dist(f, centres)
    d = d.masked_fill(centre_class[None, :] != y[:, None], math.inf)
    idx = d.argmin(1)
    return torch.where(torch.isfinite(d.gather(1, idx[:, None]).squeeze(1)), idx, torch.full_like(idx, -1))


# ------------------------------------------------------------------ LMLE
def quintuplet_indices(dist: torch.Tensor, anchor_y: torch.Tensor, anchor_c: torch.Tensor, cand_y: torch.Tensor,
                       cand_c: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Huang et al.'s quintuplet for each anchor, as (n, 4) candidate indices [p+, p−, p−−, n] (−1: none).

    ``dist`` (n, m): anchor-to-candidate distances; ``*_y`` classes; ``*_c`` cluster ids; ``exclude``
    (n, m) marks candidates that are the anchor itself. p+ = the farthest candidate of the anchor's
    class *and cluster*; p− = the nearest of its class in another cluster; p−− = the farthest of its
    class (any cluster); n = the nearest of another class.
    """
    same_cls = cand_y[None, :] == anchor_y[:, None]
    same_clu = cand_c[None, :] == anchor_c[:, None]
    ok = torch.ones_like(same_cls) if exclude is None else ~exclude
    masks = [(same_cls & same_clu & ok, True), (same_cls & ~same_clu & ok, False), (same_cls & ok, True),
             (~same_cls & ok, False)]
    out = []
    for m, farthest in masks:
        fill = -math.inf if farthest else math.inf
        d = dist.masked_fill(~m, fill)
        i = d.argmax(1) if farthest else d.argmin(1)
        out.append(torch.where(m.any(1), i, torch.full_like(i, -1)))
    return torch.stack(out, 1)


def triple_header_hinge(anchor: torch.Tensor, cands: torch.Tensor, quint: torch.Tensor, margins) -> torch.Tensor:
    """Per-anchor triple-header hinge loss (Huang et al., Eq. 2 constraints) on squared distances:
    max(0, g1 + D(p+) − D(p−)) + max(0, g2 + D(p−) − D(p−−)) + max(0, g3 + D(p−−) − D(n)); a term
    whose two members are not both present is 0. Returns (per-anchor loss (n,), any-term mask (n,))."""
    n = len(anchor)
    safe = quint.clamp(min=0)
    d = ((anchor[:, None, :] - cands[safe]) ** 2).sum(-1)            # (n, 4): D(a, p+), D(p−), D(p−−), D(n)
    have = quint >= 0
    loss = anchor.new_zeros(n)
    anyterm = torch.zeros(n, dtype=torch.bool, device=anchor.device)
    for t, (i, j) in enumerate([(0, 1), (1, 2), (2, 3)]):
        m = have[:, i] & have[:, j]
        term = F.relu(margins[t] + d[:, i] - d[:, j])
        loss = loss + torch.where(m, term, torch.zeros_like(term))
        anyterm |= m
    return loss, anyterm


def lmle_knn_scores(f: torch.Tensor, centres: torch.Tensor, centre_class: torch.Tensor, n_classes: int,
                    knn: int) -> torch.Tensor:
    """Scores (n, C) of Huang et al.'s cluster-wise kNN rule; argmax is the rule's label.

    With D the squared distances of a (unit-norm) query to the cluster centres and N_k its k nearest:
    if every centre in N_k is of one class c, that class wins (score = distance to the nearest
    centre of any other class − the largest D of c's centres in N_k, ≥ 0); otherwise each class c
    with a centre in N_k scores min_{j∈N_k, class≠c} D_j − max_{i∈N_k, class=c} D_i (the paper's
    "largest local margin"); classes without a centre in N_k score D_1 − min_{i∈c} D_i − 1e-6,
    below every class in N_k (−inf for a class with no centre).
    """
    n, m = len(f), len(centres)
    k = max(1, min(int(knn), m))
    d = sq_dist(f, centres)                                           # (n, m)
    dk, ik = torch.topk(d, k, dim=1, largest=False)                   # ascending
    ck = centre_class[ik]                                             # (n, k)
    onehot = F.one_hot(ck, n_classes).bool()                          # (n, k, C)
    dkc = dk[:, :, None].expand(-1, -1, n_classes)
    max_in = dkc.masked_fill(~onehot, -math.inf).amax(1)              # (n, C)
    min_other_in = dkc.masked_fill(onehot, math.inf).amin(1)          # (n, C)
    has = onehot.any(1)
    dmin_c = torch.full((n, n_classes), math.inf, device=d.device).scatter_reduce(
        1, centre_class[None, :].expand(n, -1), d, reduce="amin", include_self=True)
    two = torch.topk(dmin_c, min(2, n_classes), dim=1, largest=False).values
    first_cls = dmin_c.argmin(1)
    # nearest centre of any *other* class than c: the 2nd smallest class minimum for c = argmin, else the smallest
    other_global = two[:, :1].expand(-1, n_classes).clone()
    if n_classes > 1:
        other_global.scatter_(1, first_cls[:, None], two[:, 1:2])
    single = has & torch.isinf(min_other_in)
    in_score = torch.where(single, other_global - max_in, min_other_in - max_in)
    out_score = dk[:, :1] - dmin_c - 1e-6
    return torch.where(has, in_score, out_score)


def scores_to_probs(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(scores / T) in float64 (rows sum to 1; argmax preserved); +inf scores are capped."""
    s = scores.double() / float(temperature)
    s = torch.nan_to_num(s, posinf=1e300, neginf=-math.inf)
    return torch.softmax(s, dim=1)


LMLE_SPEC = {"clusters": (3, _int(1)), "recluster_every": (1, _int(1)), "bank_size": (64, _int(2)),
             "margins": ([0.1, 0.1, 0.1], _margins), "hinge_weight": (1.0, _num(0.0)), "knn": (3, _int(1)),
             "temperature": (0.1, _num(0.0, strict=True)), "kmeans_iters": (20, _int(1)),
             "refit_passes": (1, _int(0)), "refit": (True, _bool), "seed": (0, _int(0))}


@register
class LMLEHook(MethodHook):
    """LMLE (Huang et al. 2016): quintuplets from per-class clusters, triple-header hinge loss, cluster-wise kNN."""

    name = "lmle"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        self.p = check_params(self.name, params, LMLE_SPEC)
        self.clustered_epoch: Optional[int] = None
        self.centres = self.centre_class = None
        self.bank = None  # (features, class, cluster id, fingerprint) on CPU
        self._dev: dict = {}

    # ---- clustering
    def start_epoch(self, ctx: EpochContext) -> None:
        if self.clustered_epoch is not None and ctx.epoch - self.clustered_epoch < self.p["recluster_every"]:
            return
        bank = collect_bank(ctx, self.p["bank_size"], self.p["seed"], normalize=True)
        f, cls, fp = bank.flat()
        self.centres, self.centre_class, assign = cluster_bank(f, cls, self.n_classes, self.p["clusters"],
                                                               self.p["kmeans_iters"], self.p["seed"] + ctx.epoch)
        self.bank = (f, cls, assign, fp)
        self.clustered_epoch = ctx.epoch
        self._dev = {}

    def _on(self, device):
        if device not in self._dev:
            f, cls, assign, fp = self.bank
            self._dev[device] = (f.to(device), cls.to(device), assign.to(device), fp.to(device),
                                 self.centres.to(device), self.centre_class.to(device))
        return self._dev[device]

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits, feats = model(x, return_features=True)
        loss = loss_fn(logits, y)
        if self.bank is None or self.p["hinge_weight"] == 0 or len(self.bank[0]) == 0:
            return loss
        return loss + self.p["hinge_weight"] * self.hinge(x, y, feats)

    def hinge(self, x, y, feats) -> torch.Tensor:
        """The class-balanced triple-header hinge loss of a batch: candidates are the batch (live
        features, so gradients reach them too) and the bank (fixed features from the last pass)."""
        fn = F.normalize(feats.float(), dim=1)
        bf, bcls, bclu, bfp, cen, ccls = self._on(fn.device)
        y = y.to(fn.device).long()
        n = len(y)
        with torch.no_grad():
            ac = nearest_own_centre(fn, y, cen, ccls)
            cand_y = torch.cat([y, bcls])
            cand_c = torch.cat([ac, bclu])
            fp = row_fingerprint(x)
        cands = torch.cat([fn, bf])
        per, anyterm = [], []
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            with torch.no_grad():
                # the anchor itself, its copies in the batch (ROS / fill rows) and in the bank
                excl = torch.cat([same_rows(fp[s:e], fp), same_rows(fp[s:e], bfp)], 1)
                excl[torch.arange(e - s), torch.arange(s, e)] = True
                q = quintuplet_indices(sq_dist(fn[s:e].detach(), cands.detach()), y[s:e], ac[s:e], cand_y, cand_c,
                                       excl)
            l, a = triple_header_hinge(fn[s:e], cands, q, self.p["margins"])
            per.append(l)
            anyterm.append(a)
        per, anyterm = torch.cat(per), torch.cat(anyterm)
        return class_balanced_mean(per, y, anyterm, self.n_classes)

    # ---- state
    def state_dict(self):
        return {"clustered_epoch": self.clustered_epoch, "centres": self.centres, "centre_class": self.centre_class,
                "bank": self.bank}

    def load_state_dict(self, state):
        self.clustered_epoch = state["clustered_epoch"]
        self.centres, self.centre_class, self.bank = state["centres"], state["centre_class"], state["bank"]
        self._dev = {}

    def inference_state(self):
        if self.centres is None:
            return None
        return {"centres": self.centres.clone(), "centre_class": self.centre_class.clone(), "knn": self.p["knn"],
                "temperature": self.p["temperature"], "n_classes": self.n_classes}

    @staticmethod
    def predict(state, model, x):
        logits, f = model(x, return_features=True)
        fn = F.normalize(f.float(), dim=1)
        s = lmle_knn_scores(fn, state["centres"].to(fn.device), state["centre_class"].to(fn.device),
                            int(state.get("n_classes", logits.shape[1])), state["knn"])
        return scores_to_probs(s, state["temperature"])

    @classmethod
    def after_fit(cls, model_dir, cfg, val_path):
        """Refit the cluster centres with the *final* (best) weights: one pass over the training
        table into a bank, per-class k-means on it, then ``refit_passes`` streaming Lloyd passes
        over every training row (memory O(classes × clusters × d)). Runs on the driver with the
        model on the accelerator when there is one."""
        from pipeline.data.schema import read_info
        from pipeline.io import read_json
        from pipeline.train.hooks import load_inference_state
        from pipeline.train.loop import _table_once, pick_device
        from pipeline.train.trainer import load_model

        meta = read_json(f"{model_dir}/model.json")
        p = check_params(cls.name, cfg.train.method_params, LMLE_SPEC)
        loaded = load_inference_state(model_dir)
        if not p["refit"] or loaded is None:
            return
        device = pick_device()
        model, _ = load_model(model_dir, device=device)
        train_path = meta["train_path"]
        info = read_info(train_path)
        bs = max(cfg.train.batch_size, cfg.stream.batch_size)

        def once():
            return _table_once(train_path, info, device, bs, cfg.stream.reader, 0, 1, cfg.stream.workers_count,
                               "train")

        ctx = EpochContext(model=model, epoch=0, n_classes=info.n_classes, class_counts=None, device=device, rank=0,
                           world_size=1, autocast=torch.autocast(device.type, enabled=False), table_once=once,
                           all_reduce=lambda t: t)
        with torch.no_grad():
            bank = collect_bank(ctx, p["bank_size"], p["seed"], normalize=True)
            f, c, _ = bank.flat()
            centres, ccls, _ = cluster_bank(f, c, info.n_classes, p["clusters"], p["kmeans_iters"], p["seed"])
            for _ in range(p["refit_passes"]):
                centres = lloyd_pass(model, once, centres, ccls)
        state = dict(loaded[1])
        state.update(centres=centres.cpu(), centre_class=ccls.cpu(), refit=True)
        save_inference_state(model_dir, cls.name, state)


def class_balanced_mean(per: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean over the classes with a valid anchor of the mean loss of their anchors (every class
    weighs the same — the paper draws equally many quintuplets from minority and majority classes)."""
    if not valid.any():
        return per.sum() * 0.0
    yv, pv = y[valid], per[valid]
    sums = torch.zeros(n_classes, device=per.device, dtype=per.dtype).index_add(0, yv, pv)
    cnt = torch.zeros(n_classes, device=per.device, dtype=per.dtype).index_add(0, yv, torch.ones_like(pv))
    present = cnt > 0
    return (sums[present] / cnt[present]).mean()


@torch.no_grad()
def lloyd_pass(model, table_once, centres: torch.Tensor, centre_class: torch.Tensor) -> torch.Tensor:
    """One streaming Lloyd step over every row: each row joins the nearest centre of its own class;
    a centre becomes the mean of its rows (kept when it got none)."""
    dev = next(model.parameters()).device
    cen, ccls = centres.to(dev), centre_class.to(dev)
    sums = torch.zeros_like(cen, dtype=torch.float64)
    cnt = torch.zeros(len(cen), dtype=torch.float64, device=dev)
    for x, y in table_once():
        _, f = model(x, return_features=True)
        fn = F.normalize(f.float(), dim=1)
        y = y.to(dev).long()
        j = nearest_own_centre(fn, y, cen, ccls)
        ok = j >= 0
        sums.index_add_(0, j[ok], fn[ok].double())
        cnt.index_add_(0, j[ok], torch.ones(int(ok.sum()), dtype=torch.float64, device=dev))
    out = torch.where(cnt[:, None] > 0, sums / cnt.clamp(min=1)[:, None], cen.double())
    return out.float().cpu()


# ------------------------------------------------------------------ DOS
def minority_by_mean(counts) -> np.ndarray:
    """DOS's minority classes: those with fewer training rows than the mean class size."""
    c = np.asarray(counts, dtype=float)
    return c < c.mean()


def dos_neighbours(f: torch.Tensor, y: torch.Tensor, bank_f: torch.Tensor, bank_y: torch.Tensor,
                   k_per_class: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(n, max k) bank indices of each row's k_{y_i} nearest *in-class* bank features (Euclidean),
    nearest first; −1 pads rows whose class wants fewer (or has fewer candidates). ``exclude`` (n, m)
    marks bank entries that are the row itself."""
    n = len(f)
    k_row = k_per_class.to(f.device)[y.long()]
    kmax = int(k_row.max().item()) if n else 0
    if kmax == 0 or len(bank_f) == 0:
        return torch.full((n, max(kmax, 0)), -1, dtype=torch.long, device=f.device)
    kk = min(kmax, len(bank_f))
    out = torch.full((n, kmax), -1, dtype=torch.long, device=f.device)
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        d = sq_dist(f[s:e], bank_f)
        bad = bank_y[None, :].to(f.device) != y[s:e, None].to(f.device)
        if exclude is not None:
            bad = bad | exclude[s:e]
        d = d.masked_fill(bad, math.inf)
        dv, iv = torch.topk(d, kk, dim=1, largest=False)
        keep = torch.isfinite(dv) & (torch.arange(kk, device=f.device)[None, :] < k_row[s:e, None])
        out[s:e, :kk] = torch.where(keep, iv, torch.full_like(iv, -1))
    return out


DOS_SPEC = {"k": (None, None), "k_minority": (3, _int(0)), "k_majority": (0, _int(0)), "bank_size": (128, _int(1)),
            "micro_cluster_weight": (1.0, _num(0.0)), "neighbour_weight": (1.0, _num(0.0)), "seed": (0, _int(0))}


@register
class DOSHook(MethodHook):
    """DOS (Ando & Huang 2017): in-class deep-feature neighbours as targets (micro-cluster loss) and as
    extra classifier inputs (over-sampling in feature space), k per class."""

    name = "dos"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        spec = dict(DOS_SPEC, k=(None, _k_spec(self.n_classes)))
        self.p = check_params(self.name, params, spec)
        self.k = torch.tensor(dos_k_per_class(self.p, class_counts, self.n_classes), dtype=torch.long)
        self.bank = None
        self._dev: dict = {}

    def start_epoch(self, ctx: EpochContext) -> None:
        if int(self.k.max()) == 0:
            return
        b = collect_bank(ctx, self.p["bank_size"], self.p["seed"], normalize=False)
        self.bank = b.flat()
        self._dev = {}

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits, feats = model(x, return_features=True)
        loss = loss_fn(logits, y)
        if self.bank is None or len(self.bank[0]) == 0:
            return loss
        dev = feats.device
        if dev not in self._dev:
            self._dev[dev] = tuple(t.to(dev) for t in self.bank) + (self.k.to(dev),)
        bf, by, bfp, k = self._dev[dev]
        y = y.to(dev).long()
        f = feats.float()
        with torch.no_grad():
            nb = dos_neighbours(f.detach(), y, bf, by, k, exclude=same_rows(row_fingerprint(x), bfp))
        rows, slots = (nb >= 0).nonzero(as_tuple=True)
        if len(rows) == 0:
            return loss
        v = bf[nb[rows, slots]]                                       # fixed targets (no gradient)
        n = len(y)
        micro = ((f[rows] - v) ** 2).sum(1).sum() / (f.shape[1] * n)
        net = model.module if hasattr(model, "module") else model
        with autocast:
            nlogits = net.classifier(v)
        nce = F.cross_entropy(nlogits.float(), y[rows], reduction="sum") / n
        return loss + self.p["micro_cluster_weight"] * micro + self.p["neighbour_weight"] * nce

    def state_dict(self):
        return {"bank": self.bank}

    def load_state_dict(self, state):
        self.bank = state.get("bank")
        self._dev = {}


def dos_k_per_class(p: dict, class_counts, n_classes: int) -> list[int]:
    """k per class: ``k`` (an int for every class, or one per class) or else ``k_minority`` for the
    classes below the mean class size and ``k_majority`` for the rest."""
    if p["k"] is not None:
        return list(p["k"]) if isinstance(p["k"], list) else [int(p["k"])] * n_classes
    minority = minority_by_mean(class_counts if class_counts is not None else np.ones(n_classes))
    return [p["k_minority"] if m else p["k_majority"] for m in minority]


# ------------------------------------------------------------------ CRL
def minority_classes(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Bool (C,) of Dong et al.'s batch minority classes: classes present in the batch, sorted by
    count (ties: smaller index first), taken from the smallest while their total is ≤ half the batch."""
    counts = torch.bincount(y.long().cpu(), minlength=n_classes)
    present = torch.nonzero(counts > 0).flatten().tolist()
    order = sorted(present, key=lambda c: (int(counts[c]), c))
    out = torch.zeros(n_classes, dtype=torch.bool)
    total, half = 0, len(y) / 2.0
    for c in order:
        if total + int(counts[c]) > half:
            break
        total += int(counts[c])
        out[c] = True
    return out


def batch_imbalance(y: torch.Tensor) -> float:
    """Ω_imb = ½ Σ_c |n_c/n − 1/C_b| over the C_b classes present (0 for a uniform batch)."""
    counts = torch.bincount(y.long().cpu()).double()
    counts = counts[counts > 0]
    if len(counts) == 0:
        return 0.0
    p = counts / counts.sum()
    return float(0.5 * (p - 1.0 / len(p)).abs().sum())


def crl_class_triplets(probs: torch.Tensor, y: torch.Tensor, minority: torch.Tensor, hard_k: int) -> torch.Tensor:
    """Class-level hard mining: (T, 4) rows [anchor, positive, negative, class c]. For a minority
    class c: anchors = its rows; hard positives = the ``hard_k`` rows of c with the lowest score
    p_c; hard negatives = the ``hard_k`` rows of other classes with the highest p_c; all
    anchor × positive × negative triplets with positive ≠ anchor."""
    out = []
    y = y.long()
    for c in torch.nonzero(minority).flatten().tolist():
        pos_all = torch.nonzero(y == c).flatten()
        neg_all = torch.nonzero(y != c).flatten()
        if len(pos_all) == 0 or len(neg_all) == 0:
            continue
        s = probs[:, c]
        pos = pos_all[torch.topk(s[pos_all], min(hard_k, len(pos_all)), largest=False).indices]
        neg = neg_all[torch.topk(s[neg_all], min(hard_k, len(neg_all)), largest=True).indices]
        a, p, n = torch.meshgrid(pos_all, pos, neg, indexing="ij")
        t = torch.stack([a.flatten(), p.flatten(), n.flatten(), torch.full_like(a.flatten(), c)], 1)
        out.append(t[t[:, 0] != t[:, 1]])
    return torch.cat(out) if out else torch.zeros(0, 4, dtype=torch.long, device=y.device)


def crl_instance_triplets(dist: torch.Tensor, y: torch.Tensor, minority: torch.Tensor, hard_k: int) -> torch.Tensor:
    """Instance-level hard mining: (T, 3) rows [anchor, positive, negative]. For each anchor of a
    minority class: hard positives = the ``hard_k`` other rows of its class farthest from it in
    feature space (``dist`` (n, n)); hard negatives = the ``hard_k`` rows of other classes nearest to it."""
    y = y.long()
    n = len(y)
    anchors = torch.nonzero(minority.to(y.device)[y]).flatten()
    if len(anchors) == 0 or n < 2:
        return torch.zeros(0, 3, dtype=torch.long, device=y.device)
    d = dist[anchors]                                                  # (A, n)
    same = y[None, :] == y[anchors, None]
    same[torch.arange(len(anchors), device=y.device), anchors] = False
    kp = min(hard_k, n)
    pv, pi = torch.topk(d.masked_fill(~same, -math.inf), kp, dim=1, largest=True)
    nv, ni = torch.topk(d.masked_fill(y[None, :] == y[anchors, None], math.inf), kp, dim=1, largest=False)
    ok = torch.isfinite(pv)[:, :, None] & torch.isfinite(nv)[:, None, :]        # (A, kp, kp)
    a = anchors[:, None, None].expand(-1, kp, kp)
    t = torch.stack([a, pi[:, :, None].expand(-1, -1, kp), ni[:, None, :].expand(-1, kp, -1)], -1)
    return t[ok]


def crl_loss(logits: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, n_classes: int, level: str, hard_k: int,
             margin: float) -> torch.Tensor:
    """L_crl of a batch (0 when it has no minority class or no triplet): the mean triplet ranking
    hinge max(0, m + d(a,p) − d(a,n)); class level: d = |p_c(a) − p_c(x)| on the softmax score of the
    anchor's class c; instance level: Euclidean distance of unit-norm features; ``both``: their mean."""
    minority = minority_classes(y, n_classes).to(y.device)
    zero = logits.sum() * 0.0
    if not minority.any():
        return zero
    parts = []
    if level in ("class", "both"):
        probs = torch.softmax(logits.float(), 1)
        with torch.no_grad():
            t = crl_class_triplets(probs.detach(), y, minority, hard_k)
        if len(t):
            c = t[:, 3]
            pa, pp, pn = probs[t[:, 0], c], probs[t[:, 1], c], probs[t[:, 2], c]
            parts.append(F.relu(margin + (pa - pp).abs() - (pa - pn).abs()).mean())
        elif level == "class":
            parts.append(zero)
    if level in ("instance", "both"):
        fn = F.normalize(feats.float(), dim=1)
        with torch.no_grad():
            t = crl_instance_triplets(torch.cdist(fn.detach(), fn.detach()), y, minority, hard_k)
        if len(t):
            dp = (fn[t[:, 0]] - fn[t[:, 1]]).norm(dim=1)
            dn = (fn[t[:, 0]] - fn[t[:, 2]]).norm(dim=1)
            parts.append(F.relu(margin + dp - dn).mean())
        elif level == "instance":
            parts.append(zero)
    return torch.stack(parts).mean() if parts else zero


CRL_SPEC = {"eta": (1.0, _num(0.0)), "margin": (0.5, _num(0.0)), "hard_k": (5, _int(1)),
            "level": ("both", _choice("class", "instance", "both"))}


@register
class CRLHook(MethodHook):
    """CRL (Dong et al. 2017): L = α L_crl + (1 − α) loss_fn with α = min(1, η Ω_imb) of the batch."""

    name = "crl"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        self.p = check_params(self.name, params, CRL_SPEC)
        self.last_alpha = 0.0

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits, feats = model(x, return_features=True)
        ce = loss_fn(logits, y)
        alpha = min(1.0, self.p["eta"] * batch_imbalance(y))
        self.last_alpha = alpha
        if alpha == 0.0:
            return ce
        l_crl = crl_loss(logits, feats, y, self.n_classes, self.p["level"], self.p["hard_k"], self.p["margin"])
        return alpha * l_crl + (1.0 - alpha) * ce


__all__ = ["LMLEHook", "DOSHook", "CRLHook", "FeatureBank", "kmeans", "quintuplet_indices", "triple_header_hinge",
           "lmle_knn_scores", "dos_neighbours", "minority_classes", "batch_imbalance", "crl_class_triplets",
           "crl_instance_triplets", "crl_loss", "check_params"]
