"""**CRL** — Class Rectification Loss with hard-sample mining (Dong, Gong & Zhu, ICCV 2017; survey
"Class rectification loss (CRL) and hard sample mining", Eq. 17), ``train.method: crl``. In each
batch the minority classes are the smallest classes whose total count is at most half the batch;
class-level and/or instance-level hard positives/negatives of every minority anchor form triplets

    L_crl = mean_T max(0, m + d(a,p) − d(a,n)),   L = α L_crl + (1 − α) loss_fn,   α = min(1, η Ω_imb),

with Ω_imb = ½ Σ_c |n_c/n − 1/C_b| (the total-variation distance of the batch's class mix from
uniform over its C_b classes: the least fraction of the batch that must change class for a
uniform batch).

References:

* Q. Dong, S. Gong, X. Zhu, "Imbalanced deep learning by minority class incremental rectification",
  IEEE TPAMI 41(6) (2019), https://doi.org/10.1109/TPAMI.2018.2832629
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.train.features.common import check_params, choice_check, int_check, num_check
from pipeline.train.hook_base import MethodHook, register


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


def crl_loss(logits: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, n_classes: int, *, level: str, hard_k: int,
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


CRL_SPEC = {"eta": (1.0, num_check(0.0)), "margin": (0.5, num_check(0.0)), "hard_k": (5, int_check(1)),
            "level": ("both", choice_check("class", "instance", "both"))}


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
        l_crl = crl_loss(logits, feats, y, self.n_classes, level=self.p["level"], hard_k=self.p["hard_k"],
                         margin=self.p["margin"])
        return alpha * l_crl + (1.0 - alpha) * ce


