"""Sharded readers: materialized Parquet → batches of ``(x float tensor, y long tensor)`` per worker.

Two readers sit behind one interface, :func:`make_loader`:

``petastorm`` (default)
    ``petastorm.make_batch_reader(file_url(path), cur_shard=rank, shard_count=world_size,
    num_epochs=1, seed=seed + epoch, shuffle_row_groups)`` with ``workers_count`` reader threads.
    Petastorm shards by row group: row group *i* (in Petastorm's own, sorted enumeration) goes to
    shard ``i % world_size``. The batches are **the same on every run** for a given seed: the row
    groups are put back into the order Petastorm started them, whichever thread finished first
    (:mod:`pipeline.stream.delivery_order`), and rows are permuted by seeded generators instead of
    Petastorm's per-thread row shuffle and ``BatchedDataLoader``'s unseeded shuffling queue. Each
    row group arrives whole and is cut into batches here, so nothing runs per row (what
    ``BatchedDataLoader`` is for).
``ray_data``
    ``ray.data.read_parquet`` → ``ray.train.get_dataset_shard(name)`` →
    ``iter_torch_batches(collate_fn=...)``; inside Ray Train the driver passes the datasets to
    ``TorchTrainer`` (see :mod:`pipeline.train.trainer`), outside it (one process) the table is
    read directly.

Decoding is vectorised: the raw ``image`` bytes of a whole row group are joined and viewed with
one ``np.frombuffer`` as ``(N, H, W, C)`` uint8, then permuted to ``(N, C, H, W)`` and scaled to
float32 / 255 per batch; ``features`` arrays are stacked into ``(N, D)`` float32. No Python runs
per row.

**Equal steps.** DDP hangs when one worker runs more steps than another, and shards of row
groups are rarely equal. Every worker therefore runs exactly
``steps = ceil(max_shard_rows / batch_size)`` steps per epoch, computed from the Parquet footers
(row counts only, no data read): a worker first yields its whole shard once (so an epoch covers
every row), then tops up with *fill* rows drawn again from its own shard, as PyTorch's
``DistributedSampler`` pads by repeating samples. Every worker yields the same number of rows
(``max_shard_rows``) in batches of the same sizes. With ``with_ids=True`` batches also carry the
row ids and a boolean ``fill`` mask, which is how the tests check "every row exactly once".

The Ray Data reader splits with ``streaming_split(equal=True)`` (Ray Train's default), which gives
every worker the same number of rows by dropping at most ``world_size - 1`` rows per epoch.

**Read-time sampling** (ROS / RUS / thresholds / floors / dynamic sampling without
writing a duplicate to disk). With per-class ``rates`` the Petastorm reader emits every row
:func:`pipeline.stream.read_sampling.row_multiplicity` times — ⌊r⌋ copies plus one more with probability
frac(r), r = rates[label], decided by a hash of ``(sample_seed, epoch, id)`` — so the draw is the
same on every worker and every rerun and changes from epoch to epoch. The copies of a chunk are
mixed by a seeded block shuffle (blocks of ``max(shuffle_buffer, 8 × batch_size)`` rows). Equal
steps stay exact: before the epoch every worker reads the ``id`` and label columns of all row
groups (about 12 bytes a row, no features or images), computes every shard's exact sampled row
count (:func:`sampled_shard_rows`), and runs ``ceil(max / batch_size)`` steps, topping up with fill
rows drawn from its own sampled shard as above. Only the Petastorm reader samples
(``streaming_split`` decides row placement at run time, so per-worker totals are not known ahead).

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
"""
from __future__ import annotations

import math
import re
import typing
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Optional

import numpy as np
import torch

from pipeline.config import StreamReader
from pipeline.data.schema import DatasetInfo
from pipeline.errors import InputError
from pipeline.io import file_url, local_path
from pipeline.stream.delivery_order import id_key, in_delivery_order, ventilation_order
from pipeline.stream.read_sampling import row_multiplicity

READERS = typing.get_args(StreamReader)

# Petastorm 0.12 drives pyarrow 14's legacy dataset API, which warns on every call.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(petastorm|pipeline\.stream)")
warnings.filterwarnings("ignore", message=r".*NumPy array is not writable.*", category=UserWarning)
ID_COL = "id"


