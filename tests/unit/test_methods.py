"""Method mechanics against independent references: Eq. 11 written out here, scikit-learn's
NearestCentroid and cosine similarity, a pure-Python SplitMix64 with the reference generator's
published outputs, binomial expectations of read-time sampling, and a real 2-process gloo group."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.neighbors import NearestCentroid

from pipeline.errors import InputError
from pipeline.stream import read_sampling as RS
from pipeline.train import methods as M

# ---------------------------------------------------------------------------- dynamic sampling


def eq11(f1, n_star):
    """Survey Eq. 11 (Pouyanfar et al.): size_j = (1 − f1_j) / Σ_k (1 − f1_k) · N*."""
    return [(1 - f) / sum(1 - g for g in f1) * n_star for f in f1]


def test_dynamic_sample_sizes_follow_eq11():
    rng = np.random.default_rng(0)
    for _ in range(20):
        f1 = rng.uniform(0, 0.99, rng.integers(2, 30)).tolist()
        n_star = float(rng.uniform(10, 1e5))
        sizes = M.dynamic_sample_sizes(f1, n_star)
        assert sizes == pytest.approx(eq11(f1, n_star), rel=1e-12)
        assert sizes.sum() == pytest.approx(n_star)
    # worse F1 → larger sample: the worst class is drawn most
    s = M.dynamic_sample_sizes([0.9, 0.5, 0.1], 300)
    assert s == pytest.approx([300 * 0.1 / 1.5, 300 * 0.5 / 1.5, 300 * 0.9 / 1.5])


def test_dynamic_sample_sizes_edge_cases():
    assert M.dynamic_sample_sizes([1.0, 0.5, 0.0], 90) == pytest.approx([0, 30, 60])  # F1=1: nothing to learn
    assert M.dynamic_sample_sizes([1.0, 1.0, 1.0, 1.0], 80) == pytest.approx([20] * 4)  # 0/0 → uniform
    assert M.dynamic_sample_sizes([0.0, 0.0], 50) == pytest.approx([25, 25])
    assert M.dynamic_sample_sizes([np.nan, 0.5], 30) == pytest.approx([20, 10])  # no score → as F1 = 0
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        M.dynamic_sample_sizes([0.5, 1.2], 10)
    with pytest.raises(InputError):
        M.dynamic_sample_sizes([], 10)


def test_dynamic_sampling_rates():
    f1 = [0.95, 0.6, 0.2, 0.0]
    counts = [1000, 200, 40, 0]
    rates = M.dynamic_sampling_rates(f1, counts)
    n_star = sum(counts) / 4
    sizes = eq11(f1, n_star)
    assert rates[:3] == pytest.approx([sizes[i] / counts[i] for i in range(3)])
    assert rates[3] == 0.0  # an empty class cannot be sampled
    assert rates[2] > 1 > rates[0]  # the poorly learned small class is oversampled, the large one under
    assert M.dynamic_sampling_rates(f1, counts, avg_class_size=1240)[:3] == pytest.approx(
        [eq11(f1, 1240)[i] / counts[i] for i in range(3)])
    with pytest.raises(InputError, match="classes"):
        M.dynamic_sampling_rates([0.1, 0.2], [10, 20, 30])


# ---------------------------------------------------------------------------- category centers

def _blobs(n=600, d=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (k, d))
    y = rng.choice(k, n, p=[0.55, 0.25, 0.15, 0.05][:k] if k == 4 else None)
    x = centers[y] + rng.normal(0, 1.5, (n, d))  # overlapping: predictions are not trivially y
    return x.astype(np.float32), y


def test_class_centroids_and_predictions_match_sklearn():
    x, y = _blobs()
    cent = M.class_centroids(torch.from_numpy(x), torch.from_numpy(y), 4)
    ref = NearestCentroid().fit(x, y)
    assert cent.dtype == torch.float32
    np.testing.assert_allclose(cent.numpy(), ref.centroids_, rtol=1e-5, atol=1e-6)
    xt, _ = _blobs(400, seed=1)
    pred = M.nearest_centroid_predict(torch.from_numpy(xt), cent)
    expect = ref.predict(xt)
    assert (pred.numpy() == expect).mean() >= 0.999  # float32 vs float64 near-ties at most
    assert len(np.unique(expect)) == 4 and (expect != _blobs(400, seed=1)[1]).any()


def test_cosine_metric_and_empty_classes():
    x, y = _blobs(seed=2)
    y = np.where(y == 2, 3, y)  # class 2 has no sample
    cent = M.class_centroids(torch.from_numpy(x), torch.from_numpy(y), 5)
    assert torch.isnan(cent[2]).all() and torch.isnan(cent[4]).all()
    assert not torch.isnan(cent[[0, 1, 3]]).any()
    xt, _ = _blobs(300, seed=3)
    pred = M.nearest_centroid_predict(torch.from_numpy(xt), cent, metric="cosine").numpy()
    valid = [0, 1, 3]
    sim = cosine_similarity(xt.astype(np.float64), cent.numpy()[valid].astype(np.float64))
    assert (pred == np.array(valid)[sim.argmax(1)]).all()
    pe = M.nearest_centroid_predict(torch.from_numpy(xt), cent).numpy()
    ref = NearestCentroid().fit(x, y)
    assert set(np.unique(pe)) <= set(valid)
    assert (pe == ref.predict(xt)).mean() >= 0.999
    with pytest.raises(InputError, match="metric"):
        M.nearest_centroid_predict(torch.from_numpy(xt), cent, metric="manhattan")
    with pytest.raises(InputError, match="labels"):
        M.class_centroids(torch.from_numpy(x), torch.from_numpy(y), 3)


def test_centroid_accumulator_equals_one_pass():
    x, y = _blobs(1000, d=7, seed=4)
    acc = M.CentroidAccumulator(4)
    for i in range(0, 1000, 128):
        acc.update(torch.from_numpy(x[i:i + 128]), torch.from_numpy(y[i:i + 128]))
    full = M.class_centroids(torch.from_numpy(x), torch.from_numpy(y), 4)
    torch.testing.assert_close(acc.centroids(), full, rtol=1e-6, atol=1e-6)
    acc.reset()
    acc.update(torch.from_numpy(x[:10]), torch.from_numpy(np.zeros(10, dtype=np.int64)))
    c = acc.centroids()
    torch.testing.assert_close(c[0], torch.from_numpy(x[:10]).mean(0))
    assert torch.isnan(c[1:]).all()
    with pytest.raises(InputError):
        M.CentroidAccumulator(3).centroids()


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _blobs(900, d=6, seed=5)
        part = slice(rank, None, world)  # each rank sees its own rows only
        acc = M.CentroidAccumulator(4, dim=6)
        if rank == 0:  # uneven batches per rank
            acc.update(torch.from_numpy(x[part][:50]), torch.from_numpy(y[part][:50]))
            acc.update(torch.from_numpy(x[part][50:]), torch.from_numpy(y[part][50:]))
        else:
            acc.update(torch.from_numpy(x[part]), torch.from_numpy(y[part]))
        torch.save(acc.centroids(), os.path.join(out_dir, f"c{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_centroid_accumulator_sums_across_ddp_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (CPU only, no CUDA state to break)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    x, y = _blobs(900, d=6, seed=5)
    full = M.class_centroids(torch.from_numpy(x), torch.from_numpy(y), 4)
    for r in range(2):
        c = torch.load(tmp_path / f"c{r}.pt", weights_only=True)
        torch.testing.assert_close(c, full, rtol=1e-6, atol=1e-6)
    half = M.class_centroids(torch.from_numpy(x[::2]), torch.from_numpy(y[::2]), 4)
    assert not torch.allclose(half, full)  # the reduction really mattered


# ---------------------------------------------------------------------------- read-time sampling

def _splitmix64_py(state):
    """Vigna's reference splitmix64 next(): state += golden; z = mix(state). Pure Python ints."""
    mask = (1 << 64) - 1
    z = (state + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_splitmix64_matches_reference():
    # the first outputs of the reference generator seeded with 1234567
    g, s = 0x9E3779B97F4A7C15, 1234567
    outs = [int(RS.splitmix64((s + i * g) % 2**64)) for i in range(5)]
    assert outs == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                    4593380528125082431, 16408922859458223821]
    xs = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.int64).view(np.uint64)
    got = RS.splitmix64(xs)
    assert [int(v) for v in got] == [_splitmix64_py(int(v)) for v in xs]


