"""Pure parts of the deep-feature methods (pipeline.train.features) against independent
references: brute-force loops written here from the papers' rules, scikit-learn's KMeans and
NearestNeighbors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.train.features.common import FeatureBank, kmeans, row_fingerprint, same_rows, sq_dist
from pipeline.train.features.crl import CRLHook, batch_imbalance, crl_class_triplets, crl_instance_triplets, crl_loss, minority_classes
from pipeline.train.features.dos import DOSHook, dos_neighbours
from pipeline.train.features.lmle import LMLEHook, lmle_knn_scores, quintuplet_indices, scores_to_probs, triple_header_hinge




# ------------------------------------------------------------------ params
def test_unknown_and_bad_params_are_one_config_error():
    with pytest.raises(ConfigError, match=r"train\.method_params\.clusterz"):
        LMLEHook({"clusterz": 3}, 3, np.ones(3), 4)
    with pytest.raises(ConfigError, match=r"train\.method_params\.margins"):
        LMLEHook({"margins": [0.1, 0.1]}, 3, np.ones(3), 4)
    with pytest.raises(ConfigError, match=r"train\.method_params\.k\b"):
        DOSHook({"k": [1, 2]}, 3, np.ones(3), 4)
    with pytest.raises(ConfigError, match=r"train\.method_params\.level"):
        CRLHook({"level": "pixel"}, 3, np.ones(3), 4)
    with pytest.raises(ConfigError, match=r"train\.method_params\.eta"):
        CRLHook({"eta": -1}, 3, np.ones(3), 4)
    # the loop's own keys may sit beside a hook's
    CRLHook({"category_centers": False, "eta": 0.5}, 3, np.ones(3), 4)


# ------------------------------------------------------------------ k-means and banks
def test_kmeans_matches_sklearn_partition_on_separated_blobs():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    x = np.concatenate([c + rng.normal(0, 0.5, (40, 2)) for c in centres])
    cen, lab = kmeans(torch.tensor(x), 4, iters=50, seed=3)
    ref = KMeans(4, n_init=10, random_state=0).fit(x)
    assert adjusted_rand_score(ref.labels_, lab.numpy()) == 1.0
    # centres are the means of their members
    for j in range(4):
        np.testing.assert_allclose(cen[j].numpy(), x[lab.numpy() == j].mean(0), rtol=1e-5, atol=1e-5)
    assert len(kmeans(torch.tensor(x[:2]), 5)[0]) == 2      # k capped by the number of points


def test_bank_keeps_per_class_bottom_k_and_merges_across_workers():
    rng = np.random.default_rng(1)
    banks, seen = [], []
    for rank in range(2):
        b = FeatureBank(3, 5, 2, seed=rank)
        for _ in range(4):
            y = torch.tensor(rng.integers(0, 3, 17))
            f = torch.tensor(rng.normal(size=(17, 2)), dtype=torch.float32)
            b.add(f, y, row_fingerprint(f))
            seen.append((f, y))
        banks.append(b)
    # every stored feature is of its slot's class
    all_f = torch.cat([f for f, _ in seen])
    all_y = torch.cat([y for _, y in seen])
    for b in banks:
        f, c, _ = b.flat()
        for row, cls in zip(f, c):
            match = (all_f == row).all(1)
            assert match.any() and set(all_y[match].tolist()) == {int(cls)}
    # merge: simulate the all-reduce sum of the two workers' gathered tensors
    recorded = []
    other = copy.deepcopy(banks[1])
    other.merge(lambda g: (recorded.append(g.clone()), g)[1], rank=1, world_size=2)
    merged = copy.deepcopy(banks[0])
    merged.merge(lambda g: g + recorded.pop(0), rank=0, world_size=2)
    for c in range(3):
        keys = torch.cat([banks[0].keys[c], banks[1].keys[c]])
        want = torch.sort(keys[torch.isfinite(keys)]).values[:5]
        got = torch.sort(merged.keys[c][torch.isfinite(merged.keys[c])]).values
        torch.testing.assert_close(got, want)
        feats = torch.cat([banks[0].feats[c], banks[1].feats[c]])
        for k, row in zip(merged.keys[c], merged.feats[c]):
            if math.isfinite(k):
                assert torch.equal(row, feats[keys == k][0])


def test_fingerprint_identifies_a_row_and_its_copies():
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    s = same_rows(row_fingerprint(x), row_fingerprint(x[[0, 2]]))
    assert s.tolist() == [[True, False], [True, False], [False, True]]


# ------------------------------------------------------------------ LMLE
def _brute_quintuplets(D, ay, ac, cy, cc, excl):
    out = []
    for i in range(len(D)):
        def pick(cond, far):
            js = [j for j in range(len(D[0])) if cond(j) and not excl[i][j]]
            if not js:
                return -1
            return max(js, key=lambda j: D[i][j]) if far else min(js, key=lambda j: D[i][j])
        out.append([pick(lambda j: cy[j] == ay[i] and cc[j] == ac[i], True),
                    pick(lambda j: cy[j] == ay[i] and cc[j] != ac[i], False),
                    pick(lambda j: cy[j] == ay[i], True),
                    pick(lambda j: cy[j] != ay[i], False)])
    return out


def test_quintuplets_follow_huang_et_al_rules_by_hand():
    # one anchor at the origin; class 0 has clusters 0 and 1, class 1 cluster 2
    anchor = torch.tensor([[0.0, 0.0]])
    cands = torch.tensor([[0.0, 0.0],   # 0: the anchor itself (excluded)
                          [1.0, 0.0],   # 1: class 0 cluster 0, D=1
                          [2.0, 0.0],   # 2: class 0 cluster 0, D=4  -> p+ (farthest in cluster)
                          [0.0, 3.0],   # 3: class 0 cluster 1, D=9  -> p- (nearest other cluster)
                          [0.0, 5.0],   # 4: class 0 cluster 1, D=25 -> p-- (farthest in class)
                          [4.0, 4.0],   # 5: class 1, D=32
                          [2.5, 0.0]])  # 6: class 1, D=6.25 -> n (nearest other class)
    cy = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    cc = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    excl = torch.tensor([[True, False, False, False, False, False, False]])
    q = quintuplet_indices(sq_dist(anchor, cands), torch.tensor([0]), torch.tensor([0]), cy, cc, excl)
    assert q.tolist() == [[2, 3, 4, 6]]
    # random case against the brute-force rule, including missing members (-1)
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(9, 3, generator=g), torch.randn(30, 3, generator=g)
    ay, ac = torch.randint(0, 3, (9,), generator=g), torch.randint(0, 2, (9,), generator=g)
    cy, cc = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 2, (30,), generator=g)
    cy[cy == 2] = 1                                   # class 2 anchors have no positives at all
    excl = torch.rand(9, 30, generator=g) < 0.1
    D = sq_dist(a, c)
    q = quintuplet_indices(D, ay, ac, cy, cc, excl)
    assert q.tolist() == _brute_quintuplets(D.tolist(), ay.tolist(), ac.tolist(), cy.tolist(), cc.tolist(),
                                            excl.tolist())
    assert (q[ay == 2][:, :3] == -1).all()


def test_triple_header_hinge_formula():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0]])   # D = 1, 1, 4, 2
    q = torch.tensor([[0, 1, 2, 3], [0, -1, 2, 3]])
    g = [0.5, 0.2, 0.3]
    loss, anyterm = triple_header_hinge(anchor, cands, q, g)
    want0 = max(0, 0.5 + 1 - 1) + max(0, 0.2 + 1 - 4) + max(0, 0.3 + 4 - 2)
    want1 = max(0, 0.3 + 4 - 2)                      # no p-: only the third term
    torch.testing.assert_close(loss, torch.tensor([want0, want1]))
    assert anyterm.tolist() == [True, True]


def _paper_knn_rule(q, centres, cls, k):
    """Huang et al.'s cluster-wise kNN: unanimous kNN wins; else argmax_c (min other − max own)."""
    d = ((centres - q) ** 2).sum(1)
    nn = np.argsort(d, kind="stable")[:k]
    labels = set(cls[nn].tolist())
    if len(labels) == 1:
        return labels.pop()
    best, arg = -np.inf, None
    for c in sorted(labels):
        own = [d[j] for j in nn if cls[j] == c]
        other = [d[j] for j in nn if cls[j] != c]
        s = min(other) - max(own)
        if s > best:
            best, arg = s, c
    return arg


