"""Ingest throughput: `imbalance ingest` (Spark, decode + resize on the executors) against a plain
single-process Pillow loop doing the same decode + resize over the same files.

    python bench/bench_ingest.py --files 100000 --repeats 3 --cores 2

Writes the synthetic plankton tree once (``--tree``, reused when it exists) and prints, per repeat
and as medians: files/s of the ingest (whole stage: listing, decode, write, summary) and of its
decode+write job alone, files/s of the Pillow loop, their ratio, the output bytes per image, and
the machine's 1-minute load average at the end of each repeat (the machine may be shared).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import SparkSection  # noqa: E402
from pipeline.data.images import BadImage, EXTENSIONS, decode_resize  # noqa: E402
from pipeline.data.ingest import ingest_images  # noqa: E402
from pipeline.data.synth import synthesize_image_folders  # noqa: E402
from pipeline.engines import get_spark  # noqa: E402


def pillow_loop(root: str, size: int, mode: str, resize: str) -> int:
    """The baseline: walk, read, decode, resize, one file after another."""
    exts = tuple("." + e for e in EXTENSIONS)
    n = 0
    for d, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(exts):
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read()
                try:
                    decode_resize(data, size, mode, resize, 2).tobytes()
                except BadImage:
                    pass
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--tree", default=None, help="default /tmp/bench-ingest-<files>")
    args = ap.parse_args()
    tree = args.tree or f"/tmp/bench-ingest-{args.files}"
    spark = get_spark(SparkSection(master=f"local[{args.cores}]", shuffle_partitions=2 * args.cores))
    if not Path(tree).exists():
        t = time.time()
        synthesize_image_folders(spark, "plankton", args.files, 0, tree, corrupt=min(30, args.files // 100))
        print(f"wrote {args.files:,} files to {tree} in {time.time() - t:.1f}s", flush=True)
    out = f"{tree}-out"
    rows = []
    for r in range(args.repeats):
        t = time.time()
        s = ingest_images(spark, tree, out, size=args.size, progress=False)
        t_spark = time.time() - t
        t = time.time()
        n = pillow_loop(tree, args.size, "L", "pad")
        t_pil = time.time() - t
        rows.append({"stage": s["files"] / t_spark, "decode": s["files_per_s"], "pillow": n / t_pil,
                     "bytes": s["output_bytes_per_image"]})
        print(f"repeat {r}: ingest {rows[-1]['stage']:,.0f} files/s (decode+write job {rows[-1]['decode']:,.0f}), "
              f"Pillow loop {rows[-1]['pillow']:,.0f} files/s, ratio {rows[-1]['stage'] / rows[-1]['pillow']:.2f} "
              f"(job alone {rows[-1]['decode'] / rows[-1]['pillow']:.2f}); load average {os.getloadavg()[0]:.1f}",
              flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("stage", "decode", "pillow")}
    print(f"median of {args.repeats}: ingest {med['stage']:,.0f} files/s, decode+write job {med['decode']:,.0f} files/s, "
          f"Pillow loop {med['pillow']:,.0f} files/s; ratio {med['stage'] / med['pillow']:.2f} "
          f"(job alone {med['decode'] / med['pillow']:.2f}); output {rows[0]['bytes']} bytes per image "
          f"({args.files:,} files, local[{args.cores}])")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
