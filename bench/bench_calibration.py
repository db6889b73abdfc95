"""Prior correction on real data, over seeds: does correcting back to the training prior lower
the Brier score and ECE on an imbalanced test split, after balancing the training split?

Two scikit-learn data sets, each made imbalanced in every split before splitting:

* ``photos``: 3x3 RGB patches of the two sample photographs (``load_sample_images``), the
  flower kept at 2% (about 1:50): two overlapping classes;
* ``digits``: ``load_digits``, digits 5-9 kept at 12% (ten small, nearly separable classes).

For each seed the rare subsample, the stratified 60/20/20 split, the sampler and the training all
take that seed. The pipeline is the real one (Spark sampling, a 64-unit MLP trained 30 epochs,
batch prediction, the evaluate scan); the run helper is the integration test's.

Run:  python bench/bench_calibration.py --seeds 0 1 2 3 4 --strategies rus ros
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def digits(seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = (y < 5) | (np.random.default_rng(seed).uniform(size=len(y)) < 0.12)
    return (x[keep] / 16.0).astype(np.float32), y[keep].astype(np.int32), 10


def photos(seed: int):
    from tests.integration.test_calibration_real_data import _photo_pixels

    return (*_photo_pixels(seed=seed), 2)


def spread(values) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=["rus", "ros"])
    ap.add_argument("--data", nargs="+", default=["photos", "digits"])
    args = ap.parse_args()

    from pipeline.config import SparkSection
    from pipeline.engines import get_spark
    from tests.integration.test_calibration_real_data import sampled_run

    spark = get_spark(SparkSection(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    rows = []
    for name in args.data:
        for strategy in args.strategies:
            got = {k: [] for k in ("b0", "b1", "e0", "e1")}
            for seed in args.seeds:
                x, y, k = {"photos": photos, "digits": digits}[name](seed)
                with tempfile.TemporaryDirectory() as tmp:
                    _, _, m = sampled_run(spark, Path(tmp), x, y, k, seed=seed, strategy=strategy)
                raw, fixed = m["raw"], m["prior_corrected"]
                for key, v in (("b0", raw["brier"]), ("b1", fixed["brier"]), ("e0", raw["ece"]), ("e1", fixed["ece"])):
                    got[key].append(v)
                print(name, strategy, seed, {k: round(v[-1], 4) for k, v in got.items()}, flush=True)
            wins_b = sum(b < a for a, b in zip(got["b0"], got["b1"]))
            wins_e = sum(b < a for a, b in zip(got["e0"], got["e1"]))
            rows.append(f"| {name} | {strategy} | {spread(got['b0'])} | {spread(got['b1'])} | {wins_b}/{len(args.seeds)} "
                        f"| {spread(got['e0'])} | {spread(got['e1'])} | {wins_e}/{len(args.seeds)} |")
    spark.stop()
    print("\n| data | sampler | Brier raw | Brier corrected | lower | ECE raw | ECE corrected | lower |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