def test_cluster_wise_knn_rule_matches_paper_rule():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, 3)).astype(np.float32)
    cls = np.repeat(np.arange(4), 3)
    q = rng.normal(size=(200, 3)).astype(np.float32)
    for k in (1, 3, 5):
        s = lmle_knn_scores(torch.tensor(q), torch.tensor(centres), torch.tensor(cls), 4, k)
        pred = s.argmax(1).numpy()
        want = np.array([_paper_knn_rule(v, centres, cls, k) for v in q])
        assert (pred == want).all()
        p = scores_to_probs(s, 0.1)
        assert p.dtype == torch.float64
        np.testing.assert_allclose(p.sum(1).numpy(), 1.0)
        assert (p.argmax(1).numpy() == want).all()


# ------------------------------------------------------------------ DOS
def test_dos_neighbours_are_the_k_nearest_in_class():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(5)
    bank = torch.randn(60, 4, generator=g)
    by = torch.randint(0, 3, (60,), generator=g)
    f = torch.randn(25, 4, generator=g)
    y = torch.randint(0, 3, (25,), generator=g)
    k = torch.tensor([3, 0, 5])
    nb = dos_neighbours(f, y, bank, by, k)
    assert nb.shape == (25, 5)
    for i in range(25):
        c = int(y[i])
        got = [j for j in nb[i].tolist() if j >= 0]
        assert len(got) == int(k[c]) and all(int(by[j]) == c for j in got)
        if k[c] == 0:
            continue
        members = np.nonzero(by.numpy() == c)[0]
        ref = NearestNeighbors(n_neighbors=int(k[c])).fit(bank.numpy()[members])
        _, idx = ref.kneighbors(f[i:i + 1].numpy())
        assert got == members[idx[0]].tolist()