def test_row_uniforms_formula_and_uniformity():
    ids = np.arange(-5, 200_000, dtype=np.int64)
    u = RS.row_uniforms(ids, seed=3, epoch=2)
    mask = (1 << 64) - 1
    key = _splitmix64_py(_splitmix64_py(3) ^ 2)
    for i in (0, 1, 5, 77, 199_000):
        h = _splitmix64_py((int(ids[i]) & mask) ^ key)
        assert u[i] == (h >> 11) / 2**53
    assert 0 <= u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # consecutive ids, seeds and epochs are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(u, RS.row_uniforms(ids, 3, 3))[0, 1]) < 0.01
    assert abs(np.corrcoef(u, RS.row_uniforms(ids, 4, 2))[0, 1]) < 0.01


def test_row_multiplicity_is_deterministic_and_partition_free():
    rng = np.random.default_rng(1)
    ids = rng.choice(10**12, 50_000, replace=False).astype(np.int64)
    labels = rng.integers(0, 5, ids.size)
    rates = [0.1, 0.5, 1.0, 1.7, 3.25]
    m = RS.row_multiplicity(ids, labels, rates, seed=7, epoch=4)
    assert np.array_equal(m, RS.row_multiplicity(ids, labels, rates, seed=7, epoch=4))
    # any order and any chunking (workers, row groups, batches) gives the same answer per id
    perm = rng.permutation(ids.size)
    chunks = np.array_split(perm, 13)
    again = np.empty_like(m)
    for c in chunks:
        again[c] = RS.row_multiplicity(ids[c], labels[c], rates, seed=7, epoch=4)
    assert np.array_equal(again, m)
    # another epoch or seed draws differently (for the fractional classes only)
    other = RS.row_multiplicity(ids, labels, rates, seed=7, epoch=5)
    frac_rows = np.isin(labels, [0, 1, 3, 4])
    assert (other[frac_rows] != m[frac_rows]).mean() > 0.2
    assert np.array_equal(other[labels == 2], m[labels == 2])
    # dict rates: unnamed classes keep rate 1
    md = RS.row_multiplicity(ids, labels, {0: 0.1, 1: 0.5, 3: 1.7, 4: 3.25}, seed=7, epoch=4)
    assert np.array_equal(md, m)
    with pytest.raises(InputError, match="labels"):
        RS.row_multiplicity(ids, labels, [1.0, 1.0], seed=0, epoch=0)
    with pytest.raises(InputError, match="rates"):
        RS.row_multiplicity(ids, labels, [1.0, -1.0, 1, 1, 1], seed=0, epoch=0)


