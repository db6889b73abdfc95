"""Shared pieces of the deep-feature hybrid methods (LMLE, DOS, CRL): parameter checks, per-class
feature banks, k-means and distances.

Scale: all feature-space state (banks, centres) is O(classes × bank_size × d), built by a
streaming pass over this worker's shard (``ctx.table_once()``) with a bottom-k random-key sample per
class, merged across DDP workers by one all-reduce so that every worker holds the same bank; the
neighbour and quintuplet searches run with ``torch.cdist`` on the model's device, a chunk of batch
rows × the bank at a time — never all pairs over the data set.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.train.hook_base import EpochContext

# method_params keys read by the loop / pipeline itself (not by these hooks): allowed beside ours
SHARED_KEYS = {"dynamic_sampling", "category_centers", "centroid_metric", "centroid_temperature", "drw_epoch",
               "drw_beta", "pretrain", "pretrain_epochs"}
CHUNK = 1024  # anchors per distance block


# ------------------------------------------------------------------ parameter checking
def int_check(lo: int) -> Callable[[str, Any], int]:
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"config key 'train.method_params.{key}': expected an integer >= {lo}, got {v!r}")
        return int(v)
    return check


def num_check(lo: float, strict: bool = False, hi: Optional[float] = None) -> Callable[[str, Any], float]:
    def check(key, v):
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        ok = ok and (v > lo if strict else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(f"config key 'train.method_params.{key}': expected a number {rng}, got {v!r}")
        return float(v)
    return check


def choice_check(*opts: str) -> Callable[[str, Any], str]:
    def check(key, v):
        if v not in opts:
            raise ConfigError(f"config key 'train.method_params.{key}': expected one of {', '.join(opts)}, got {v!r}")
        return v
    return check


def bool_check(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"config key 'train.method_params.{key}': expected true/false, got {v!r}")
    return v


def margins_check(key, v):
    if (not isinstance(v, (list, tuple)) or len(v) != 3
            or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0
                   for g in v)):
        raise ConfigError(f"config key 'train.method_params.{key}': expected a list of 3 numbers >= 0 "
                          f"[g1, g2, g3], got {v!r}")
    return [float(g) for g in v]


def k_check(n_classes: int) -> Callable[[str, Any], Any]:
    def check(key, v):
        if v is None:
            return None
        if isinstance(v, list):
            if len(v) != n_classes or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in v):
                raise ConfigError(f"config key 'train.method_params.{key}': expected an integer >= 0 or a list of "
                                  f"{n_classes} integers >= 0 (one per class), got {v!r}")
            return [int(k) for k in v]
        return int_check(0)(key, v)
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
