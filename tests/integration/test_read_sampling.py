"""Read-time sampling in the Petastorm reader (issue 7 item 2) and dynamic sampling (Pouyanfar et
al., survey Eq. 11) on real Parquet, in one process and inside real Ray Train workers.

Expectations are recomputed independently here: a row's number of copies is ⌊r⌋ + [u < frac(r)]
with u from the SplitMix64 hash written out again below (not the library's), per-class totals are
checked exactly against those multiplicities and statistically against r·n_c, and Eq. 11 is
re-derived from the F1 values the loop reported.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.data.schema import DatasetInfo, read_info, write_info
from pipeline.errors import ConfigError, InputError
from pipeline.stream.readers import make_loader, sampled_shard_rows
from tests.integration.test_stream import write_gaussian_table

K = 4
MASK = (1 << 64) - 1


# ------------------------------------------------------------------ an independent reference
def _splitmix(x: int) -> int:
    """SplitMix64 in plain Python integers (Vigna's reference C), independent of numpy's version."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _copies(i: int, label: int, rates, seed: int, epoch: int) -> int:
    key = _splitmix(_splitmix(seed & MASK) ^ (epoch & MASK))
    u = (_splitmix((i & MASK) ^ key) >> 11) / float(1 << 53)
    r = float(rates[label])
    return int(np.floor(r)) + int(u < r - np.floor(r))


def write_uneven_table(out, sizes, weights=(8, 4, 2, 1), d=5, seed=0, row_group=None):
    """Gaussian features with imbalanced labels, one file per entry of ``sizes`` (uneven shards)."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    p = np.asarray(weights, float) / sum(weights)
    labels, nid, counts = {}, 0, np.zeros(len(weights), int)
    for f, n in enumerate(sizes):
        y = rng.choice(len(weights), n, p=p)
        x = rng.normal(0, 1, (n, d)).astype(np.float32)
        ids = np.arange(nid, nid + n) * 7 + 3          # not dense: ids are keys, not positions
        nid += n
        labels.update(zip(ids.tolist(), y.tolist()))
        counts += np.bincount(y, minlength=len(weights))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(y, pa.int32()),
                                 "features": pa.array(list(x), pa.list_(pa.float32()))}),
                       out / f"part-{f:05d}.parquet", row_group_size=row_group or n)
    write_info(out, DatasetInfo(kind="features", n_classes=len(weights), n_features=d,
                                class_counts={str(c): int(v) for c, v in enumerate(counts)}))
    return labels, counts


def _epoch(path, world, batch, rates, seed, epoch):
    info = read_info(str(path))
    out = []
    for r in range(world):
        loader = make_loader(str(path), info, r, world, batch, epoch=epoch, seed=seed, with_ids=True,
                             rates=rates, sample_seed=seed)
        out.append((len(loader), list(loader)))
    return out


def _real_counts(per_rank) -> Counter:
    return Counter(i for _, bs in per_rank for b in bs for i in b[2][~b[3]].tolist())


# ------------------------------------------------------------------ in one process
def test_ros_rates_exact_per_row_equal_steps_uneven_shards(tmp_path):
    from pipeline.prep.sampling import plan_counts
    from pipeline.train.loop import read_sampling_spec, static_read_rates

    path = tmp_path / "t"
    labels, counts = write_uneven_table(path, [1500, 260, 90], row_group=200)
    cfg = load_config(None, ["train.read_sampling={strategy: ros, target: auto}"])
    rates = static_read_rates(read_sampling_spec(cfg.train), counts.astype(float))
    plan = plan_counts({i: int(n) for i, n in enumerate(counts)}, "ros", "auto")
    assert rates.tolist() == pytest.approx([plan[i] / counts[i] for i in range(K)])
    assert rates[0] == 1.0 and all(r > 1 for r in rates[1:])       # ROS to the majority's size
    seed, batch = 11, 64
    per_rank = _epoch(path, 2, batch, rates.tolist(), seed, 0)
    want = {i: _copies(i, c, rates, seed, 0) for i, c in labels.items()}
    got = _real_counts(per_rank)
    assert got == Counter({i: m for i, m in want.items() if m})     # every row exactly its multiplicity
    for i, c in labels.items():                                      # integer part exact: ⌊r⌋ or ⌈r⌉
        assert np.floor(rates[c]) <= got[i] <= np.ceil(rates[c])
    # equal steps: both ranks run ceil(max sampled shard / batch) steps with identical batch sizes
    shard = [sum(want[i] for i in ids) for ids in _shard_ids(path, 2)]
    assert sampled_shard_rows(str(path), 2, "label", rates, seed, 0) == shard
    steps = -(-max(shard) // batch)
    assert [len(bs) for _, bs in per_rank] == [n for n, _ in per_rank] == [steps, steps]
    assert [len(b[1]) for b in per_rank[0][1]] == [len(b[1]) for b in per_rank[1][1]]
    for r in range(2):                                               # fill rows come from the own shard
        own = set(_shard_ids(path, 2)[r])
        fill = [i for b in per_rank[r][1] for i in b[2][b[3]].tolist()]
        assert len(fill) == max(shard) - shard[r] and set(fill) <= own
    # statistical part: per class, achieved vs r·n within 4.5 binomial standard deviations
    by_class = Counter()
    for i, m in got.items():
        by_class[labels[i]] += m
    for c in range(K):
        frac = rates[c] - np.floor(rates[c])
        sd = np.sqrt(counts[c] * frac * (1 - frac))
        assert abs(by_class[c] - rates[c] * counts[c]) <= 4.5 * sd + 1e-9, (c, by_class[c], rates[c] * counts[c])


def _shard_ids(path, world):
    from pipeline.stream.readers import iter_row_group_columns

    out = [[] for _ in range(world)]
    for i, t in iter_row_group_columns(str(path), ["id"]):
        out[i % world] += t.column("id").to_pylist()
    return out


def test_rus_threshold_floor_expectations_over_epochs(tmp_path):
    """Several strategies: per-class totals average to their targets over epochs (no data written)."""
    from pipeline.train.loop import read_sampling_spec, static_read_rates

    path = tmp_path / "t"
    labels, counts = write_uneven_table(path, [900, 700], row_group=400, seed=3)
    cases = {"{strategy: rus, target: auto}": np.full(K, counts.min()),
             "{strategy: threshold, cap: 250}": np.minimum(counts, 250),
             "{strategy: floor, floor: 300}": np.maximum(counts, 300),
             "{strategy: rates, rates: {0: 0.25, 3: 2.5}}": counts * np.array([0.25, 1, 1, 2.5])}
    for text, target in cases.items():
        rates = static_read_rates(read_sampling_spec(load_config(None, [f"train.read_sampling={text}"]).train),
                                  counts.astype(float))
        np.testing.assert_allclose(rates * counts, target)
        totals = np.zeros(K)
        n_ep = 4
        for epoch in range(n_ep):
            (n, bs), = _epoch(path, 1, 128, rates.tolist(), 5, epoch)
            got = _real_counts([(n, bs)])
            for i, m in got.items():
                totals[labels[i]] += m
            assert sum(got.values()) == sum(_copies(i, c, rates, 5, epoch) for i, c in labels.items())
        frac = rates - np.floor(rates)
        sd = np.sqrt(n_ep * counts * frac * (1 - frac))
        assert np.all(np.abs(totals - n_ep * target) <= 4.5 * sd + 1e-9), (text, totals / n_ep, target)


def test_deterministic_per_seed_and_epoch_and_different_across_epochs(tmp_path):
    path = tmp_path / "t"
    write_uneven_table(path, [400, 300, 100], row_group=100, seed=1)
    rates = [0.5, 1.5, 2.0, 3.7]
    a = _real_counts(_epoch(path, 2, 32, rates, 7, 1))
    b = _real_counts(_epoch(path, 2, 32, rates, 7, 1))
    c = _real_counts(_epoch(path, 2, 32, rates, 7, 2))
    d = _real_counts(_epoch(path, 2, 32, rates, 8, 1))
    assert a == b                                   # same (seed, epoch): the same draw
    assert a != c and a != d                        # another epoch or seed: another draw
    # the draw does not depend on the number of workers (it is a function of the row's id)
    assert _real_counts(_epoch(path, 1, 32, rates, 7, 1)) == a


def test_default_off_and_bad_configs(tmp_path):
    from pipeline.train.loop import epoch_read_rates, read_sampling_spec

    assert read_sampling_spec(load_config(None, []).train) is None           # default: off
    assert epoch_read_rates(None, np.ones(3), 0, []) is None
    path = tmp_path / "t"
    write_uneven_table(path, [100, 60])
    info = read_info(str(path))
    plain = make_loader(str(path), info, 0, 1, 16)
    assert plain.rates is None and len(plain) == 10
    for bad, match in [("{strategy: smote}", "strategy"), ("{strategy: ros, tgt: 3}", "read_sampling.tgt"),
                       ("{strategy: rates}", "rates"), ("{strategy: dynamic, initial: x}", "initial")]:
        with pytest.raises(ConfigError, match=match):
            read_sampling_spec(load_config(None, [f"train.read_sampling={bad}"]).train)
    with pytest.raises(ConfigError, match="one or the other"):
        read_sampling_spec(load_config(None, ["train.read_sampling={strategy: ros}",
                                              "train.method_params={dynamic_sampling: true}"]).train)
    with pytest.raises(InputError, match="petastorm"):
        make_loader(str(path), info, 0, 1, 16, reader="ray_data", rates=[1, 1, 1, 1])
    with pytest.raises(InputError, match="rates"):
        make_loader(str(path), info, 0, 1, 16, rates=[1, 1])
    with pytest.raises(InputError, match="no row"):
        make_loader(str(path), info, 0, 1, 16, rates=[0, 0, 0, 0])
    from pipeline.train.trainer import train_local
    cfg = load_config(None, ["model.name=mlp", "train.progress=false", "train.read_sampling={strategy: dynamic}"])
    with pytest.raises(InputError, match="validation"):
        train_local(cfg, str(path), None, str(tmp_path / "o"))


def test_dynamic_sampling_follows_eq11_in_the_loop(tmp_path):
    """train_local with dynamic sampling: epoch e's rates are Eq. 11 of epoch e-1's validation F1,
    and the loop really read that many rows (exact count from the hash)."""
    from pipeline.train.trainer import train_local

    tr, va = tmp_path / "tr", tmp_path / "va"
    ids, y, _ = write_gaussian_table(tr, 1600, K, d=6, weights=[8, 4, 2, 1], files=3, seed=0, spread=1.5)
    write_gaussian_table(va, 600, K, d=6, files=2, seed=1, start_id=10**6, spread=1.5)
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[16]", "train.epochs=3", "train.batch_size=64",
                             "train.lr=0.02", "train.progress=false", "stream.workers_count=1",
                             "train.method_params={dynamic_sampling: true}",
                             "train.read_sampling={strategy: dynamic, epoch_rows: table, initial: balanced}"])
    r = train_local(cfg, str(tr), str(va), str(tmp_path / "out"))
    h = r["history"]
    counts = np.bincount(y, minlength=K).astype(float)
    n_star = counts.sum()                                      # epoch_rows: table
    labels = dict(zip(ids.tolist(), y.tolist()))
    assert h[0]["read_rates"] == pytest.approx((n_star / K / counts).tolist())   # balanced first epoch
    for e in range(1, 3):
        f1 = np.array([0.0 if v is None else v for v in h[e - 1]["val_f1_per_class"]])
        miss = 1 - f1
        want = miss / miss.sum() * n_star / counts             # Eq. 11 size / class size
        assert h[e]["read_rates"] == pytest.approx(want.tolist(), rel=1e-12)
    for e in range(3):
        rows = sum(_copies(i, c, h[e]["read_rates"], 0, e) for i, c in labels.items())
        assert h[e]["rows"] == rows                            # one worker: no fill rows
    assert h[1]["read_rates"] != h[2]["read_rates"]
    meta = json.loads((tmp_path / "out" / "model" / "model.json").read_text())
    assert meta["history"][2]["read_rates"] == h[2]["read_rates"]


# ------------------------------------------------------------------ inside real Ray Train workers
def _probe_worker(config):
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    info = DatasetInfo(**config["info"])
    log = {}
    for epoch in range(2):
        loader = make_loader(config["path"], info, rank, world, 32, epoch=epoch, seed=4, with_ids=True,
                             rates=config["rates"], sample_seed=4)
        steps = []
        for x, y, ids, fill in loader:
            t = torch.ones(1)
            dist.all_reduce(t)                              # a collective per step, as DDP does
            steps.append({"ids": ids.tolist(), "fill": fill.tolist()})
        log[epoch] = {"len": len(loader), "steps": steps}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(log))


def test_ray_two_workers_equal_steps_and_dynamic_training(ray_local, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    path = tmp_path / "t"
    labels, counts = write_uneven_table(path, [700, 40], row_group=700, seed=2)
    rates = [0.3, 1.0, 2.5, 6.2]
    out = tmp_path / "probe"
    out.mkdir()
    TorchTrainer(_probe_worker,
                 train_loop_config={"path": str(path), "info": read_info(str(path)).to_dict(), "rates": rates,
                                    "out": str(out)},
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="probe-sampled")).fit()
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        a, b = logs[0][epoch], logs[1][epoch]
        assert a["len"] == b["len"] == len(a["steps"]) == len(b["steps"])
        got = Counter(i for lg in (a, b) for s in lg["steps"] for i, f in zip(s["ids"], s["fill"]) if not f)
        want = {i: _copies(i, c, rates, 4, int(epoch)) for i, c in labels.items()}
        assert got == Counter({i: m for i, m in want.items() if m})
        shard0 = sum(m for i, m in want.items() if (i - 3) // 7 < 700)
        assert a["len"] == -(-shard0 // 32)                   # the big shard sets the steps

    # full training through Ray Train V2 with dynamic sampling: equal steps (or DDP would hang),
    # rates equal to Eq. 11 of the previous epoch's F1, rows = 2 × the largest sampled shard
    from pipeline.train.trainer import train_model

    tr, va = tmp_path / "tr", tmp_path / "va"
    ids, y, _ = write_gaussian_table(tr, 1200, K, d=6, weights=[8, 4, 2, 1], files=3, seed=0, spread=1.5)
    write_gaussian_table(va, 400, K, d=6, files=2, seed=1, start_id=10**6, spread=1.5)
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[16]", "train.epochs=2", "train.batch_size=64",
                             "train.lr=0.02", "train.progress=false", "stream.workers_count=1",
                             "train.num_workers=2", "train.read_sampling={strategy: dynamic, seed: 9}"])
    res = train_model(cfg, str(tr), str(va), str(tmp_path / "run"))
    h = res["history"]
    counts = np.bincount(y, minlength=K).astype(float)
    assert h[0]["read_rates"] == [1.0] * K                      # initial: ones
    f1 = np.array([0.0 if v is None else v for v in h[0]["val_f1_per_class"]])
    want = (1 - f1) / (1 - f1).sum() * counts.mean() / counts   # Eq. 11 with N* = average class size
    assert h[1]["read_rates"] == pytest.approx(want.tolist(), rel=1e-12)
    for e in range(2):
        shards = sampled_shard_rows(str(tr), 2, "label", h[e]["read_rates"], 9, e)
        assert h[e]["rows"] == 2 * max(shards)
        assert h[e]["steps"] == -(-max(shards) // 64)


def test_shard_emptied_by_sampling_fills_from_its_plain_rows(tmp_path):
    """A shard whose every row gets rate 0 still runs the same steps, with fill rows of its own."""
    path = tmp_path / "t"
    path.mkdir()
    for f, (lab, n, start) in enumerate([(0, 300, 0), (1, 120, 1000)]):
        ids = np.arange(start, start + n)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(np.full(n, lab), pa.int32()),
                                 "features": pa.array(list(np.ones((n, 3), np.float32)), pa.list_(pa.float32()))}),
                       path / f"part-{f:05d}.parquet")
    write_info(path, DatasetInfo(kind="features", n_classes=2, n_features=3, class_counts={"0": 300, "1": 120}))
    per_rank = _epoch(path, 2, 64, [1.5, 0.0], 3, 0)
    (n0, b0), (n1, b1) = per_rank
    want0 = sum(_copies(i, 0, [1.5, 0.0], 3, 0) for i in range(300))
    assert n0 == n1 == len(b0) == len(b1) == -(-want0 // 64)
    assert not any(b[3].any() for b in b0)                              # the big shard needs no fill
    assert all(b[3].all() for b in b1)                                  # rank 1 sampled nothing: all fill
    assert set(torch.cat([b[2] for b in b1]).tolist()) <= set(range(1000, 1120))
    assert sum(len(b[1]) for b in b1) == want0
