"""Rows/s through the readers of ``pipeline.stream.readers`` against raw pyarrow, and the compute ceiling.

On one generated table of 32×32 uint8 images (raw bytes, as materialize writes them) it times:

* ``pyarrow``   — raw ``pyarrow.parquet`` reading of the same files, row group by row group, with
                  the same vectorised decode to float32 (N, 1, 32, 32) batches: the reference rate;
* ``petastorm`` — ``make_loader(reader="petastorm")``: ``make_batch_reader`` with row groups put back
                  into a seeded order and rows permuted by seeded generators (the same batches on
                  every run), float batches as the training loop receives them;
* ``petastorm_unordered`` — the reader as it was before the order was fixed: ``make_batch_reader``
                  with Petastorm's own row shuffle + ``BatchedDataLoader``, row groups in the order the
                  threads finish them: what the fixed order costs;
* ``ray_data``  — ``make_loader(reader="ray_data")``: ``read_parquet`` → ``iter_torch_batches``;
* ``lenet_in_memory`` — LeNet-5 training steps (forward, backward, Adam) on tensors already in
                  memory: the compute ceiling of this machine;
* ``lenet_petastorm`` — the same training steps fed by the Petastorm loader.

Goal: petastorm ≥ 70% of the pyarrow decode rate. Each figure is the median of ``--repeat`` runs.

    python bench/bench_stream.py --rows 200000 --repeat 3 --markdown docs/bench-train.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def make_table(out: Path, rows: int, files: int, row_group: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.schema import DatasetInfo, write_info

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = np.zeros(10, dtype=np.int64)
    for f, idx in enumerate(np.array_split(np.arange(rows), files)):
        n = len(idx)
        y = rng.integers(0, 10, n)
        counts += np.bincount(y, minlength=10)
        # blurred noise compresses like real plankton images a little, not like pure noise
        img = rng.integers(0, 256, (n, 32 * 32), dtype=np.uint8)
        img[:, ::2] = img[:, 1::2]
        data = pa.FixedSizeBinaryArray.from_buffers(pa.binary(1024), n, [None, pa.py_buffer(img.tobytes())])
        t = pa.table({"id": pa.array(idx, pa.int64()), "label": pa.array(y, pa.int32()),
                      "copy": pa.array(np.zeros(n, np.int32)), "image": data.cast(pa.binary())})
        pq.write_table(t, out / f"part-{f:05d}.parquet", row_group_size=row_group)
    write_info(out, DatasetInfo(kind="image", n_classes=10, image_shape=[32, 32],
                                class_counts={str(i): int(c) for i, c in enumerate(counts)}))


def rate_pyarrow(path: Path, batch: int) -> float:
    import pyarrow.parquet as pq

    from pipeline.data.schema import read_info
    from pipeline.stream.readers import decode_columns, to_float

    info = read_info(path)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for f in sorted(path.glob("*.parquet")):
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["id", "label", "image"])
            for s in range(0, t.num_rows, batch):
                part = t.slice(s, batch)
                x, y, _ = decode_columns({c: part.column(c) for c in part.column_names}, info)
                x = to_float(x)
                n += len(y)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def rate_loader(path: Path, batch: int, reader: str, workers: int, epoch: int = 0) -> float:
    from pipeline.data.schema import read_info
    from pipeline.stream.readers import make_loader

    info = read_info(path)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for x, y in make_loader(str(path), info, 0, 1, batch, epoch=epoch, seed=0, shuffle=True, reader=reader,
                            workers_count=workers):
        n += len(y)
    # process CPU time covers Petastorm's reader threads; Ray Data works in other processes
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def rate_unordered(path: Path, batch: int, workers: int, epoch: int = 0) -> float:
    """The previous Petastorm loader: same reader, but arrival order and Petastorm's row shuffle."""
    import re

    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    from pipeline.data.schema import read_info
    from pipeline.io import file_url
    from pipeline.stream.readers import _DecodingReader, to_float

    info = read_info(path)
    cols = ["id", info.label_col, info.feature_col]
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    reader = make_batch_reader(file_url(path), schema_fields=["^" + re.escape(c) + "$" for c in cols],
                               reader_pool_type="thread", workers_count=workers,
                               results_queue_size=max(4, 2 * workers), seed=epoch, shuffle_row_groups=True,
                               shuffle_rows=True, num_epochs=1)
    with BatchedDataLoader(_DecodingReader(reader, info), batch_size=batch) as loader:
        for b in loader:
            x = to_float(b[info.feature_col])
            n += len(b[info.label_col])
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _lenet():
    import torch

    from pipeline.config import ModelSection
    from pipeline.train.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelSection(name="lenet"), (1, 32, 32), 10)
    return model, torch.optim.Adam(model.parameters(), 1e-3), torch.nn.CrossEntropyLoss()


