"""**DOS** — Deep Over-Sampling (Ando & Huang, ECML-PKDD 2017; survey "Deep over-sampling (DOS)"),
``train.method: dos``. Each row of class c gets its k_c nearest in-class neighbours v_1..v_k in
deep-feature space (from a per-class feature bank refreshed every epoch) as targets:

    L = loss_fn(g(f(x)), y) + λ_f · (1/n) Σ_i Σ_j ‖f(x_i) − v_ij‖² / d + λ_g · (1/n) Σ_i Σ_j CE(g(v_ij), y_i),

the micro-cluster loss (pulls f(x_i) toward its neighbours' local mean) plus the classifier g's
cross-entropy on the neighbours' features (the over-sampling in feature space).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.train.features.common import (
    CHUNK,
    check_params,
    collect_bank,
    int_check,
    k_check,
    num_check,
    row_fingerprint,
    same_rows,
    sq_dist,
)
from pipeline.train.hook_base import EpochContext, MethodHook, register


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


DOS_SPEC = {"k": (None, None), "k_minority": (3, int_check(0)), "k_majority": (0, int_check(0)), "bank_size": (128, int_check(1)),
            "micro_cluster_weight": (1.0, num_check(0.0)), "neighbour_weight": (1.0, num_check(0.0)), "seed": (0, int_check(0))}


@register
class DOSHook(MethodHook):
    """DOS (Ando & Huang 2017): in-class deep-feature neighbours as targets (micro-cluster loss) and as
    extra classifier inputs (over-sampling in feature space), k per class."""

    name = "dos"

    def __init__(self, params, n_classes, class_counts, feature_dim):
        super().__init__(params, n_classes, class_counts, feature_dim)
        spec = dict(DOS_SPEC, k=(None, k_check(self.n_classes)))
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


