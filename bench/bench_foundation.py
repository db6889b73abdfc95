"""Time `synth` and `profile` (and `split`) at several sizes; report rows/s and peak driver memory.

Each size runs in a fresh process (its own Spark JVM), sampled every 0.2 s for the resident
memory of the Python driver and of the Spark JVM (in local mode the JVM is driver and executor
at once, bounded by spark.driver.memory). The point to check: the Python driver's memory does not
grow with the row count, because nothing is collected to it.

    python bench/bench_foundation.py --rows 340000 3400000 --markdown docs/bench-foundation.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

CHILD = r"""
import json, sys, time
from pipeline.engines import get_spark
from pipeline.config import SparkSection
from pipeline.data.synth import synthesize
from pipeline.prep.profile import profile
from pipeline.prep.split import split_dataset
rows, out, do_split = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
spark = get_spark(SparkSection(driver_memory="6g", shuffle_partitions=32))
res = {}
t = time.time(); synthesize(spark, "plankton", rows, 0, out + "/src"); res["synth_s"] = time.time() - t
print("MARK synth", flush=True)
t = time.time(); profile(spark, out + "/src", out + "/prof"); res["profile_s"] = time.time() - t
print("MARK profile", flush=True)
if do_split:
    t = time.time(); split_dataset(spark, out + "/src", out + "/split", seed=0); res["split_s"] = time.time() - t
print("RESULT " + json.dumps(res), flush=True)
"""


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(python driver RSS, JVM RSS) in bytes."""
    py = jvm = 0
    try:
        py = proc.memory_info().rss
        for c in proc.children(recursive=True):
            try:
                if "java" in c.name():
                    jvm += c.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return py, jvm


def measure(rows: int, do_split: bool) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-found-{rows}-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(rows), out, "1" if do_split else "0"],
                         stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(p.pid)
    peak = {"py": 0, "jvm": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            py, jvm = _tree_rss(proc)
            peak["py"], peak["jvm"] = max(peak["py"], py), max(peak["jvm"], jvm)
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result = None
    for line in p.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
    p.wait()
    stop.set()
    th.join()
    size = sum(f.stat().st_size for f in os.scandir(out + "/src") if f.is_file())
    shutil.rmtree(out, ignore_errors=True)
    if p.returncode != 0 or result is None:
        raise SystemExit(f"child failed for rows={rows}")
    result.update(rows=rows, data_mb=size / 1e6, peak_driver_py_mb=peak["py"] / 1e6, peak_jvm_mb=peak["jvm"] / 1e6)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[340_000, 3_400_000])
    ap.add_argument("--split", action="store_true", help="also time the split stage")
    ap.add_argument("--markdown", help="write a markdown section to this file")
    a = ap.parse_args()
    results = [measure(r, a.split) for r in a.rows]
    cmd = "python bench/bench_foundation.py --rows " + " ".join(map(str, a.rows)) + (" --split" if a.split else "")
    lines = ["| rows | data (MB) | synth (s) | synth rows/s | profile (s) | profile rows/s | "
             + ("split (s) | " if a.split else "") + "peak Python driver RSS (MB) | peak Spark JVM RSS (MB) |",
             "|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.split else "") + "---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['data_mb']:.0f} | {r['synth_s']:.1f} | {r['rows'] / r['synth_s']:,.0f} | "
                     f"{r['profile_s']:.1f} | {r['rows'] / r['profile_s']:,.0f} | "
                     + (f"{r['split_s']:.1f} | " if a.split else "")
                     + f"{r['peak_driver_py_mb']:.0f} | {r['peak_jvm_mb']:.0f} |")
    text = "\n".join(lines)
    print(text)
    print(f"\ncommand: {cmd}")
    print(json.dumps(results))
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(f"## synth / profile throughput and driver memory\n\n`{cmd}` on this 2-core machine, "
                    f"one run per size (fresh process each).\n\n{text}\n")


if __name__ == "__main__":
    main()