# ------------------------------------------------------------------ decoding (shared)
def decode_images(col, image_shape) -> torch.Tensor:
    """Raw uint8 image bytes (one per row, all the same length) → uint8 tensor (N, C, H, W).

    ``col`` is a NumPy object array of ``bytes`` (Petastorm, pandas), a ``pyarrow`` binary array
    (read straight from its value buffer, no per-row objects at all), or one contiguous buffer
    (``bytes``/``memoryview``/uint8 ndarray) holding N images back to back.
    """
    shape = list(image_shape)
    h, w = int(shape[0]), int(shape[1])
    c = int(shape[2]) if len(shape) > 2 else 1
    per_row = h * w * c
    if isinstance(col, (bytes, bytearray, memoryview)) or (isinstance(col, np.ndarray) and col.dtype == np.uint8):
        buf = memoryview(np.ascontiguousarray(col)).cast("B") if isinstance(col, np.ndarray) else col
        n = len(buf) // per_row
    else:
        n = len(col)
        buf = _binary_values(col)
        if buf is None:
            buf = b"".join(col)
    if len(buf) != n * per_row:
        raise InputError(f"image column holds {len(buf)} bytes for {n} rows; expected {per_row} bytes "
                         f"per row for image_shape {shape} (raw uint8)")
    with warnings.catch_warnings():  # bytes are read-only; the tensor is only read from
        warnings.simplefilter("ignore", UserWarning)
        t = torch.frombuffer(buf, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
    t = t.view(n, h, w, c)
    return t.permute(0, 3, 1, 2) if c > 1 else t.view(n, 1, h, w)


def _binary_values(col):
    """The concatenated values of a pyarrow binary array without nulls (zero copy), else None."""
    try:
        # deferred: pyarrow is slow to import
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        return None
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            col = col.chunk(0)
        else:
            col = col.combine_chunks()
    if not isinstance(col, pa.Array):
        return None
    if col.null_count:
        raise InputError("image column has null values")
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + len(col) + 1]
    data = col.buffers()[2]
    if data is None:
        return b""
    return memoryview(data)[offsets[0]:offsets[-1]]


