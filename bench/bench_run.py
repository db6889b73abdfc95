"""Wall time and peak memory of a whole `imbalance run`, stage by stage.

Runs ``imbalance run CONFIG [overrides]`` in a child process and samples, once a second, the
resident memory of its whole process tree split into Python processes (the driver and
Spark's Python workers), the Spark JVM and Ray's processes (workers, raylet, GCS). Stage boundaries come from the run's stage banners on stderr,
so each stage gets its wall time and the peak memory seen while it ran.

    python bench/bench_run.py conf/plankton.yaml run.root=/tmp/runs --markdown docs/bench-plankton-run.md
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time

import psutil

BANNER = re.compile(r"^\[\s*([\d.]+)s\] (\w+): (running|done in [\d.]+s|up to date, skipped)")


def classify(p: psutil.Process) -> str:
    try:
        name = p.name()
        cmd = " ".join(p.cmdline()[:3])
    except psutil.Error:
        return "other"
    if "java" in name:
        return "spark_jvm"
    if "ray" in cmd or "raylet" in name or "gcs_server" in name or name.startswith("ray::"):
        return "ray"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--markdown")
    ap.add_argument("--json", help="also write the stage rows and memory samples to this file")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", a.config, *a.overrides]
    t0 = time.time()
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    samples = []  # (t, driver, jvm, ray, total)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                kids = proc.children(recursive=True)
                drv = proc.memory_info().rss
            except psutil.Error:
                break
            by = {"spark_jvm": 0, "ray": 0, "other": 0}
            for k in kids:
                try:
                    by[classify(k)] += k.memory_info().rss
                except psutil.Error:
                    pass
            samples.append((time.time() - t0, drv + by["other"], by["spark_jvm"], by["ray"],
                            drv + sum(by.values())))
            time.sleep(1.0)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stages = {}  # name -> [start, end, status]
    order = []
    for line in child.stderr:
        sys.stderr.write(line)
        m = BANNER.match(line.strip())
        if m:
            t, name, status = time.time() - t0, m.group(2), m.group(3)
            if status == "running":
                stages[name] = [t, None, "ran"]
                order.append(name)
            elif status.startswith("done"):
                stages[name][1] = t
            else:
                stages[name] = [t, t, "skipped"]
                order.append(name)
    out = child.stdout.read()
    child.wait()
    stop.set()
    th.join()
    total = time.time() - t0
    print(out)
    if child.returncode != 0:
        raise SystemExit(f"run failed with exit status {child.returncode}")

    def peak(lo, hi, idx):
        vals = [s[idx] for s in samples if lo <= s[0] <= hi]
        return max(vals) / 1e9 if vals else 0.0

    rows = []
    for name in order:
        lo, hi, status = stages[name]
        hi = hi if hi is not None else total
        rows.append((name, status, hi - lo, peak(lo, hi, 1), peak(lo, hi, 2), peak(lo, hi, 3), peak(lo, hi, 4)))
    lines = ["| stage | wall (s) | peak Python: driver + Spark Python workers (GB) | peak Spark JVM (GB) | peak Ray (GB) | peak total (GB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, status, wall, d, j, r, tot in rows:
        lines.append(f"| {name}{' (skipped)' if status == 'skipped' else ''} | {wall:.0f} | {d:.2f} | {j:.2f} | "
                     f"{r:.2f} | {tot:.2f} |")
    lines.append(f"| **whole run** | **{total:.0f}** | {peak(0, total, 1):.2f} | {peak(0, total, 2):.2f} | "
                 f"{peak(0, total, 3):.2f} | **{peak(0, total, 4):.2f}** |")
    text = "\n".join(lines)
    command = "python bench/bench_run.py " + " ".join([a.config, *a.overrides])
    print(text)
    print(f"\ncommand: {command}")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(f"## `imbalance run {a.config}` stage by stage\n\n`{command}`\n\n{text}\n\n"
                    f"Summary printed by the run:\n\n```\n{out.strip()}\n```\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"stages": rows, "total_s": total, "samples": samples[::5]}, f)


if __name__ == "__main__":
    main()
