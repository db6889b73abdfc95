"""Each stage against its own limit: the stage's wall time and the time of the least work that
produces the same output on the same machine, measured in one run on the same data.

The plankton preset (conf/plankton.yaml, 103 classes, 32×32 images) is built once at ``--rows``
through our own stages — synth → split → sample → materialize → a short train (one epoch on the
thresholded pre-training set) → predict → evaluate — and then, for each stage asked for, every
repeat times the stage into a fresh directory and its limit on the same inputs:

=============  ==========================================================================
stage          limit (same inputs, same output size, same compression)
=============  ==========================================================================
synth          the same arrays (labels, images) generated in numpy by the same functions,
               written as Parquet, two processes, no Spark
split          pyarrow read of the source (every column) + write of the split's output files
sample         pyarrow read of the train split + write of the sampled table's files
materialize    pyarrow read of the sampled table + write of the materialized files
train          the same model, optimizer and batch size over the same rows for one epoch,
               the rows resident as tensors in one process with two threads (no Ray, no reader)
predict        the same model on the same test images already decoded in memory
               (``torch.inference_mode``, same batch size, one thread per process, two processes)
evaluate       exact per-class ROC AUC + average precision by one ``np.argsort`` per class over
               the same test predictions held in memory, two processes
=============  ==========================================================================

"read + write" limits read every input file with ``pyarrow.dataset`` (all columns, decoded) and
write the stage's own output files again with ``pyarrow.parquet.write_table`` using the codec and
row-group size found in those files, two threads; the output files are loaded before the write is
timed (in groups of ~1 GB, to bound memory). The evaluate stage is the run's: prior threshold moving
plus every metrics.json field. Each ratio is median(stage) / median(limit) over ``--repeats``.

    python bench/limits.py --rows 200000 --repeats 1                 # a few minutes, for development
    python bench/limits.py --rows 1000000 --repeats 3 --root /tmp/limits --markdown /tmp/limits.md
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("synth", "split", "sample", "materialize", "train", "predict", "evaluate")
PRESET = ROOT / "conf" / "plankton.yaml"
PRESET_ROWS = 3_400_000
GROUP_BYTES = 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rm(p) -> None:
    shutil.rmtree(p, ignore_errors=True)


def parquet_files(path) -> list[Path]:
    """Data files of a table directory (Spark's and ours), skipping ``_``/``.`` entries."""
    p = Path(path)
    return sorted(f for f in p.rglob("*.parquet")
                  if not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts))


# ------------------------------------------------------------------ limit: pyarrow read + write
def _write_one(args) -> None:
    import pyarrow.parquet as pq

    table, dest, codec, group_rows = args
    pq.write_table(table, dest, compression=codec, row_group_size=group_rows)


def read_write_limit(inputs: list, outputs: list, scratch: Path) -> float:
    """Seconds to read ``inputs`` (table dirs) with pyarrow and write ``outputs``' files again."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    rm(scratch)
    scratch.mkdir(parents=True)
    t = time.perf_counter()
    for src in inputs:
        for batch in ds.dataset([str(f) for f in parquet_files(src)], format="parquet").to_batches():
            pass
    seconds = time.perf_counter() - t
    files = [f for out in outputs for f in parquet_files(out)]
    group, size = [], 0
    with cf.ThreadPoolExecutor(2) as pool:
        for i, f in enumerate(files + [None]):
            if f is not None:
                md = pq.ParquetFile(f).metadata
                codec = md.row_group(0).column(0).compression.lower() if md.num_row_groups else "snappy"
                rows = max(md.row_group(j).num_rows for j in range(md.num_row_groups)) if md.num_row_groups else 1
                group.append((pq.read_table(f), str(scratch / f"{i:05d}.parquet"), codec, max(1, rows)))
                size += f.stat().st_size
            if group and (f is None or size >= GROUP_BYTES):
                t = time.perf_counter()
                list(pool.map(_write_one, group))
                seconds += time.perf_counter() - t
                group, size = [], 0
    rm(scratch)
    return seconds


# ------------------------------------------------------------------ limit: synth in numpy
def _synth_part(args) -> float:
    """Generate one Spark partition's rows exactly as the synth stage does, write them; seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data import synth as S

    rows, seed, start, end, batch, dest = args
    t = time.perf_counter()
    counts = S.exact_counts(S.plankton_fractions(), rows)
    cum, step = np.cumsum(counts), S._coprime_step(rows)
    params = S._class_params(len(counts), seed)
    parts = []
    for s in range(start, end, batch):
        ids = np.arange(s, min(end, s + batch), dtype=np.int64)
        labels = S._labels_for(ids, cum, rows, step)
        rng = np.random.default_rng([seed, int(ids[0]), len(ids)])
        img = S.draw_images(labels, rng, params).reshape(len(ids), -1)
        per = img.shape[1]
        offsets = pa.py_buffer(np.arange(0, (len(ids) + 1) * per, per, dtype=np.int32))
        images = pa.Array.from_buffers(pa.binary(), len(ids), [None, offsets, pa.py_buffer(img.tobytes())])
        parts.append(pa.record_batch([pa.array(ids), pa.array(labels.astype(np.int64)), images],
                                     names=["id", "label", "image"]))
    pq.write_table(pa.Table.from_batches(parts), dest, compression="snappy")
    return time.perf_counter() - t


