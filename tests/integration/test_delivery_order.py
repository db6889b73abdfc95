"""The Petastorm reader delivers the same batches on every run for a given seed, with several reader
threads: the replayed start order is checked against Petastorm itself (one thread, where arrival
order is start order), and the loader's batches against themselves over repeated reads."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data.schema import read_info
from pipeline.io import file_url
from pipeline.stream.delivery_order import ventilation_order
from pipeline.stream.readers import make_loader, row_group_keys, row_group_rows
from tests.integration.test_stream import write_gaussian_table


def _first_ids(path: Path) -> dict:
    """First id of every row group → its index in Petastorm's enumeration (footers + id column)."""
    from pipeline.stream.readers import iter_row_group_columns

    return {int(t.column("id")[0].as_py()): i for i, t in iter_row_group_columns(str(path), ["id"]) if len(t)}


@pytest.mark.parametrize("shard", [None, (0, 3), (2, 3)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_replayed_order_is_petastorms_own(tmp_path, shard, shuffle):
    from petastorm import make_batch_reader

    path = tmp_path / "t"
    write_gaussian_table(path, 1500, files=5, row_group=100)        # 15 row groups
    first = _first_ids(path)
    rank, count = shard or (0, None)
    passes = 1 if shuffle else 2       # fill readers pass again, in an unshuffled order
    with make_batch_reader(file_url(path), reader_pool_type="thread", workers_count=1, seed=11,
                           shuffle_row_groups=shuffle, shuffle_rows=False, num_epochs=passes,
                           cur_shard=shard[0] if shard else None, shard_count=count) as reader:
        got = [first[int(b.id[0])] for b in reader]
    want = list(ventilation_order(row_group_rows(str(path)), rank, count, 11, shuffle, passes))
    assert got == want and len(want) == passes * len(set(want))


def _epoch(path, info, rank=0, world=1, epoch=0, **kw):
    loader = make_loader(str(path), info, rank, world, 64, epoch=epoch, seed=7, with_ids=True, **kw)
    return [tuple(t.clone() for t in b) for b in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(all(torch.equal(u, v) for u, v in zip(p, q)) for p, q in zip(a, b))


@pytest.mark.parametrize("statistics", [True, False])
def test_four_reader_threads_give_identical_batches_every_read(tmp_path, statistics):
    """Many small row groups and four threads: thread completion order varies from read to read, the
    batches (rows, order, fill rows of the smaller shard) must not. Without footer statistics the
    row groups are recognised by a digest of their ids."""
    path = tmp_path / "t"
    write_gaussian_table(path, 2630, files=3, row_group=40)
    if not statistics:
        for f in sorted(path.glob("*.parquet")):
            t = pq.read_table(f)
            pq.write_table(t, f, row_group_size=40, write_statistics=False)
    assert row_group_keys(str(path))[0] == ("range" if statistics else "digest")
    info = read_info(path)
    for rank in (0, 1):
        runs = [_epoch(path, info, rank, 2, workers_count=4) for _ in range(4)]
        assert all(_same(runs[0], r) for r in runs[1:])
        ids = torch.cat([b[2][~b[3]] for b in runs[0]]).tolist()
        assert len(ids) == len(set(ids))                              # each row of the shard once
    one = torch.cat([b[2] for b in _epoch(path, info, workers_count=1)]).tolist()
    four = torch.cat([b[2] for b in _epoch(path, info, workers_count=4)]).tolist()
    assert one == four                                                # and the thread count does not matter
    assert one != torch.cat([b[2] for b in _epoch(path, info, epoch=1, workers_count=4)]).tolist()
    assert one != sorted(one)                                         # rows are shuffled, within and across row groups


def test_read_time_sampling_is_identical_every_read(tmp_path):
    path = tmp_path / "t"
    write_gaussian_table(path, 1200, files=2, row_group=50, weights=[6, 3, 2, 1])
    info = read_info(path)
    kw = dict(workers_count=3, rates=[0.5, 1.0, 2.0, 4.5], sample_seed=3)
    runs = [_epoch(path, info, 1, 2, **kw) for _ in range(3)]
    assert all(_same(runs[0], r) for r in runs[1:])


def test_shuffle_buffer_mixes_row_groups_in_seeded_blocks(tmp_path):
    path = tmp_path / "t"
    ids, _, _ = write_gaussian_table(path, 800, files=2, row_group=50)
    info = read_info(path)
    a = _epoch(path, info, workers_count=2, shuffle_buffer=400)
    assert _same(a, _epoch(path, info, workers_count=2, shuffle_buffer=400))
    first = a[0][2].numpy()
    groups = {int(i) // 50 for i in first}                             # row groups hold consecutive ids
    assert len(groups) > 2                                             # a batch draws on several row groups
    assert sorted(torch.cat([b[2] for b in a]).tolist()) == sorted(ids.tolist())


def test_a_row_group_outside_the_replayed_order_is_an_error(tmp_path):
    from pipeline.stream.delivery_order import in_delivery_order

    out = list(in_delivery_order([3, 1, 2], iter([1, 2, 3]), lambda r: r, max_waiting=2))
    assert out == [1, 2, 3]
    with pytest.raises(RuntimeError, match="ahead of the one expected next"):
        list(in_delivery_order([9, 8, 7, 1], iter([1, 2, 3]), lambda r: r, max_waiting=2))
    with pytest.raises(RuntimeError, match="still expected"):
        list(in_delivery_order([1, 2], iter([1, 2, 3]), lambda r: r, max_waiting=2))
