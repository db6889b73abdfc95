"""Prior correction on data no one here wrote: pixels of scikit-learn's two sample photographs.

Each row is a 3x3 RGB patch (27 numbers) from ``china.jpg`` (class 0) or ``flower.jpg`` (class 1).
The flower is kept at 2% of its patches before splitting, so every split is imbalanced (about 1:50);
training is under-sampled to balance with the real Spark sampler, then a real MLP is trained and the
real batch-prediction stage scores the imbalanced test split.

The probabilities corrected back to the training prior must be better calibrated there than the
raw ones (lower Brier score and lower ECE), and the evaluate scan's numbers must equal a plain
NumPy computation over the same predictions.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_sample_images
from sklearn.model_selection import train_test_split

from pipeline.config import load_config
from pipeline.data.prior_correction import calibration_block, correct_probs, scoring_transform
from pipeline.data.schema import DatasetInfo, write_info
from pipeline.io import read_json, write_json

pytestmark = pytest.mark.slow

N_CLASSES = 2


def _patches(img: np.ndarray, stride: int = 4) -> np.ndarray:
    """Every ``stride``-th pixel's 3x3 neighbourhood, as 27 floats in [0, 1]."""
    h, w, _ = img.shape
    shifted = [img[1 + dy:h - 1 + dy:stride, 1 + dx:w - 1 + dx:stride] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return (np.concatenate(shifted, axis=2).reshape(-1, 27) / 255.0).astype(np.float32)


def _photo_pixels(rare_rate: float = 0.02, seed: int = 0):
    china, flower = load_sample_images().images
    x0, x1 = _patches(china), _patches(flower)
    x1 = x1[np.random.default_rng(seed).uniform(size=len(x1)) < rare_rate]
    x = np.concatenate([x0, x1])
    y = np.r_[np.zeros(len(x0), np.int32), np.ones(len(x1), np.int32)]
    return x, y


def _write(out: Path, ids, x, y, n_classes: int):
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(y, pa.int32()),
                             "features": pa.array(list(x), pa.list_(pa.float32()))}), out / "part-0.parquet")
    counts = np.bincount(y, minlength=n_classes)
    write_info(out, DatasetInfo(kind="features", n_classes=n_classes, n_features=x.shape[1],
                                class_counts={str(i): int(c) for i, c in enumerate(counts)}))


def _ece(probs, labels, m=15):
    conf, hit = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for i in range(m):
        inside = (conf > i / m) & (conf <= (i + 1) / m)
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return total


def sampled_run(spark, root: Path, x, y, n_classes: int, seed: int = 0, strategy: str = "rus"):
    """Stratified 60/20/20 split, real Spark sampling to balance, a real MLP, real batch prediction.

    Returns the calibration block written into the model, the predictions' path and the evaluate
    scan's ``calibration`` section."""
    from pipeline.evaluation.metrics import compute_metrics
    from pipeline.prep.sampling import sample_dataset
    from pipeline.stream.materialize import materialize
    from pipeline.train.predict import predict
    from pipeline.train.trainer import train_local

    ids = np.arange(len(y))
    tr, rest = train_test_split(ids, test_size=0.4, stratify=y, random_state=seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    for name, idx in (("train", tr), ("val", va), ("test", te)):
        _write(root / name, ids[idx], x[idx], y[idx], n_classes)

    manifest = sample_dataset(spark, str(root / "train"), str(root / "sample"), strategy=strategy, random_state=seed)
    assert len(set(manifest["achieved"].values())) == 1                 # balanced by the sampler
    materialize(spark, str(root / "sample" / "data"), str(root / "mat"), seed=seed, row_group_mb=0.05)
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[64]", "train.epochs=30", "train.batch_size=64",
                             "train.lr=0.01", "train.progress=false", "train.num_workers=0", f"run.seed={seed}"])
    model_dir = train_local(cfg, str(root / "mat"), str(root / "val"), str(root / "out"))["model_dir"]
    block = calibration_block(manifest["input_counts"], manifest["achieved"], n_classes, "auto")
    assert block["prior_correction"]                                      # auto: sampling changed the prior
    meta = read_json(Path(model_dir) / "model.json")
    write_json(Path(model_dir) / "model.json", {**meta, "calibration": block})

    preds = predict(spark, model_dir, str(root / "test"), str(root / "preds"))
    return block, preds, compute_metrics(spark, preds, n_classes=n_classes, calibration=block).calibration


def test_prior_correction_improves_calibration_on_photo_pixels(spark, tmp_path):
    x, y = _photo_pixels()
    block, preds, m = sampled_run(spark, tmp_path, x, y, N_CLASSES)
    assert 0.01 < pq.read_table(preds, columns=["label"])["label"].to_numpy().mean() < 0.03  # test stays rare
    raw, fixed = m["raw"], m["prior_corrected"]
    assert fixed["brier"] < raw["brier"] and fixed["ece"] < raw["ece"], (raw["brier"], fixed["brier"],
                                                                          raw["ece"], fixed["ece"])

    # the distributed numbers are the plain ones over the same rows
    d = pq.read_table(preds).to_pandas()
    labels = d["label"].to_numpy()
    p_raw = np.stack(d["probs"].to_numpy())
    p_fixed = np.stack(d["probs_corrected"].to_numpy())
    np.testing.assert_allclose(p_fixed, correct_probs(p_raw, *scoring_transform(block)), rtol=1e-12)
    onehot = np.eye(N_CLASSES)[labels]
    assert raw["brier"] == pytest.approx(np.mean(np.sum((p_raw - onehot) ** 2, axis=1)), rel=1e-9)
    assert fixed["brier"] == pytest.approx(np.mean(np.sum((p_fixed - onehot) ** 2, axis=1)), rel=1e-9)
    assert raw["ece"] == pytest.approx(_ece(p_raw, labels), rel=1e-9, abs=1e-12)
    assert fixed["ece"] == pytest.approx(_ece(p_fixed, labels), rel=1e-9, abs=1e-12)
    print(f"photo pixels, RUS: Brier {raw['brier']:.4f} -> {fixed['brier']:.4f}, "
          f"ECE {raw['ece']:.4f} -> {fixed['ece']:.4f}")
