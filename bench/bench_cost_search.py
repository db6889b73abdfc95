"""Wall time of the DE cost search (``train.method: cost_search``) on local Ray.

Trains one small MLP (one epoch) on an imbalanced Gaussian table (``--classes`` classes, class
sizes geometric from 1 to 0.01), then runs :func:`pipeline.train.cost_methods.cost_search`
(population 16, 10 generations, macro-F1, 177 evaluations) over validation tables of each
``--rows`` size, ``--repeat`` times each. Figures: median seconds per search (the first search of
a fresh Ray also starts its workers; the median hides that), the macro-F1 with unit costs and with
the searched costs. The driver only ever holds O(population · C²) numbers, whatever the rows.

    python bench/bench_cost_search.py --rows 20000 200000 --repeat 3 --markdown docs/bench-cost.md
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--markdown", default=None, help="write a markdown section to this file")
    a = ap.parse_args(argv)

    from pipeline.config import RaySection, load_config
    from pipeline.engines import get_ray
    from pipeline.train.cost.search import cost_search, search_params
    from pipeline.train.trainer import train_local
    from tests.integration.test_stream import write_gaussian_table

    get_ray(RaySection(num_cpus=a.cpus))
    root = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    c = a.classes
    lines = []
    try:
        w = np.geomspace(1, 0.01, c)
        write_gaussian_table(root / "train", 20000, c, d=16, files=4, seed=0, weights=w)
        write_gaussian_table(root / "val_small", 2000, c, d=16, files=4, seed=1, start_id=10**7)
        cfg = load_config(None, ["model.name=mlp", "model.hidden=[64]", "train.batch_size=256", "train.epochs=1",
                                 "train.progress=false", "stream.workers_count=1"])
        model_dir = train_local(cfg, str(root / "train"), str(root / "val_small"), str(root / "out"))["model_dir"]
        p = search_params({"population": 16, "generations": 10, "metric": "macro_f1"})
        for n in a.rows:
            val = root / f"val{n}"
            write_gaussian_table(val, n, c, d=16, files=8, seed=1, start_id=10**7)
            ts = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                s = cost_search(model_dir, str(val), c, p, 0)
                ts.append(time.perf_counter() - t)
            line = (f"| {n:,} × {c} | {statistics.median(ts):.2f} | {', '.join(f'{v:.2f}' for v in ts)} | "
                    f"{s['evaluations']} | {s['baseline_score']:.4f} → {s['score']:.4f} |")
            print(line, flush=True)
            lines.append(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cmd = "python bench/bench_cost_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["## DE cost search", "",
          f"Local Ray with {a.cpus} CPUs; population 16, 10 generations (177 evaluations incl. the unit-cost "
          "reference); validation softmax outputs kept per shard in the object store. The macro-F1 columns are "
          "on the same validation rows the search optimised (in-sample, optimistic); they show the search works, "
          "not a test score.", "",
          "| validation rows × classes | median s | runs (s) | evaluations | macro-F1 unit → searched costs |",
          "| --- | --- | --- | --- | --- |", *lines, "", f"Command: `{cmd}`", ""]
    print("\n".join(md))
    if a.markdown:
        Path(a.markdown).write_text("\n".join(md))


if __name__ == "__main__":
    main()
