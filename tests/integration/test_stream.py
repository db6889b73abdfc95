"""Sharded readers on real Parquet: equal steps on uneven shards, every row once, exact decoding,
and the same guarantees inside real Ray Train workers (Petastorm and Ray Data readers)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data.schema import DatasetInfo, read_info, write_info
from pipeline.errors import InputError
from pipeline.stream.readers import make_loader, row_group_rows, shard_rows, steps_per_epoch


# ------------------------------------------------------------------ table builders (shared by the train tests)
def write_image_table(out, sizes, shape=(8, 8), n_classes=3, seed=0, row_group=None, start_id=0):
    """Raw uint8 images, one Parquet file per entry of ``sizes``; returns {id: (label, uint8 array)}."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    truth, nid = {}, start_id
    counts = np.zeros(n_classes, dtype=int)
    for i, n in enumerate(sizes):
        ids = np.arange(nid, nid + n)
        nid += n
        y = rng.integers(0, n_classes, n)
        img = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        for k in range(n):
            truth[int(ids[k])] = (int(y[k]), img[k])
        counts += np.bincount(y, minlength=n_classes)
        t = pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(y, pa.int32()),
                      "copy": pa.array(np.zeros(n, np.int32)),
                      "image": pa.array([r.tobytes() for r in img], pa.binary())})
        pq.write_table(t, out / f"part-{i:05d}.parquet", row_group_size=row_group or max(n, 1))
    write_info(out, DatasetInfo(kind="image", n_classes=n_classes, image_shape=list(shape),
                                class_counts={str(c): int(v) for c, v in enumerate(counts)}))
    return truth


