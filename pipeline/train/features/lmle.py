"""**LMLE** — Large Margin Local Embedding (Huang, Li, Loy & Tang, CVPR 2016; survey "Large Margin
Local Embedding (LMLE)"), ``train.method: lmle``. Per-class k-means clusters in the (L2-normalised)
deep-feature space, re-clustered every ``recluster_every`` epochs; for every anchor of a batch a
*quintuplet* (anchor; farthest same-cluster positive p+; nearest same-class other-cluster p−;
farthest same-class p−−; nearest other-class negative n) and the *triple-header hinge loss*

    L_th = max(0, g1 + D(a,p+) − D(a,p−)) + max(0, g2 + D(a,p−) − D(a,p−−)) + max(0, g3 + D(a,p−−) − D(a,n)),

D = squared Euclidean distance of unit-norm features; L = loss_fn(logits, y) + λ · mean_c mean_{a∈c} L_th.
Prediction: the cluster-wise kNN rule over the saved cluster centres (:func:`lmle_knn_scores`).

References:

* C. Huang, Y. Li, C. C. Loy, X. Tang, "Learning deep representation for imbalanced classification",
  CVPR 2016, https://doi.org/10.1109/CVPR.2016.580
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.data.schema import read_info
from pipeline.io import read_json
from pipeline.train.features.common import (
    CHUNK,
    bool_check,
    check_params,
    class_balanced_mean,
    cluster_bank,
    collect_bank,
    int_check,
    margins_check,
    nearest_own_centre,
    num_check,
    row_fingerprint,
    same_rows,
    sq_dist,
)
from pipeline.train.hook_base import EpochContext, MethodHook, read_inference_state, register, save_inference_state
from pipeline.train.saved_model import load_model
from pipeline.train.table_pass import pick_device, table_once


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


LMLE_SPEC = {"clusters": (3, int_check(1)), "recluster_every": (1, int_check(1)), "bank_size": (64, int_check(2)),
             "margins": ([0.1, 0.1, 0.1], margins_check), "hinge_weight": (1.0, num_check(0.0)), "knn": (3, int_check(1)),
             "temperature": (0.1, num_check(0.0, strict=True)), "kmeans_iters": (20, int_check(1)),
             "refit_passes": (1, int_check(0)), "refit": (True, bool_check), "seed": (0, int_check(0))}


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
        meta = read_json(f"{model_dir}/model.json")
        p = check_params(cls.name, cfg.train.method_params, LMLE_SPEC)
        blob = read_inference_state(model_dir)
        loaded = None if blob is None else (blob["method"], blob["state"])
        if not p["refit"] or loaded is None:
            return
        device = pick_device()
        model, _ = load_model(model_dir, device=device)
        train_path = meta["train_path"]
        info = read_info(train_path)
        bs = max(cfg.train.batch_size, cfg.stream.batch_size)

        def once():
            return table_once(train_path, info, device, bs, reader=cfg.stream.reader, rank=0, world_size=1,
                              workers_count=cfg.stream.workers_count, dataset_name="train")

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