def _warm(_=None) -> int:
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401

    from pipeline.data import synth  # noqa: F401
    return os.getpid()


def synth_limit(pool, rows: int, seed: int, partitions: int, scratch: Path) -> float:
    rm(scratch)
    scratch.mkdir(parents=True)
    bounds = [(i * rows // partitions, (i + 1) * rows // partitions) for i in range(partitions)]
    t = time.perf_counter()
    list(pool.map(_synth_part, [(rows, seed, a, b, 10_000, str(scratch / f"p{i:05d}.parquet"))
                                for i, (a, b) in enumerate(bounds)]))
    seconds = time.perf_counter() - t
    rm(scratch)
    return seconds


# ------------------------------------------------------------------ limit: predict in memory
def _predict_part(args) -> float:
    import torch

    from pipeline.stream.readers import to_float
    from pipeline.train.hooks import predict_scores
    from pipeline.train.saved_model import load_model

    images_npy, lo, hi, model_dir, batch = args
    torch.set_num_threads(1)              # as the predict stage: one thread per Spark task
    x_all = torch.from_numpy(np.load(images_npy, mmap_mode="r")[lo:hi].copy())
    model, _ = load_model(model_dir, device="cpu")
    with torch.inference_mode():
        predict_scores(None, None, model, to_float(x_all[:batch]))      # warm-up
        t = time.perf_counter()
        for s in range(0, len(x_all), batch):
            p = predict_scores(None, None, model, to_float(x_all[s:s + batch]))
            p.argmax(dim=1)
    return time.perf_counter() - t


def predict_limit(pool, images_npy: str, n: int, model_dir: str, batch: int) -> float:
    halves = [(images_npy, 0, n // 2, model_dir, batch), (images_npy, n // 2, n, model_dir, batch)]
    return max(pool.map(_predict_part, halves))   # the two processes run at once: the slower one


# ------------------------------------------------------------------ limit: evaluate by argsort
def exact_auc_ap(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Exact one-vs-rest ROC AUC (mid-ranks for ties) and average precision (scikit-learn's)."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))      # end of each tie group
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    P, N = tp[-1], fp[-1]
    pos = np.diff(np.append(0.0, tp))
    neg = np.diff(np.append(0.0, fp))
    auc = float(np.sum(neg * (2 * (tp - pos) + pos)) / (2 * P * N))
    ap = float(np.sum(pos * tp / (tp + fp)) / P)
    return auc, ap


def _evaluate_part(args):
    probs_npy, labels_npy, classes = args
    PT = np.load(probs_npy, mmap_mode="r")          # (K, n): one contiguous row per class
    y = np.load(labels_npy)
    PT[classes[0]].sum()                            # page in
    t = time.perf_counter()
    out = {int(c): exact_auc_ap(np.asarray(PT[c]), y == c) for c in classes}
    return time.perf_counter() - t, out


def evaluate_limit(pool, probs_npy: str, labels_npy: str, classes: list) -> tuple[float, dict]:
    res = list(pool.map(_evaluate_part, [(probs_npy, labels_npy, classes[0::2]),
                                         (probs_npy, labels_npy, classes[1::2])]))
    return max(r[0] for r in res), {c: v for r in res for c, v in r[1].items()}


# ------------------------------------------------------------------ limit: train on resident tensors
def train_limit(cfg, data_path: str, model_dir: str) -> float:
    import pyarrow.dataset as ds
    import torch

    from pipeline.data.schema import read_info
    from pipeline.stream.readers import decode_images, to_float
    from pipeline.train.loop import build_optimizer
    from pipeline.train.models import build_model

    info = read_info(data_path)
    t = ds.dataset([str(f) for f in parquet_files(data_path)], format="parquet").to_table(columns=["label", "image"])
    x = decode_images(t.column("image").combine_chunks(), info.image_shape).clone()
    y = torch.from_numpy(t.column("label").to_numpy().astype(np.int64))
    torch.manual_seed(0)
    torch.set_num_threads(2)
    shape = tuple(x.shape[1:])
    model = build_model(cfg.model, shape, int(info.n_classes))
    opt = build_optimizer(model.parameters(), cfg.train)
    lossf = torch.nn.CrossEntropyLoss()
    bs = cfg.train.batch_size
    perm = torch.randperm(len(y))
    t0 = time.perf_counter()
    model.train()
    for s in range(0, len(y), bs):
        idx = perm[s:s + bs]
        opt.zero_grad()
        lossf(model(to_float(x[idx])), y[idx]).backward()
        opt.step()
    return time.perf_counter() - t0


# ------------------------------------------------------------------ our stages
def stage_runner(spark, cfg, root: Path, preset_cap: int):
    """Functions ``name -> (out_dir) -> None`` running each stage as ``imbalance run`` does."""
    from pipeline.data.schema import read_info
    from pipeline.data.synth import synthesize
    from pipeline.evaluation.evaluate import evaluate_predictions
    from pipeline.evaluation.thresholds import rule_adjuster
    from pipeline.io import read_json
    from pipeline.prep.sampling import sample_dataset
    from pipeline.prep.split import split_dataset
    from pipeline.stream.materialize import materialize
    from pipeline.train.predict import predict
    from pipeline.train.trainer import train_model

    seed, label = cfg.run.seed, cfg.data.label_col
    cap = max(1, round(preset_cap * cfg.data.rows / PRESET_ROWS))   # N = 5000 at 3.4M rows, scaled

    def run_evaluate(out: Path) -> None:
        preds = str(root / "predict")
        labels = read_json(root / "split" / "labels.json")["labels"]
        adjust = rule_adjuster(cfg.evaluate.threshold_moving, len(labels),
                               class_counts=read_info(str(root / "split" / "train")).class_counts)
        evaluate_predictions(spark, preds, str(out), label_col=label, n_classes=len(labels), class_names=labels,
                             adjust=adjust)

    return {
        "synth": lambda out: synthesize(spark, cfg.data.synth_preset, cfg.data.rows, seed, str(out)),
        "split": lambda out: split_dataset(spark, str(root / "synth"), str(out), val=cfg.split.val,
                                           test=cfg.split.test, seed=seed, label_col=label),
        "sample": lambda out: sample_dataset(spark, str(root / "split" / "train"), str(out), strategy="threshold",
                                             cap=cap, random_state=seed, label_col=label),
        "materialize": lambda out: materialize(spark, str(root / "sample" / "data"), str(out), seed=seed,
                                               row_group_mb=cfg.stream.row_group_mb, label_col=label),
        "train": lambda out: train_model(cfg, str(root / "materialize"), None, str(out), epochs=1),
        "predict": lambda out: predict(spark, str(root / "train" / "model"), str(root / "split" / "test"), str(out),
                                       batch_size=cfg.predict.batch_size),
        "evaluate": run_evaluate,
    }, cap


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--root", default="/tmp/imb_limits", help="where the data and the runs live")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--json", default=None, help="also write every timing here")
    a = ap.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.engines import get_spark
    from pipeline.io import read_json

    pre = load_config(PRESET).train.method_params.get("pretrain", {})
    # the bench's short train is one plain epoch on the thresholded set (phase 1 of two_phase)
    cfg = load_config(PRESET, [f"data.rows={a.rows}", "train.epochs=1", "train.progress=false",
                               "train.method=baseline", "train.method_params={}"])
    spark = get_spark(cfg.spark)
    root = Path(a.root) / f"plankton_{a.rows}"
    root.mkdir(parents=True, exist_ok=True)
    run, cap = stage_runner(spark, cfg, root, pre.get("cap", 5000))

    # ---- build the data once through our own stages (kept between invocations)
    for name in STAGES[:-1]:
        if not (root / name / "_built").is_file():
            log(f"building {name} at {a.rows} rows")
            rm(root / name)
            t = time.perf_counter()
            run[name](root / name)
            (root / name / "_built").write_text(f"{time.perf_counter() - t:.1f}\n")

    # ---- inputs the in-memory limits need (not timed)
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(2, mp_context=ctx)
    list(pool.map(_warm, range(4)))
    if "predict" in a.stages and not (root / "test_images.npy").is_file():
        import pyarrow.dataset as ds

        from pipeline.data.schema import read_info
        from pipeline.stream.readers import decode_images

        t = ds.dataset([str(f) for f in parquet_files(root / "split" / "test")], format="parquet").to_table(
            columns=["image"])
        np.save(root / "test_images.npy",
                decode_images(t.column("image").combine_chunks(), read_info(str(root / "split" / "test")).image_shape)
                .numpy())
    if "evaluate" in a.stages and not (root / "test_probsT.npy").is_file():
        import pyarrow.dataset as ds

        t = ds.dataset([str(f) for f in parquet_files(root / "predict")], format="parquet").to_table(
            columns=["label", "probs"])
        y = t.column("label").to_numpy().astype(np.int64)
        probs = t.column("probs").combine_chunks().flatten().to_numpy().reshape(len(y), -1)
        np.save(root / "test_probsT.npy", np.ascontiguousarray(probs.T))
        np.save(root / "test_labels.npy", y)
        del t, probs

    synth_parts = len(parquet_files(root / "synth"))
    n_test = len(np.load(root / "test_images.npy", mmap_mode="r")) if "predict" in a.stages else 0

    def limit(name: str, out: Path) -> float:
        if name == "synth":
            return synth_limit(pool, a.rows, cfg.run.seed, synth_parts, Path(str(out) + "_limit"))
        if name == "split":
            return read_write_limit([root / "synth"], [out], Path(str(out) + "_limit"))
        if name == "sample":
            return read_write_limit([root / "split" / "train"], [out / "data"], Path(str(out) + "_limit"))
        if name == "materialize":
            return read_write_limit([root / "sample" / "data"], [out], Path(str(out) + "_limit"))
        if name == "train":
            return train_limit(cfg, str(root / "materialize"), str(root / "train" / "model"))
        if name == "predict":
            return predict_limit(pool, str(root / "test_images.npy"), n_test, str(root / "train" / "model"),
                                 cfg.predict.batch_size)
        secs, ref = evaluate_limit(pool, str(root / "test_probsT.npy"), str(root / "test_labels.npy"),
                                   sorted(int(c) for c in range(int(np.load(root / "test_probsT.npy",
                                                                            mmap_mode="r").shape[0]))))
        m = read_json(out / "metrics.json")
        worst = max(abs(m["per_class"][c][k] - ref[c][i]) for c in ref if m["per_class"][c]["roc_auc"] is not None
                    for i, k in enumerate(("roc_auc", "pr_auc")))
        assert worst < 1e-9, f"evaluate and its limit disagree by {worst:g}"
        return secs

    times: dict = {s: {"ours": [], "limit": []} for s in a.stages}
    for r in range(a.repeats):
        for name in a.stages:
            out = root / "bench" / name
            rm(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            run[name](out)
            times[name]["ours"].append(time.perf_counter() - t)
            times[name]["limit"].append(limit(name, out))
            log(f"repeat {r} {name}: ours {times[name]['ours'][-1]:.1f}s, limit {times[name]['limit'][-1]:.1f}s")
            rm(out)
    pool.shutdown()

    sizes = {"synth": f"{a.rows:,} rows", "split": f"{a.rows:,} rows",
             "sample": f"train split → threshold N = {cap}", "materialize": "the sampled set",
             "train": "1 epoch on the sampled set", "predict": f"{n_test:,} test rows" if n_test else "test split",
             "evaluate": "test predictions, prior threshold moving"}
    lines = ["| stage | data | ours (s) | limit (s) | ours / limit |", "|---|---|---:|---:|---:|"]
    for name in a.stages:
        o, lim = statistics.median(times[name]["ours"]), statistics.median(times[name]["limit"])
        lines.append(f"| {name} | {sizes[name]} | {o:.1f} | {lim:.1f} | **{o / lim:.2f}×** |")
    cmd = "python bench/limits.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    text = "\n".join(lines) + f"\n\nMedians of {a.repeats} repeat(s); command: `{cmd}`\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "repeats": a.repeats, "times": times}, indent=1))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