def rate_compute(batch: int, steps: int) -> float:
    import torch

    model, opt, lossf = _lenet()
    g = torch.Generator().manual_seed(0)
    pool = [(torch.randint(0, 256, (batch, 1, 32, 32), generator=g, dtype=torch.uint8).float() / 255,
             torch.randint(0, 10, (batch,), generator=g)) for _ in range(16)]
    for x, y in pool[:3]:  # warm-up
        opt.zero_grad()
        lossf(model(x), y).backward()
        opt.step()
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(steps):
        x, y = pool[s % len(pool)]
        opt.zero_grad()
        lossf(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - c0)


def rate_train_petastorm(path: Path, batch: int, workers: int, max_rows: int) -> float:
    from pipeline.data.schema import read_info
    from pipeline.stream.readers import make_loader

    model, opt, lossf = _lenet()
    info = read_info(path)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for x, y in make_loader(str(path), info, 0, 1, batch, epoch=0, seed=0, workers_count=workers):
        opt.zero_grad()
        lossf(model(x), y).backward()
        opt.step()
        n += len(y)
        if n >= max_rows:
            break
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--row-group", type=int, default=25_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="Petastorm reader threads (stream.workers_count)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train-rows", type=int, default=50_000, help="rows for the two LeNet training figures")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Data reader")
    ap.add_argument("--data", default=None, help="reuse/keep the table here (default: a temp dir)")
    ap.add_argument("--markdown", default=None, help="append a markdown section to this file")
    a = ap.parse_args(argv)
    import torch

    # Both LeNet figures flush denormals: a net that fits its batches drives gradients into
    # denormal floats, which are many times slower on x86 and would distort the comparison.
    torch.set_flush_denormal(True)
    tmp = None
    if a.data:
        path = Path(a.data)
        if not path.exists():
            make_table(path, a.rows, a.files, a.row_group)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
        path = tmp / "table"
        make_table(path, a.rows, a.files, a.row_group)
    res = {"rows": a.rows, "files": a.files, "row_group": a.row_group, "batch": a.batch, "workers": a.workers,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        runs = {"pyarrow": [], "petastorm": [], "petastorm_unordered": [], "ray_data": []}
        rate_pyarrow(path, a.batch)                      # warm-up: page cache, imports, allocator
        rate_loader(path, a.batch, "petastorm", a.workers, epoch=99)
        rate_unordered(path, a.batch, a.workers, epoch=99)
        for r in range(a.repeat):                        # interleaved, so load changes hit all alike
            runs["pyarrow"].append(rate_pyarrow(path, a.batch))
            runs["petastorm"].append(rate_loader(path, a.batch, "petastorm", a.workers, epoch=r))
            runs["petastorm_unordered"].append(rate_unordered(path, a.batch, a.workers, epoch=r))
        if not a.no_ray:
            from pipeline.config import RaySection
            from pipeline.engines import get_ray

            get_ray(RaySection(num_cpus=os.cpu_count()))
            rate_loader(path, a.batch, "ray_data", a.workers, epoch=99)
            for r in range(a.repeat):
                runs["ray_data"].append(rate_loader(path, a.batch, "ray_data", a.workers, epoch=r))
        for k, v in runs.items():
            if v:
                res[k + "_rows_s"] = round(statistics.median(w for w, _ in v), 1)
                res[k + "_runs"] = [round(w, 1) for w, _ in v]
                res[k + "_rows_per_cpu_s"] = round(statistics.median(c for _, c in v), 1)
        steps = max(10, a.train_rows // a.batch)
        mem, fed = [], []
        for _ in range(a.repeat):                        # interleaved as well
            mem.append(rate_compute(a.batch, steps))
            fed.append(rate_train_petastorm(path, a.batch, a.workers, a.train_rows))
        res["lenet_in_memory_rows_s"] = round(statistics.median(w for w, _ in mem), 1)
        res["lenet_petastorm_rows_s"] = round(statistics.median(w for w, _ in fed), 1)
        res["lenet_in_memory_rows_per_cpu_s"] = round(statistics.median(c for _, c in mem), 1)
        res["lenet_petastorm_rows_per_cpu_s"] = round(statistics.median(c for _, c in fed), 1)
        res["lenet_runs"] = {"in_memory": [round(w, 1) for w, _ in mem], "petastorm": [round(w, 1) for w, _ in fed]}
        res["load_avg_1m"] = round(os.getloadavg()[0], 2)
        res["petastorm_vs_pyarrow"] = round(res["petastorm_rows_s"] / res["pyarrow_rows_s"], 3)
        res["petastorm_vs_pyarrow_paired"] = round(statistics.median(
            p[0] / a[0] for p, a in zip(runs["petastorm"], runs["pyarrow"])), 3)
        res["ordered_vs_unordered"] = round(res["petastorm_rows_s"] / res["petastorm_unordered_rows_s"], 3)
        res["ordered_vs_unordered_paired"] = round(statistics.median(
            p[0] / u[0] for p, u in zip(runs["petastorm"], runs["petastorm_unordered"])), 3)
        res["petastorm_vs_pyarrow_cpu"] = round(res["petastorm_rows_per_cpu_s"] / res["pyarrow_rows_per_cpu_s"], 3)
        if "ray_data_rows_s" in res:
            res["ray_data_vs_pyarrow"] = round(res["ray_data_rows_s"] / res["pyarrow_rows_s"], 3)
        res["petastorm_loop_vs_in_memory"] = round(res["lenet_petastorm_rows_s"] / res["lenet_in_memory_rows_s"], 3)
        res["petastorm_loop_vs_in_memory_cpu"] = round(res["lenet_petastorm_rows_per_cpu_s"]
                                                       / res["lenet_in_memory_rows_per_cpu_s"], 3)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    cmd = "python bench/bench_stream.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res["command"] = cmd.strip()
    print(json.dumps(res))
    print(f"reproduce: {res['command']}")
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [
        "## Streaming: Petastorm vs raw pyarrow vs Ray Data (32×32 uint8 images)\n",
        f"{res['rows']} rows, {res['files']} files, row groups of {res['row_group']}, batch {res['batch']}, "
        f"{res['workers']} Petastorm reader threads, {res['cpus']} CPUs, torch threads {res['torch_threads']}, "
        f"1-minute load average at the end {res['load_avg_1m']}. Medians of the interleaved runs listed "
        "(after one warm-up run each).\n",
        "| path | rows/s (wall, median) | runs | vs pyarrow | rows per CPU-second |",
        "| --- | ---: | --- | ---: | ---: |",
        f"| raw pyarrow read + decode (1 thread) | {res['pyarrow_rows_s']:,.0f} | {res['pyarrow_runs']} | 1.00 | "
        f"{res['pyarrow_rows_per_cpu_s']:,.0f} |",
        f"| Petastorm loader (shuffled) | {res['petastorm_rows_s']:,.0f} | {res['petastorm_runs']} | "
        f"{res['petastorm_vs_pyarrow']:.2f} (paired runs: {res['petastorm_vs_pyarrow_paired']:.2f}) | "
        f"{res['petastorm_rows_per_cpu_s']:,.0f} ({res['petastorm_vs_pyarrow_cpu']:.2f}) |",
        f"| previous Petastorm loader (arrival order, Petastorm's row shuffle, BatchedDataLoader) | "
        f"{res['petastorm_unordered_rows_s']:,.0f} | {res['petastorm_unordered_runs']} | "
        f"{res['petastorm_unordered_rows_s'] / res['pyarrow_rows_s']:.2f} | {res['petastorm_unordered_rows_per_cpu_s']:,.0f} |",
    ]
    if "ray_data_rows_s" in res:
        lines.append(f"| Ray Data loader (local shuffle) | {res['ray_data_rows_s']:,.0f} | {res['ray_data_runs']} | "
                     f"{res['ray_data_vs_pyarrow']:.2f} | (work in Ray worker processes) |")
    lines += [
        "",
        f"Fixed delivery order (the same batches on every run) vs the previous loader: "
        f"{res['ordered_vs_unordered']:.2f}× the rows/s (median of paired runs {res['ordered_vs_unordered_paired']:.2f}×).",
        "",
        f"LeNet-5 training (forward + backward + Adam, CPU): {res['lenet_in_memory_rows_s']:,.0f} rows/s on "
        f"in-memory tensors (compute ceiling) vs {res['lenet_petastorm_rows_s']:,.0f} rows/s fed by Petastorm "
        f"({res['petastorm_loop_vs_in_memory']:.2f} of the ceiling; runs {res['lenet_runs']}). Per CPU-second "
        f"of the process: {res['lenet_in_memory_rows_per_cpu_s']:,.0f} vs {res['lenet_petastorm_rows_per_cpu_s']:,.0f} "
        f"rows ({res['petastorm_loop_vs_in_memory_cpu']:.2f}).\n",
        f"Command: `{res['command']}`\n\n",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
