"""A deterministic delivery order for Petastorm's parallel reader.

With two or more reader threads, Petastorm hands out row groups in the order the threads finish
them, which changes from run to run, and so would the trained weights. The order in which it
*starts* them is deterministic, though: for ``make_batch_reader(seed=s, cur_shard=r,
shard_count=w, shuffle_row_groups=…)`` (Petastorm 0.12)

1. the row group indexes ``0..n-1`` are shuffled by ``random.Random(s)`` and row group ``i``
   kept by shard ``i % w`` (sharded readers only);
2. with ``shuffle_row_groups``, the kept list is shuffled in place by
   ``numpy.random.RandomState(s)`` before the first pass;
3. row groups without rows produce nothing.

Petastorm reshuffles before every later pass too, but as many times as its ventilation thread
finds the queue full at that moment, so the order of a second pass depends on timing: readers
that pass more than once (``num_epochs`` > 1 or None) must not shuffle row groups, and
:func:`ventilation_order` refuses to replay that.

:func:`ventilation_order` replays that order, and :func:`in_delivery_order` puts the arriving row
groups back into it: each arrival is recognised by a key of its ``id`` column
(:func:`pipeline.stream.readers.row_group_keys`), arrivals that are early wait in a small buffer
(at most the reader's own in-flight row groups), and a row group that the replayed order cannot
explain is an error rather than a silent change of order.
"""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict, deque
from typing import Callable, Hashable, Iterable, Iterator, Optional, Sequence

import numpy as np

_END = object()


def ventilation_order(rows_per_group: Sequence[int], rank: int, shard_count: Optional[int], seed: int,
                      shuffle: bool, num_epochs: Optional[int]) -> Iterator[int]:
    """The row group indexes a Petastorm reader delivers, in the order it starts them (see the
    module docstring); ``shard_count=None`` for an unsharded reader, ``num_epochs=None`` forever."""
    if shuffle and num_epochs != 1:
        raise ValueError("Petastorm's order of a second pass with shuffled row groups depends on timing")
    idx = list(range(len(rows_per_group)))
    if shard_count:
        random.Random(seed).shuffle(idx)
        idx = [i for i in idx if i % shard_count == rank]
    if not any(rows_per_group[i] > 0 for i in idx):
        return
    if shuffle:
        np.random.RandomState(seed).shuffle(idx)
    passes = 0
    while num_epochs is None or passes < num_epochs:
        yield from (i for i in idx if rows_per_group[i] > 0)
        passes += 1


def id_key(ids: np.ndarray, kind: str) -> Hashable:
    """The key a row group is recognised by: ``(min id, max id, rows)`` (``kind="range"``, what the
    Parquet footer's statistics give) or a BLAKE2b digest of the ids in file order (``"digest"``)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if kind == "range":
        return (int(ids.min()), int(ids.max()), len(ids)) if len(ids) else (None, None, 0)
    return hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()


def in_delivery_order(results: Iterable, expected: Iterator[Hashable], key_of: Callable[[object], Hashable],
                      max_waiting: int) -> Iterator:
    """``results`` (in whatever order they finish) in the order of ``expected`` keys.

    Early arrivals wait; more than ``max_waiting`` of them, a key that is never expected, or a
    reader that ends before the expected keys do, raise ``RuntimeError``. Two arrivals with one key
    (one row group read in two passes of an infinite reader) are the same rows and interchangeable.
    """
    waiting: dict = defaultdict(deque)
    n_waiting = 0
    want = next(expected, _END)
    for r in results:
        k = key_of(r)
        if k != want:
            waiting[k].append(r)
            n_waiting += 1
            if n_waiting > max_waiting:
                raise RuntimeError(f"the Petastorm reader delivered {n_waiting} row groups ahead of the one "
                                   f"expected next ({want}): its order no longer matches the replayed one")
            continue
        yield r
        want = next(expected, _END)
        while want is not _END and waiting.get(want):
            yield waiting[want].popleft()
            n_waiting -= 1
            want = next(expected, _END)
    if want is not _END or n_waiting:
        raise RuntimeError(f"the Petastorm reader ended with row group {want} still expected and "
                           f"{n_waiting} delivered out of the replayed order")


__all__ = ["id_key", "in_delivery_order", "ventilation_order"]