def decode_features(col, n_features: Optional[int] = None) -> torch.Tensor:
    """``features`` arrays → float32 tensor (N, D): a 2-D array as is, an Arrow list column from its
    flat values, an object array of equal-length arrays with one ``np.stack``."""
    try:
        # deferred: pyarrow is slow to import
        import pyarrow as pa
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(col, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
            if col.null_count:
                raise InputError("features column has null values")
            n = len(col)
            flat = col.flatten().to_numpy(zero_copy_only=False)
            d = flat.size // n if n else int(n_features or 0)
            if n and flat.size != n * d:
                raise InputError("features arrays differ in length")
            arr = flat.reshape(n, d)
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.stack(list(arr)) if len(arr) else np.zeros((0, int(n_features or 0)))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def decode_columns(cols: dict, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns of one chunk (NumPy or Arrow) → (x raw: uint8 images or float features, y long, ids long)."""
    fc = info.feature_col
    if info.kind == "image":
        x = decode_images(cols[fc], info.image_shape)
    else:
        x = decode_features(cols[fc], info.n_features)
    y = torch.as_tensor(np.asarray(_to_numpy(cols[info.label_col]), dtype=np.int64))
    ids = torch.as_tensor(np.asarray(_to_numpy(cols[ID_COL]), dtype=np.int64)) if ID_COL in cols else \
        torch.zeros(len(y), dtype=torch.int64)
    return x, y, ids


def _to_numpy(col):
    if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray):
        try:
            return col.to_numpy(zero_copy_only=False)
        except TypeError:
            return col.to_numpy()
    return col


def to_float(x: torch.Tensor, device=None, non_blocking: bool = False) -> torch.Tensor:
    """uint8 images → float32 in [0, 1] (on ``device``: move the 4x smaller uint8 first);
    float features pass through."""
    if device is not None:
        x = x.to(device, non_blocking=non_blocking)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float() if x.dtype != torch.float32 else x


# ------------------------------------------------------------------ shard arithmetic
def row_group_rows(path: str) -> list[int]:
    """Row count of every row group, in the order Petastorm enumerates (and shards) them.

    Reads Parquet footers only (one per file), never the data.
    """
    return list(_row_group_rows(file_url(path), file_mtime(path)))


def file_mtime(path: str) -> float:
    try:
        return local_path(path).stat().st_mtime
    except OSError:
        return 0.0


@lru_cache(maxsize=64)
def _row_group_rows(url: str, _mtime_key: float) -> tuple:
    # deferred: petastorm and pyarrow are slow to import
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import load_row_groups
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    fs, p = get_filesystem_and_path_or_paths(url)
    dataset = pq.ParquetDataset(p, filesystem=fs, validate_schema=False)
    pieces = load_row_groups(dataset)
    footers: dict = {}
    rows = []
    for piece in pieces:
        md = footers.get(piece.path)
        if md is None:
            with dataset.fs.open(piece.path) as f:
                md = footers[piece.path] = pq.ParquetFile(f).metadata
        rows.append(md.row_group(piece.row_group or 0).num_rows)
    return tuple(rows)


@lru_cache(maxsize=64)
def row_group_index(url: str, _mtime_key: float) -> tuple:
    """((file path, row group index), ...) in Petastorm's enumeration order (footers only)."""
    # deferred: petastorm and pyarrow are slow to import
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import load_row_groups
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    fs, p = get_filesystem_and_path_or_paths(url)
    dataset = pq.ParquetDataset(p, filesystem=fs, validate_schema=False)
    return tuple((piece.path, piece.row_group or 0) for piece in load_row_groups(dataset))


def row_group_keys(path: str) -> tuple[str, tuple]:
    """``(kind, key per row group)`` in Petastorm's order: what
    :func:`pipeline.stream.delivery_order.in_delivery_order` recognises arriving row groups by.

    ``"range"`` keys ``(min id, max id, rows)`` come from the footers' column statistics (no data
    read); where a footer has no statistics for ``id``, or two row groups share a key (ROS copies
    can), the ``id`` column is read once and each row group keyed by a digest of its ids.
    """
    return _row_group_keys(file_url(path), file_mtime(path))


@lru_cache(maxsize=64)
def _row_group_keys(url: str, _mtime_key: float) -> tuple[str, tuple]:
    # deferred: petastorm and pyarrow are slow to import
    import pyarrow.parquet as pq
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    fs, _ = get_filesystem_and_path_or_paths(url)
    footers: dict = {}
    keys = []
    for piece_path, rg in row_group_index(url, _mtime_key):
        md = footers.get(piece_path)
        if md is None:
            with fs.open(piece_path) as f:
                md = footers[piece_path] = pq.ParquetFile(f).metadata
        g = md.row_group(rg)
        col = next((g.column(j) for j in range(g.num_columns) if g.column(j).path_in_schema == ID_COL), None)
        st = col.statistics if col is not None else None
        if g.num_rows and (st is None or not st.has_min_max):
            break
        keys.append((int(st.min), int(st.max), g.num_rows) if g.num_rows else (None, None, 0))
    else:
        if len(set(k for k in keys if k[2])) == sum(1 for k in keys if k[2]):
            return "range", tuple(keys)
    digests = tuple(id_key(t.column(ID_COL).to_numpy(zero_copy_only=False), "digest")
                    for _, t in iter_row_group_columns(url, [ID_COL]))
    return "digest", digests


def iter_row_group_columns(path: str, columns: list) -> Iterator[tuple]:
    """``(row group number, pyarrow Table of columns)`` for every row group, in Petastorm's order.

    Reads only the named columns (one row group at a time, so memory does not grow with rows).
    """
    # deferred: petastorm and pyarrow are slow to import
    import pyarrow.parquet as pq
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    url = file_url(path)
    fs, _ = get_filesystem_and_path_or_paths(url)
    open_path, handle, pf = None, None, None
    try:
        for i, (piece_path, rg) in enumerate(row_group_index(url, file_mtime(path))):
            if piece_path != open_path:
                if handle is not None:
                    handle.close()
                handle = fs.open(piece_path)
                pf, open_path = pq.ParquetFile(handle), piece_path
            yield i, pf.read_row_group(rg, columns=list(columns))
    finally:
        if handle is not None:
            handle.close()


def sampled_shard_rows(path: str, world_size: int, label_col: str, rates, seed: int, epoch: int) -> list[int]:
    """Exact rows every shard emits in ``epoch`` under read-time sampling with per-class ``rates``.

    Σ over the shard's rows of :func:`pipeline.stream.read_sampling.row_multiplicity` (row group ``i`` →
    shard ``i % world_size``, as Petastorm assigns them). Reads the ``id`` and label columns only.
    """
    r = np.asarray(rates, dtype=float)
    out = [0] * world_size
    for i, t in iter_row_group_columns(path, [ID_COL, label_col]):
        ids = t.column(ID_COL).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        labels = t.column(label_col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        out[i % world_size] += int(row_multiplicity(ids, labels, r, seed, epoch).sum())
    return out


def shard_rows(path: str, world_size: int) -> list[int]:
    """Rows per shard under Petastorm's assignment (row group ``i`` → shard ``i % world_size``)."""
    rows = row_group_rows(path)
    out = [0] * world_size
    for i, r in enumerate(rows):
        out[i % world_size] += r
    return out


def steps_per_epoch(path: str, world_size: int, batch_size: int) -> int:
    """The number of steps every worker runs per epoch: ``ceil(max shard rows / batch_size)``."""
    return math.ceil(max(shard_rows(path, world_size)) / batch_size)


def table_rows(path: str) -> int:
    return int(sum(row_group_rows(path)))


# ------------------------------------------------------------------ batching helper
class _Rebatcher:
    """Cut a stream of (x, y, ids, fill) chunks into batches of exactly ``batch_size`` rows."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.parts: list = []
        self.n = 0

    def add(self, part) -> Iterator[tuple]:
        self.parts.append(part)
        self.n += len(part[1])
        while self.n >= self.batch_size:
            yield self._take(self.batch_size)

    def _take(self, k: int) -> tuple:
        if len(self.parts) == 1 and len(self.parts[0][1]) == k:
            out = self.parts[0]
            self.parts, self.n = [], 0
            return out
        cols = [torch.cat([p[i] for p in self.parts]) if len(self.parts) > 1 else self.parts[0][i]
                for i in range(4)]
        out = tuple(c[:k] for c in cols)
        rest = tuple(c[k:] for c in cols)
        self.parts = [rest] if len(rest[1]) else []
        self.n = len(rest[1])
        return out

    def flush(self) -> Iterator[tuple]:
        if self.n:
            yield self._take(self.n)


def _permuted(parts: list, rng: np.random.Generator) -> tuple:
    """The rows of consecutive ``(x, y, ids)`` chunks, joined and put in a random order of ``rng``."""
    cols = [torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(3)]
    perm = rng.permutation(len(cols[1]))
    return tuple(torch.from_numpy(c.numpy()[perm]) for c in cols)     # NumPy's gather: ~5× torch's here


# ------------------------------------------------------------------ Petastorm reader
class _DecodingReader:
    """A Petastorm reader whose row groups come out with the image bytes already decoded.

    ``BatchedDataLoader`` turns every column into a tensor and refuses object arrays (raw
    bytes), so the decode happens here, once per row group, before the loader sees it.
    """

    def __init__(self, reader, info: DatasetInfo):
        self.reader = reader
        self.info = info

    @property
    def batched_output(self):
        return self.reader.batched_output

    def __iter__(self):
        fc = self.info.feature_col
        for row in self.reader:
            d = row._asdict()
            if self.info.kind == "image":
                d[fc] = decode_images(d[fc], self.info.image_shape).contiguous().numpy()
            elif d[fc].dtype == object:
                d[fc] = decode_features(d[fc], self.info.n_features).numpy()
            yield row._replace(**{fc: d[fc]})

    def stop(self):
        self.reader.stop()

    def join(self):
        self.reader.join()


@dataclass
class _LoaderSpec:
    """What every reader is asked for: one worker's batches of one epoch of a table."""

    path: str
    info: DatasetInfo
    rank: int = 0
    world_size: int = 1
    batch_size: int = 256
    epoch: int = 0
    seed: int = 0
    shuffle: bool = True


@dataclass
class PetastormLoader(_LoaderSpec):
    """Batches of one worker's Petastorm shard for one epoch; see the module docstring."""

    fill: bool = True             # top up to the largest shard (training); False: the shard once (eval)
    with_ids: bool = False
    raw: bool = False             # images stay uint8 (convert on the device with to_float)
    workers_count: int = 2
    shuffle_buffer: int = 0       # rows mixed in seeded blocks of at least this many (0: within each row group)
    rates: Optional[tuple] = None  # read-time sampling: one rate per class (None: every row once)
    sample_seed: int = 0          # read-time sampling: the seed of the (seed, epoch, id) hash
    augment: Optional[dict] = None  # read-time sampling: augment every copy after the first (pipeline.stream.augment)

    def __post_init__(self):
        n_groups = len(row_group_rows(self.path))
        if n_groups == 0:
            raise InputError(f"{self.path}: no Parquet row groups to read")
        self._sharded = self.world_size > 1
        if self._sharded and n_groups < self.world_size:
            raise InputError(f"{self.path} has {n_groups} Parquet row group(s), fewer than the "
                             f"{self.world_size} workers: rewrite it with more files or row groups")
        rows = shard_rows(self.path, self.world_size)
        self.shard_rows = rows[self.rank]
        self.sampled_rows = None
        if self.rates is not None:
            r = np.asarray(self.rates, dtype=float).ravel()
            if r.size != self.info.n_classes or np.any(~np.isfinite(r)) or np.any(r < 0):
                raise InputError(f"read-time sampling needs {self.info.n_classes} finite rates >= 0 (one per "
                                 f"class), got {r.tolist()[:8]}")
            self.rates = tuple(float(v) for v in r)
            sampled = sampled_shard_rows(self.path, self.world_size, self.info.label_col, self.rates,
                                         self.sample_seed, self.epoch)
            if max(sampled) == 0:
                raise InputError(f"read-time sampling draws no row from {self.path} in epoch {self.epoch} "
                                 f"(rates {list(self.rates)[:8]})")
            self.sampled_rows = sampled
            rows = sampled
        emitted_rows = rows[self.rank]
        self.target_rows = max(rows) if self.fill else emitted_rows
        self.steps = math.ceil(self.target_rows / self.batch_size)

    def __len__(self) -> int:
        return self.steps

    @property
    def _queue_size(self) -> int:
        return max(4, 2 * self.workers_count)

    def _reader(self, num_epochs, seed, shuffle_groups: bool):
        # deferred: petastorm is slow to import
        from petastorm import make_batch_reader

        cols = [ID_COL, self.info.label_col, self.info.feature_col]
        return make_batch_reader(
            file_url(self.path),
            schema_fields=["^" + re.escape(c) + "$" for c in cols],
            reader_pool_type="thread", workers_count=self.workers_count,
            results_queue_size=self._queue_size,
            seed=seed, shuffle_row_groups=shuffle_groups, shuffle_rows=False,   # rows: our seeded permutation
            num_epochs=num_epochs,
            cur_shard=self.rank if self._sharded else None,
            shard_count=self.world_size if self._sharded else None)

    def _chunks(self, num_epochs, seed) -> Iterator[tuple]:
        """Whole row groups as ``(x, y, ids)`` tensors, in a order fixed by ``seed`` however the
        reader threads finish: Petastorm's own start order, restored by
        :func:`~pipeline.stream.delivery_order.in_delivery_order`; rows permuted by a generator
        seeded with (seed, rank, position) and, with ``shuffle_buffer``, mixed in seeded blocks of
        at least that many rows. Row groups arrive whole, so no Python runs per row."""
        kind, keys = row_group_keys(self.path)
        shuffle_groups = self.shuffle and num_epochs == 1     # see delivery_order: later passes are not replayable
        order = ventilation_order(row_group_rows(self.path), self.rank, self.world_size if self._sharded else None,
                                  seed, shuffle_groups, num_epochs)
        queue = self._queue_size
        with self._reader(num_epochs, seed, shuffle_groups) as raw:
            arrivals = in_delivery_order(_DecodingReader(raw, self.info), (keys[i] for i in order),
                                         lambda r: id_key(getattr(r, ID_COL), kind),
                                         max_waiting=4 * (self.workers_count + queue + 2))
            block, n = [], 0
            for pos, r in enumerate(arrivals):
                cols = (torch.from_numpy(np.ascontiguousarray(getattr(r, self.info.feature_col))),
                        torch.from_numpy(np.asarray(getattr(r, self.info.label_col), dtype=np.int64)),
                        torch.from_numpy(np.asarray(getattr(r, ID_COL), dtype=np.int64)))
                if not self.shuffle:
                    yield cols
                    continue
                block.append(cols)
                n += len(cols[1])
                if n >= self.shuffle_buffer:
                    yield _permuted(block, np.random.default_rng([seed, self.rank, pos]))
                    block, n = [], 0
            if block:
                yield _permuted(block, np.random.default_rng([seed, self.rank, pos]))

    def _sampled_chunks(self, num_epochs, seed, gen, counter: list) -> Iterator[tuple]:
        """Chunks after read-time sampling: each row ``row_multiplicity`` times (0 = skipped), mixed
        in seeded blocks so a row's copies spread out; one gather per block does both.

        ``counter[0]`` counts the rows read before sampling (checked against the footers).
        """
        # deferred: torch is slow to import
        from pipeline.stream.augment import augment_batch, copy_numbers

        block = max(self.shuffle_buffer, 8 * self.batch_size)
        parts, mults, n = [], [], 0

        def flush():
            cols = [torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(3)]
            m = np.concatenate(mults)
            idx = torch.from_numpy(np.repeat(np.arange(len(m)), m))
            copies = copy_numbers(m) if self.augment is not None else None
            if self.shuffle:
                perm = torch.randperm(len(idx), generator=gen)
                idx = idx[perm]
                copies = copies[perm] if copies is not None else None
            out = [c[idx] for c in cols]
            if copies is not None:  # duplicates differ from their original (Lee et al.'s noise / augmentation)
                dup = copies > 0
                if bool(dup.any()):
                    out[0][dup] = augment_batch(out[0][dup], self.augment, gen, image=self.info.kind == "image")
            return tuple(out)

        for x, y, ids in self._chunks(num_epochs, seed):
            counter[0] += len(y)
            m = row_multiplicity(ids.numpy(), y.numpy(), self.rates, self.sample_seed, self.epoch)
            k = int(m.sum())
            if k == 0:
                continue
            parts.append((x, y, ids))
            mults.append(m)
            n += k
            if n >= block:
                yield flush()
                parts, mults, n = [], [], 0
        if parts:
            yield flush()

    def __iter__(self) -> Iterator[tuple]:
        if self.rates is not None:
            yield from self._iter_sampled()
            return
        seed = (self.seed * 1_000_003 + self.epoch) % (2**31 - 1)
        reb = _Rebatcher(self.batch_size)
        seen = 0
        emitted = 0
        for x, y, ids in self._chunks(1, seed):
            seen += len(y)
            for b in reb.add((x, y, ids, torch.zeros(len(y), dtype=torch.bool))):
                emitted += 1
                yield self._out(b)
        if seen != self.shard_rows:
            raise RuntimeError(f"shard {self.rank}/{self.world_size} of {self.path}: read {seen} rows, "
                               f"footers say {self.shard_rows}")
        need = self.target_rows - seen
        if need > 0:  # top up with repeats of this shard (order does not matter: infinite reader)
            for x, y, ids in self._chunks(None, seed + 7919):
                take = min(need, len(y))
                need -= take
                for b in reb.add((x[:take], y[:take], ids[:take], torch.ones(take, dtype=torch.bool))):
                    emitted += 1
                    yield self._out(b)
                if need == 0:
                    break
        for b in reb.flush():
            emitted += 1
            yield self._out(b)
        assert emitted == self.steps, (emitted, self.steps)

    def _iter_sampled(self) -> Iterator[tuple]:
        """One epoch under read-time sampling: this shard's sampled rows once (their exact number
        known from :func:`sampled_shard_rows`), then fill rows from the sampled shard again (or from
        the plain shard when sampling left it empty) up to the largest shard's count."""
        seed = (self.seed * 1_000_003 + self.epoch) % (2**31 - 1)
        gen = torch.Generator().manual_seed((seed * 7 + self.rank * 104_729 + 12_345) % (2**63 - 1))
        reb = _Rebatcher(self.batch_size)
        read = [0]
        produced = emitted = 0
        for x, y, ids in self._sampled_chunks(1, seed, gen, read):
            produced += len(y)
            for b in reb.add((x, y, ids, torch.zeros(len(y), dtype=torch.bool))):
                emitted += 1
                yield self._out(b)
        mine = self.sampled_rows[self.rank]
        if read[0] != self.shard_rows or produced != mine:
            raise RuntimeError(f"shard {self.rank}/{self.world_size} of {self.path}: read {read[0]} rows "
                               f"(footers say {self.shard_rows}), sampled {produced} (expected {mine})")
        need = self.target_rows - produced
        if need > 0:
            source = self._sampled_chunks(None, seed + 7919, gen, [0]) if mine > 0 else \
                self._chunks(None, seed + 7919)
            for x, y, ids in source:
                take = min(need, len(y))
                need -= take
                for b in reb.add((x[:take], y[:take], ids[:take], torch.ones(take, dtype=torch.bool))):
                    emitted += 1
                    yield self._out(b)
                if need == 0:
                    break
        for b in reb.flush():
            emitted += 1
            yield self._out(b)
        assert emitted == self.steps, (emitted, self.steps)

    def _out(self, b):
        x, y, ids, fill = b
        if not self.raw:
            x = to_float(x)
        return (x, y, ids, fill) if self.with_ids else (x, y)


# ------------------------------------------------------------------ Ray Data reader
class _ArrowCollate:
    """``iter_torch_batches`` collate function: an Arrow batch → (x, y, ids) tensors, vectorised."""

    def __init__(self, info: DatasetInfo):
        self.info = info

    def __call__(self, table):
        cols = {name: table.column(name) for name in table.column_names}
        return decode_columns(cols, self.info)


def _arrow_collate_cls():
    # deferred: ray is slow to import
    from ray.data.collate_fn import ArrowBatchCollateFn

    class ArrowCollate(ArrowBatchCollateFn, _ArrowCollate):
        def __init__(self, info):
            _ArrowCollate.__init__(self, info)

        def __call__(self, table):
            return _ArrowCollate.__call__(self, table)

    return ArrowCollate


@dataclass
class RayDataLoader(_LoaderSpec):
    """Batches from a Ray Data shard (inside Ray Train) or the whole table (one process)."""

    with_ids: bool = False
    raw: bool = False
    dataset_name: str = "train"
    shuffle_buffer: int = 0

    def __post_init__(self):
        self._iterator = _train_dataset_shard(self.dataset_name)
        if self._iterator is None:
            if self.world_size > 1:
                raise InputError("stream.reader=ray_data with several workers runs inside Ray Train only")
            # deferred: ray is slow to import
            import ray.data

            ds = ray.data.read_parquet(_ray_path(self.path), columns=[ID_COL, self.info.label_col,
                                                                      self.info.feature_col])
            self._iterator = ds.iterator()
            self.steps = math.ceil(table_rows(self.path) / self.batch_size)
        else:
            total = table_rows(self.path)
            self.steps = math.ceil((total // self.world_size) / self.batch_size)

    def __len__(self):
        return self.steps

    def __iter__(self):
        kw = {}
        if self.shuffle:
            kw = dict(local_shuffle_buffer_size=max(self.shuffle_buffer, self.batch_size * 4),
                      local_shuffle_seed=(self.seed * 1_000_003 + self.epoch * 101 + self.rank) % (2**31 - 1))
        for x, y, ids in self._iterator.iter_torch_batches(
                batch_size=self.batch_size, collate_fn=_arrow_collate_cls()(self.info),
                prefetch_batches=2, **kw):
            if not self.raw:
                x = to_float(x)
            yield (x, y, ids, torch.zeros(len(y), dtype=torch.bool)) if self.with_ids else (x, y)


def _ray_path(path: str) -> str:
    return str(local_path(path).resolve()) if "://" not in str(path) or str(path).startswith("file://") \
        else str(path)


def _train_dataset_shard(name: str):
    """``ray.train.get_dataset_shard(name)`` inside a Ray Train worker, else None."""
    try:
        # deferred: ray is slow to import
        import ray.train
        ctx = ray.train.get_context()
        if ctx is None:
            return None
        return ray.train.get_dataset_shard(name)
    except Exception:  # not inside Ray Train, or no dataset of that name
        return None


def ray_dataset(path: str, info: DatasetInfo):
    """The Ray Data dataset the driver hands to ``TorchTrainer(datasets=...)``."""
    # deferred: ray is slow to import
    import ray.data

    return ray.data.read_parquet(_ray_path(path), columns=[ID_COL, info.label_col, info.feature_col])


# ------------------------------------------------------------------ the one entry point
def make_loader(path: str, info: DatasetInfo, rank: int = 0, world_size: int = 1, batch_size: int = 256, *,
                epoch: int = 0, seed: int = 0, shuffle: bool = True, reader: str = "petastorm",
                fill: bool = True, with_ids: bool = False, raw: bool = False, workers_count: int = 2,
                shuffle_buffer: int = 0, dataset_name: str = "train", rates=None, sample_seed: int = 0,
                augment: Optional[dict] = None):
    """An iterable of ``(x float tensor, y long tensor)`` batches over this worker's shard for one epoch.

    Every worker gets ``len(loader)`` batches (the same on all workers when ``fill`` is on).
    ``with_ids=True`` yields ``(x, y, ids, fill_mask)``; ``raw=True`` keeps images uint8 so the
    loop can move 4x fewer bytes to the GPU and scale there (:func:`to_float`). ``rates`` (one
    per class) turns on read-time sampling for this epoch, keyed by ``(sample_seed, epoch, id)``
    (Petastorm reader only; see the module docstring); ``augment`` (:mod:`pipeline.stream.augment`) then
    transforms every copy of a row after the first as it is read.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if not (0 <= rank < world_size):
        raise InputError(f"rank {rank} outside 0..{world_size - 1}")
    if rates is not None and reader != "petastorm":
        raise InputError(f"read-time sampling (train.read_sampling) needs stream.reader=petastorm, got {reader!r}")
    if reader == "petastorm":
        return PetastormLoader(path, info, rank, world_size, batch_size, epoch, seed, shuffle, fill=fill,
                               with_ids=with_ids, raw=raw, workers_count=workers_count,
                               shuffle_buffer=shuffle_buffer, rates=None if rates is None else tuple(rates),
                               sample_seed=sample_seed, augment=augment if rates is not None else None)
    if reader == "ray_data":
        return RayDataLoader(path, info, rank, world_size, batch_size, epoch, seed, shuffle, with_ids=with_ids,
                             raw=raw, dataset_name=dataset_name, shuffle_buffer=shuffle_buffer)
    raise InputError(f"stream.reader must be one of {', '.join(READERS)}, got {reader!r}")


def check_table(path: str) -> None:
    """Fail with one line when ``path`` is not a readable Parquet table."""
    p = local_path(path)
    if "://" not in str(path) and not p.exists():
        raise InputError(f"table not found: {path}")
    try:
        row_group_rows(path)
    except InputError:
        raise
    except Exception as e:  # pyarrow / petastorm errors on a missing or bad dataset
        raise InputError(f"{path}: not a readable Parquet table ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


__all__ = ["make_loader", "steps_per_epoch", "shard_rows", "sampled_shard_rows", "iter_row_group_columns",
           "row_group_rows", "table_rows", "to_float",
           "decode_images", "decode_features", "decode_columns", "ray_dataset", "check_table", "READERS"]
