"""Cost of read-time sampling in the Petastorm reader on 32×32 uint8 images.

On one generated table (10 classes, ``bench_stream.make_table``) it times, for one worker:

* ``plain``      — ``make_loader`` without sampling (every row once): the reference;
* ``rates_1``    — read-time sampling with every rate 1 (same rows): the overhead of the
                   ``id``/label pre-pass, the per-chunk hash and the block shuffle;
* ``ros_x3``     — rates 3 (three times the rows per epoch, nothing written);
* ``rus_0.1``    — rates 0.1 (a tenth of the rows; the table is still read and decoded in full);
* ``prepass``    — :func:`pipeline.stream.readers.sampled_shard_rows` alone (reads ``id`` and ``label``).

Figures: rows emitted per second of wall time (median of ``--repeat`` interleaved runs) and
seconds per epoch.

    python bench/bench_read_sampling.py --rows 100000 --repeat 3 --markdown docs/bench-read-sampling.md
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--row-group", type=int, default=12_500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()

    from bench_stream import make_table

    from pipeline.data.schema import read_info
    from pipeline.stream.readers import make_loader, sampled_shard_rows

    tmp = Path(tempfile.mkdtemp(prefix="bench-rs-"))
    try:
        path = tmp / "t"
        make_table(path, a.rows, a.files, a.row_group)
        info = read_info(str(path))
        cases = {"plain": None, "rates_1": [1.0] * 10, "ros_x3": [3.0] * 10, "rus_0.1": [0.1] * 10}
        runs = {k: [] for k in list(cases) + ["prepass"]}
        emitted = {}
        for rep in range(a.repeat + 1):                    # first round: warm-up, not counted
            for name, rates in cases.items():
                t0 = time.perf_counter()
                n = 0
                for x, y in make_loader(str(path), info, 0, 1, a.batch, epoch=rep, seed=0, rates=rates):
                    n += len(y)
                dt = time.perf_counter() - t0
                if rep:
                    runs[name].append(dt)
                emitted[name] = n
            t0 = time.perf_counter()
            sampled_shard_rows(str(path), 1, "label", [1.0] * 10, 0, rep)
            if rep:
                runs["prepass"].append(time.perf_counter() - t0)
        base = statistics.median(runs["plain"])
        lines = [f"{a.rows} rows of 32×32 uint8 images, {a.files} files, row groups of {a.row_group}, batch "
                 f"{a.batch}, one worker, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end. "
                 f"Medians of {a.repeat} interleaved runs after a warm-up.", "",
                 "| path | rows emitted | seconds / epoch (median) | rows/s | epoch time vs plain | runs (s) |",
                 "| --- | ---: | ---: | ---: | ---: | --- |"]
        for name in cases:
            med = statistics.median(runs[name])
            lines.append(f"| {name} | {emitted[name]:,} | {med:.2f} | {emitted[name] / med:,.0f} | "
                         f"{med / base:.2f} | {[round(v, 2) for v in runs[name]]} |")
        pp = statistics.median(runs["prepass"])
        lines += ["", f"Pre-pass alone (`sampled_shard_rows`: `id` + `label` columns of every row group, hash, "
                      f"sum): {pp:.3f} s median ({a.rows / pp:,.0f} rows/s), {pp / base:.1%} of a plain epoch.", "",
                  f"Command: `python bench/bench_read_sampling.py --rows {a.rows} --files {a.files} "
                  f"--row-group {a.row_group} --batch {a.batch} --repeat {a.repeat}"
                  + (f" --markdown {a.markdown}`" if a.markdown else "`")]
        text = "\n".join(lines)
        print(text)
        if a.markdown:
            Path(a.markdown).write_text("# Read-time sampling: cost in the Petastorm reader\n\n"
                                        + text + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