def write_gaussian_table(out, n, n_classes=4, d=8, files=4, seed=0, weights=None, start_id=0, spread=1.0,
                         row_group=None):
    """Tabular Gaussian classes (means fixed by a constant seed, so train/val/test agree)."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(12345).normal(0, spread, (n_classes, d))
    p = np.asarray(weights if weights is not None else np.ones(n_classes), float)
    p /= p.sum()
    y = rng.choice(n_classes, n, p=p)
    x = (means[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    ids = np.arange(start_id, start_id + n)
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        t = pa.table({"id": pa.array(ids[part], pa.int64()), "label": pa.array(y[part], pa.int32()),
                      "copy": pa.array(np.zeros(len(part), np.int32)),
                      "features": pa.array(list(x[part]), pa.list_(pa.float32()))})
        pq.write_table(t, out / f"part-{i:05d}.parquet", row_group_size=row_group or max(len(part), 1))
    counts = np.bincount(y, minlength=n_classes)
    write_info(out, DatasetInfo(kind="features", n_classes=n_classes, n_features=d,
                                class_counts={str(i): int(c) for i, c in enumerate(counts)}))
    return ids, y, x


def _collect(path, world, batch_size, epoch=0, seed=0, **kw):
    info = read_info(path)
    per_rank = []
    for r in range(world):
        loader = make_loader(str(path), info, r, world, batch_size, epoch=epoch, seed=seed, with_ids=True, **kw)
        batches = list(loader)
        per_rank.append((len(loader), batches))
    return per_rank


# ------------------------------------------------------------------ in-process (no Ray) checks
def test_uneven_shards_equal_steps_and_every_row_once(tmp_path):
    path = tmp_path / "uneven"
    truth = write_image_table(path, [700, 23], shape=(4, 4))          # 1 big and 1 tiny file
    assert shard_rows(str(path), 2) == [700, 23]
    per_rank = _collect(path, 2, 64)
    steps = [len(b) for _, b in per_rank]
    assert steps[0] == steps[1] == per_rank[0][0] == per_rank[1][0] == steps_per_epoch(str(path), 2, 64) == 11
    # identical batch sizes at every step on both workers (DDP needs the same number of steps)
    assert [len(b[1]) for b in per_rank[0][1]] == [len(b[1]) for b in per_rank[1][1]]
    real = np.concatenate([b[2][~b[3]].numpy() for _, bs in per_rank for b in bs])
    assert sorted(real.tolist()) == sorted(truth)                        # every row exactly once
    fill1 = np.concatenate([b[2][b[3]].numpy() for b in per_rank[1][1]])
    own1 = set(np.concatenate([b[2][~b[3]].numpy() for b in per_rank[1][1]]).tolist())
    assert len(fill1) == 700 - 23 and set(fill1.tolist()) <= own1        # fill rows repeat the small shard
    assert not any(b[3].any() for b in per_rank[0][1])                  # the largest shard needs no fill


def test_many_row_groups_three_workers(tmp_path):
    path = tmp_path / "rg"
    truth = write_image_table(path, [500, 301, 77], shape=(4, 4), row_group=60)
    rows = row_group_rows(str(path))
    assert sum(rows) == 878 and len(rows) == 9 + 6 + 2
    per_rank = _collect(path, 3, 32, epoch=1, seed=5)
    assert len({len(bs) for _, bs in per_rank}) == 1
    real = np.concatenate([b[2][~b[3]].numpy() for _, bs in per_rank for b in bs])
    assert len(real) == len(truth) and set(real.tolist()) == set(truth)


def test_decoding_matches_an_independent_per_row_decode(tmp_path):
    path = tmp_path / "rgb"
    truth = write_image_table(path, [50, 40], shape=(5, 6, 3), n_classes=2)
    (_, batches), = _collect(path, 1, 16)
    for x, y, ids, fill in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 5, 6) and y.dtype == torch.int64
        for k in range(len(ids)):
            label, img = truth[int(ids[k])]
            want = img.astype(np.float32).transpose(2, 0, 1) / 255.0       # HWC bytes → CHW floats
            np.testing.assert_allclose(x[k].numpy(), want, rtol=0, atol=1e-7)
            assert int(y[k]) == label


def test_features_decode_and_shuffle_per_epoch(tmp_path):
    path = tmp_path / "feat"
    ids, y, x = write_gaussian_table(path, 600, files=3, row_group=50)
    by_id = {int(i): (int(c), v) for i, c, v in zip(ids, y, x)}
    orders = []
    for epoch in (0, 1):
        (_, batches), = _collect(path, 1, 64, epoch=epoch, seed=3)
        got = torch.cat([b[2] for b in batches]).tolist()
        assert sorted(got) == sorted(by_id)
        orders.append(got)
        xb, yb, ib, _ = batches[0]
        for k in range(len(ib)):
            c, v = by_id[int(ib[k])]
            assert int(yb[k]) == c
            np.testing.assert_array_equal(xb[k].numpy(), v)
    assert orders[0] != orders[1]                                        # reshuffled per epoch
    (_, again), = _collect(path, 1, 64, epoch=0, seed=3, shuffle=False)
    assert sorted(torch.cat([b[2] for b in again]).tolist()) == sorted(by_id)


def test_bad_inputs_are_one_line_errors(tmp_path):
    path = tmp_path / "one"
    write_image_table(path, [30], shape=(4, 4))
    info = read_info(str(path))
    with pytest.raises(InputError, match="row group"):
        make_loader(str(path), info, 0, 2, 8)                            # 1 row group, 2 workers
    with pytest.raises(InputError, match="stream.reader"):
        make_loader(str(path), info, 0, 1, 8, reader="tfrecord")
    bad = DatasetInfo(kind="image", n_classes=3, image_shape=[5, 5])     # wrong shape for 16-byte rows
    with pytest.raises(InputError, match="bytes"):
        list(make_loader(str(path), bad, 0, 1, 8))


# ------------------------------------------------------------------ inside real Ray Train workers
def _probe_worker(config):
    """Per worker: iterate the loader, all-reduce every step (hangs/fails if step counts differ),
    and record the ids of every step."""
    import torch.distributed as dist
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    info = DatasetInfo(**config["info"])
    log = {}
    for epoch in range(config["epochs"]):
        loader = make_loader(config["path"], info, rank, world, config["batch"], epoch=epoch, seed=1,
                             reader=config["reader"], with_ids=True)
        steps = []
        for x, y, ids, fill in loader:
            t = torch.ones(1)
            dist.all_reduce(t)                                           # a collective per step, like DDP
            assert int(t.item()) == world
            steps.append({"ids": ids.tolist(), "fill": fill.tolist(), "n": len(y)})
        log[epoch] = {"len": len(loader), "steps": steps}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(log))


def _run_probe(path, out, reader, epochs=2, batch=64):
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.stream.readers import ray_dataset

    info = read_info(str(path))
    datasets = {"train": ray_dataset(str(path), info)} if reader == "ray_data" else None
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _probe_worker,
        train_loop_config={"path": str(path), "info": info.to_dict(), "epochs": epochs, "batch": batch,
                           "reader": reader, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name=f"probe-{reader}"),
        datasets=datasets)
    trainer.fit()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ray_workers_petastorm_equal_steps_each_row_once(ray_local, tmp_path):
    path = tmp_path / "uneven"
    truth = write_image_table(path, [900, 31], shape=(4, 4))
    logs = _run_probe(path, tmp_path / "probe", "petastorm")
    for epoch in ("0", "1"):
        a, b = logs[0][epoch], logs[1][epoch]
        assert a["len"] == b["len"] == len(a["steps"]) == len(b["steps"]) == 15   # ceil(900 / 64)
        assert [s["n"] for s in a["steps"]] == [s["n"] for s in b["steps"]]
        real = [i for lg in (a, b) for s in lg["steps"] for i, f in zip(s["ids"], s["fill"]) if not f]
        assert sorted(real) == sorted(truth)


def test_ray_workers_ray_data_reader_equal_steps(ray_local, tmp_path):
    path = tmp_path / "rd"
    truth = write_image_table(path, [300, 61], shape=(4, 4))
    logs = _run_probe(path, tmp_path / "probe", "ray_data", epochs=1, batch=32)
    a, b = logs[0]["0"], logs[1]["0"]
    assert len(a["steps"]) == len(b["steps"]) == a["len"]
    seen = [i for lg in (a, b) for s in lg["steps"] for i in s["ids"]]
    assert len(seen) == len(set(seen))                                  # no row twice
    assert len(truth) - len(seen) <= 1                                   # equal split drops < world_size rows
    assert set(seen) <= set(truth)


def test_ray_data_reader_in_one_process(ray_local, tmp_path):
    path = tmp_path / "rd1"
    truth = write_image_table(path, [120, 40], shape=(4, 4))
    info = read_info(str(path))
    loader = make_loader(str(path), info, 0, 1, 50, reader="ray_data", with_ids=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    ids = torch.cat([b[2] for b in batches]).tolist()
    assert sorted(ids) == sorted(truth)
    x, y, i, _ = batches[0]
    label, img = truth[int(i[0])]
    np.testing.assert_allclose(x[0, 0].numpy(), img / 255.0, atol=1e-7)
    assert int(y[0]) == label
    assert os.environ.get("RAY_TRAIN_V2_ENABLED", "1") != "0"