def test_dos_excludes_the_row_itself_and_pads_small_classes():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    by = torch.tensor([0, 0, 1])
    f = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 1])
    excl = same_rows(row_fingerprint(f), row_fingerprint(bank))
    nb = dos_neighbours(f, y, bank, by, torch.tensor([2, 2]), exclude=excl)
    assert nb.tolist() == [[1, -1], [-1, -1]]


def test_dos_default_k_is_3_for_minority_and_0_for_majority():
    h = DOSHook({}, 4, np.array([500, 300, 40, 10]), 8)
    assert h.k.tolist() == [0, 0, 3, 3]                # mean class size 212.5
    assert DOSHook({"k": 2}, 3, np.ones(3), 8).k.tolist() == [2, 2, 2]
    assert DOSHook({"k": [1, 0, 4]}, 3, np.ones(3), 8).k.tolist() == [1, 0, 4]


# ------------------------------------------------------------------ CRL
def _rule_minority(y, C):
    counts = np.bincount(y, minlength=C)
    order = sorted([c for c in range(C) if counts[c] > 0], key=lambda c: (counts[c], c))
    chosen, total = set(), 0
    for c in order:
        if total + counts[c] <= len(y) / 2:
            chosen.add(c)
            total += counts[c]
        else:
            break
    return chosen


def test_crl_minority_set_matches_the_rule():
    rng = np.random.default_rng(6)
    for _ in range(50):
        y = rng.choice(5, rng.integers(2, 40), p=[0.5, 0.2, 0.15, 0.1, 0.05])
        got = set(torch.nonzero(minority_classes(torch.tensor(y), 5)).flatten().tolist())
        assert got == _rule_minority(y, 5)
        assert sum((y == c).sum() for c in got) <= len(y) / 2
    # hand example: counts {0: 10, 1: 4, 2: 3, 3: 3} of 20 -> 2, 3 (6) then 1 (10 <= 10)
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 3 + [3] * 3)
    assert minority_classes(y, 4).tolist() == [False, True, True, True]


