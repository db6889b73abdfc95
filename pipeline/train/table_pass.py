"""One pass over a table on a device: the device choice and the every-row-once batches of a worker's shard."""
from __future__ import annotations

import torch

from pipeline.data.schema import DatasetInfo
from pipeline.stream.readers import make_loader, row_group_rows, to_float


def pick_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def table_once(path: str, info: DatasetInfo, device: torch.device, batch_size: int, *, reader: str, rank: int,
                world_size: int, workers_count: int, dataset_name: str):
    """Batches (x on ``device``, y) covering the table once across workers, for evaluation passes.

    Each worker reads its own Petastorm shard; a table with fewer row groups than workers (or the
    Ray Data reader, whose evaluation set is not split) is read by rank 0 alone and the other
    ranks get no batch. Callers all-reduce what they accumulate.
    """
    sharded = reader == "petastorm" and world_size > 1 and len(row_group_rows(path)) >= world_size
    if not (sharded or rank == 0):
        return
    loader = make_loader(path, info, rank if sharded else 0, world_size if sharded else 1, batch_size,
                         epoch=0, seed=0, shuffle=False, reader=reader, fill=False, raw=True,
                         workers_count=workers_count, dataset_name=dataset_name)
    for x, y in loader:
        yield to_float(x, device, non_blocking=True), y
