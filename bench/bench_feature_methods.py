"""Cost and effect of the deep-feature methods (LMLE, DOS, CRL) against plain CE and focal loss.

On a generated tabular table (Gaussian classes, step imbalance: half of the classes reduced to 1/ρ of
the others; balanced validation and test tables) it trains an MLP locally (one process, the plain
PyTorch loop, ``train_local``) once per method and seed and reports, per method:

* ``s/epoch``      — median training seconds per epoch (the loop's ``train_seconds``: the optimisation
                     steps only; LMLE's and DOS's per-epoch bank pass runs in ``start_epoch``, before
                     that timer starts, so it shows in ``wall s``);
* ``wall s``       — median wall time of the whole ``train_local`` call (bank passes, validation,
                     LMLE's after-training refit of its centres);
* ``test macro-F1`` / ``test bal. acc.`` — median over seeds on the balanced test table, each model
  scored with its own prediction rule (LMLE: the cluster-wise kNN over its centres).

    python bench/bench_feature_methods.py --rows 20000 --epochs 5 --seeds 0 1 2 --markdown docs/bench-feature.md
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

METHODS = {
    "ce": [],
    "focal": ["train.loss=focal"],
    "lmle": ["train.method=lmle"],
    "dos": ["train.method=dos"],
    "crl": ["train.method=crl"],
}


def score(model_dir: str, test_path: str) -> tuple[float, float]:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from pipeline.train.hooks import load_inference_state, predict_scores
    from pipeline.train.saved_model import load_model

    model, _ = load_model(model_dir)
    ms = load_inference_state(model_dir)
    method, state = ms if ms else (None, None)
    t = pq.read_table(test_path).to_pandas()
    x = torch.tensor(np.stack(t["features"].to_numpy()), dtype=torch.float32)
    with torch.no_grad():
        pred = torch.cat([predict_scores(method, state, model, x[i:i + 4096]).argmax(1)
                          for i in range(0, len(x), 4096)]).numpy()
    y = t["label"].to_numpy()
    return float(f1_score(y, pred, average="macro")), float(balanced_accuracy_score(y, pred))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rho", type=float, default=20.0)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--spread", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()

    import torch

    from pipeline.config import load_config
    from pipeline.train.trainer import train_local
    from tests.integration.test_stream import write_gaussian_table

    torch.set_num_threads(1)
    k = a.classes
    weights = [1.0] * (k - k // 2) + [1.0 / a.rho] * (k // 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-feat-"))
    try:
        write_gaussian_table(tmp / "train", a.rows, k, d=a.dim, files=4, seed=0, weights=weights, spread=a.spread)
        write_gaussian_table(tmp / "val", max(2000, a.rows // 5), k, d=a.dim, files=2, seed=1, start_id=10**7,
                             spread=a.spread)
        write_gaussian_table(tmp / "test", max(5000, a.rows // 4), k, d=a.dim, files=2, seed=2, start_id=2 * 10**7,
                             spread=a.spread)
        rows = []
        for m in a.methods:
            per, walls, f1s, bas = [], [], [], []
            for seed in a.seeds:
                cfg = load_config(None, ["model.name=mlp", "model.hidden=[64,32]", f"train.batch_size={a.batch}",
                                         "train.lr=0.003", "train.progress=false", "stream.workers_count=1",
                                         f"train.epochs={a.epochs}", f"run.seed={seed}", "train.resume=false"]
                                  + METHODS[m])
                out = tmp / f"{m}-{seed}"
                t0 = time.perf_counter()
                r = train_local(cfg, str(tmp / "train"), str(tmp / "val"), str(out))
                walls.append(time.perf_counter() - t0)
                per.append(statistics.median(h["train_seconds"] for h in r["history"]))
                f1, ba = score(r["model_dir"], str(tmp / "test"))
                f1s.append(f1)
                bas.append(ba)
                print(f"{m} seed {seed}: {per[-1]:.2f} s/epoch, wall {walls[-1]:.1f} s, test macro-F1 {f1:.4f}, "
                      f"bal. acc. {ba:.4f}", flush=True)
            rows.append((m, statistics.median(per), statistics.median(walls), statistics.median(f1s),
                         statistics.median(bas), min(f1s), max(f1s)))
        cmd = "python bench/bench_feature_methods.py " + " ".join(sys.argv[1:])
        lines = [f"Tabular Gaussian, {k} classes, step imbalance ρ={a.rho:g} (half the classes at 1/ρ), "
                 f"{a.rows} train rows, d={a.dim}, MLP 64-32, batch {a.batch}, {a.epochs} epochs, seeds "
                 f"{a.seeds}, one process on this machine; balanced test set. Medians over seeds.", "",
                 "| method | s/epoch | wall s | test macro-F1 (min–max) | test bal. acc. |",
                 "| --- | --- | --- | --- | --- |"]
        base = rows[0][1] if rows else 1.0
        for m, pe, w, f1, ba, lo, hi in rows:
            lines.append(f"| {m} | {pe:.2f} ({pe / base:.2f}×) | {w:.1f} | {f1:.4f} ({lo:.4f}–{hi:.4f}) | {ba:.4f} |")
        lines += ["", f"Command: `{cmd}`"]
        print("\n".join(lines))
        if a.markdown:
            p = Path(a.markdown)
            p.write_text("# Deep-feature methods (LMLE, DOS, CRL): cost and effect\n\n" + "\n".join(lines) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