def test_crl_is_zero_without_a_minority_and_only_touches_minority_anchors():
    torch.manual_seed(0)
    logits = torch.randn(8, 3, requires_grad=True)
    feats = torch.randn(8, 4, requires_grad=True)
    one_class = torch.zeros(8, dtype=torch.long)
    assert crl_loss(logits, feats, one_class, 3, level="both", hard_k=3, margin=0.5).item() == 0.0
    assert batch_imbalance(one_class) == 0.0
    # Ω_imb: counts 6/2 -> ½(|.75-.5| + |.25-.5|) = 0.25
    assert batch_imbalance(torch.tensor([0] * 6 + [1] * 2)) == pytest.approx(0.25)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])         # minority {1, 2} (3 of 8)
    mino = minority_classes(y, 3)
    dist = torch.cdist(feats.detach(), feats.detach())
    t = crl_instance_triplets(dist, y, mino, 2)
    assert set(t[:, 0].tolist()) == {5, 6}             # class 2 has one row: no positive, no triplet
    want = set()                                       # brute force: 2 farthest positives x 2 nearest negatives
    for a in range(8):
        if not mino[y[a]]:
            continue
        pos = sorted([j for j in range(8) if y[j] == y[a] and j != a], key=lambda j: -dist[a, j].item())[:2]
        neg = sorted([j for j in range(8) if y[j] != y[a]], key=lambda j: dist[a, j].item())[:2]
        want |= {(a, p, q) for p in pos for q in neg}
    assert set(map(tuple, t.tolist())) == want
    probs = torch.softmax(logits.detach(), 1)
    tc = crl_class_triplets(probs, y, mino, 2)
    want = set()
    for c in (1, 2):
        rows = [j for j in range(8) if y[j] == c]
        pos = sorted(rows, key=lambda j: probs[j, c].item())[:2]
        neg = sorted([j for j in range(8) if y[j] != c], key=lambda j: -probs[j, c].item())[:2]
        want |= {(a, p, q, c) for a in rows for p in pos for q in neg if p != a}
    assert set(map(tuple, tc.tolist())) == want
    assert set(tc[:, 3].tolist()) == {1}               # class 2's only row is its anchor: no positive ≠ anchor


def test_crl_class_loss_by_hand():
    # class 1 (2 of 6 rows) is the minority: anchors {4, 5}
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.2, 0.8]]))
    feats = torch.randn(6, 3)
    m = 0.5
    got = crl_loss(logits, feats, y, 2, level="class", hard_k=1, margin=m)
    # class 1: hard positive = lowest p1 among {4, 5} -> row 4 (0.7); hard negative = highest p1 among 0..3 -> row 1 (0.4)
    # triplets (5, 4, 1) only (anchor 4 = positive 4 is dropped): m + |.8-.7| - |.8-.4| = 0.2
    assert got.item() == pytest.approx(max(0.0, m + 0.1 - 0.4), abs=1e-6)


def test_crl_hook_combines_with_alpha():
    from torch import nn

    class Net(nn.Module):
        feature_dim = 3

        def __init__(self):
            super().__init__()
            self.body, self.classifier = nn.Linear(2, 3), nn.Linear(3, 2)

        def forward(self, x, return_features=False):
            f = self.body(x)
            return (self.classifier(f), f) if return_features else self.classifier(f)

    torch.manual_seed(1)
    net = Net()
    x = torch.randn(8, 2)
    y = torch.tensor([0] * 6 + [1] * 2)
    h = CRLHook({"eta": 2.0, "level": "instance", "hard_k": 2}, 2, np.array([6, 2]), 3)
    ce = nn.CrossEntropyLoss()
    got = h.batch_loss(net, x, y, ce, torch.autocast("cpu", enabled=False))
    logits, f = net(x, return_features=True)
    alpha = min(1.0, 2.0 * 0.25)
    want = alpha * crl_loss(logits, f, y, 2, level="instance", hard_k=2, margin=0.5) + (1 - alpha) * ce(logits, y)
    torch.testing.assert_close(got, want)
    assert h.last_alpha == pytest.approx(0.5)