def test_row_multiplicity_hits_expected_per_class_counts():
    rates = np.array([0.02, 0.3, 0.5, 1.0, 1.7, 2.25, 4.0, 0.0])
    n_per = 40_000
    labels = np.repeat(np.arange(rates.size), n_per)
    ids = np.random.default_rng(2).permutation(labels.size).astype(np.int64) * 3 + 11
    whole, frac = np.floor(rates), rates - np.floor(rates)
    plan = RS.epoch_sampling_plan(np.full(rates.size, n_per), rates, seed=5, epoch=0)
    for epoch in range(3):
        m = RS.row_multiplicity(ids, labels, rates, seed=5, epoch=epoch)
        per_class = np.bincount(labels, weights=m, minlength=rates.size)
        for c in range(rates.size):
            mc = m[labels == c]
            # the integer part is exact: every row gets ⌊r⌋ or ⌊r⌋ + 1 copies, never more or less
            assert mc.min() >= whole[c] and mc.max() <= whole[c] + (frac[c] > 0)
            # the extra copies are Binomial(n, frac): within 5 standard deviations of n·frac
            sd = np.sqrt(n_per * frac[c] * (1 - frac[c]))
            assert abs(per_class[c] - rates[c] * n_per) <= 5 * sd + 1e-9, (c, per_class[c])
            pc = plan["classes"][c]
            assert pc["expected"] == pytest.approx(rates[c] * n_per)
            assert pc["min"] <= per_class[c] <= pc["max"]
            assert pc["std"] == pytest.approx(sd)
        assert plan["min_total"] <= m.sum() <= plan["max_total"]
    assert plan["expected_total"] == pytest.approx(rates.sum() * n_per)


def test_small_class_expectation_over_many_epochs():
    # a class of 50 rows at rate 0.3: the mean count over 400 epochs is 15 ± 5·sd/√400
    ids = np.arange(1000, 1050, dtype=np.int64)
    labels = np.zeros(50, dtype=np.int64)
    counts = [RS.row_multiplicity(ids, labels, [0.3], seed=9, epoch=e).sum() for e in range(400)]
    sd = np.sqrt(50 * 0.3 * 0.7)
    assert abs(np.mean(counts) - 15) <= 5 * sd / np.sqrt(400)
    assert np.var(counts) == pytest.approx(sd ** 2, rel=0.3)


def test_epoch_sampling_plan_by_hand():
    plan = RS.epoch_sampling_plan([100, 10, 0], [0.25, 2.5, 3.0], seed=1, epoch=2)
    assert (plan["seed"], plan["epoch"], plan["input_rows"]) == (1, 2, 110)
    c0, c1, c2 = plan["classes"]
    assert (c0["min"], c0["max"], c0["expected"]) == (0, 100, 25.0)
    assert (c1["copies_always"], c1["min"], c1["max"], c1["expected"]) == (2, 20, 30, 25.0)
    assert (c2["min"], c2["max"], c2["expected"], c2["std"]) == (0, 0, 0.0, 0.0)
    assert plan["expected_total"] == 50.0 and (plan["min_total"], plan["max_total"]) == (20, 130)
    assert plan["std_total"] == pytest.approx(np.sqrt(100 * 0.25 * 0.75 + 10 * 0.25))
    with pytest.raises(InputError, match="rates"):
        RS.epoch_sampling_plan([1, 2], [1.0], seed=0, epoch=0)
