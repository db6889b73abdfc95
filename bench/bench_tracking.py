"""What MLflow tracking costs a run: ``imbalance run`` with ``tracking.enabled`` true vs false.

Each repeat runs the same config twice in fresh run roots (so every stage runs and the SQLite
store starts empty), once with tracking on and once off, alternating which goes first so that
a drift in the machine's load does not favour one side. Reported: the median wall time of each
side, the median of the per-pair ratios (on / off), and the seconds the run itself reports for
itself (`total_seconds` in summary.json, without interpreter start-up).

    python bench/bench_tracking.py conf/demo.yaml --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(config: str, overrides: list[str], enabled: bool) -> tuple[float, float]:
    """(wall seconds, sum of the run's own stage seconds) of one run in a fresh root."""
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as root:
        cmd = [sys.executable, "-m", "pipeline.cli", "run", config, f"run.root={root}",
               f"tracking.enabled={'true' if enabled else 'false'}", *overrides]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench_tracking: the run failed: {r.stderr.strip().splitlines()[-1:]}")
        run_dir = Path(r.stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        return wall, float(summary["total_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    on, off, ratios = [], [], []
    for i in range(a.repeats):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {enabled: one_run(a.config, a.overrides, enabled) for enabled in order}
        on.append(got[True])
        off.append(got[False])
        ratios.append(got[True][0] / got[False][0])
        print(f"repeat {i + 1}: on {got[True][0]:.1f} s, off {got[False][0]:.1f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    med = statistics.median
    print(f"\n| {a.config}, {a.repeats} pairs | tracking on | tracking off |\n|---|---:|---:|")
    print(f"| wall time, median (s) | {med(w for w, _ in on):.1f} | {med(w for w, _ in off):.1f} |")
    print(f"| time the run reports (total_seconds), median (s) | {med(s for _, s in on):.1f} "
          f"| {med(s for _, s in off):.1f} |")
    print(f"| **on / off, median of the pairs** | **{med(ratios):.3f}** | |")


if __name__ == "__main__":
    main()
