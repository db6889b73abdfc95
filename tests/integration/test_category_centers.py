"""Category centers (Zhang et al.): class centroids of the deep features after training, saved in the
model artifact and used by Spark prediction as a nearest-centroid classifier — checked against
scikit-learn's NearestCentroid fitted on features extracted here from the saved model."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestCentroid

from pipeline.config import load_config
from tests.integration.test_stream import write_gaussian_table

K = 4
BASE = ["model.name=mlp", "model.hidden=[16, 8]", "train.batch_size=64", "train.lr=0.02", "train.progress=false",
        "stream.workers_count=1", "train.method_params={category_centers: true}"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc")
    write_gaussian_table(root / "train", 1500, K, d=6, weights=[8, 4, 2, 1], files=3, seed=0, spread=1.5)
    write_gaussian_table(root / "val", 400, K, d=6, files=2, seed=1, start_id=10**6, spread=1.5)
    write_gaussian_table(root / "test", 500, K, d=6, files=2, seed=2, start_id=2 * 10**6, spread=1.5)
    return root


def _features(model_dir, table):
    """Deep features of every row of ``table`` under the saved model, computed here directly."""
    from pipeline.train.saved_model import load_model

    model, _ = load_model(str(model_dir))
    t = pq.read_table(table).to_pandas().sort_values("id").reset_index(drop=True)
    x = torch.tensor(np.stack(t["features"].to_numpy()), dtype=torch.float32)
    with torch.no_grad():
        f = model.features(x).double().numpy()
    return t, f


def _check_centroids_match_sklearn(model_dir, train_table):
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["category_centers"]["file"] == "centroids.pt" and meta["category_centers"]["metric"] == "euclidean"
    cent = torch.load(model_dir / "centroids.pt", weights_only=True)
    assert isinstance(cent, torch.Tensor) and cent.shape == (K, 8)
    t, f = _features(model_dir, train_table)
    nc = NearestCentroid().fit(f, t["label"].to_numpy())
    np.testing.assert_allclose(cent.numpy(), nc.centroids_, rtol=1e-5, atol=1e-5)
    return nc, cent


def test_ray_two_workers_centroids_cover_every_row_once(ray_local, tables, tmp_path):
    """Each worker sums its own shard; the all-reduced centroids equal sklearn's over the whole table."""
    from pipeline.train.trainer import train_model

    cfg = load_config(None, BASE + ["train.epochs=2", "train.num_workers=2"])
    r = train_model(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "run"))
    _check_centroids_match_sklearn(tmp_path / "run" / "model", tables / "train")
    assert r["epochs_run"] == 2


def test_local_training_saves_centroids_and_spark_predicts_by_nearest_centroid(spark, tables, tmp_path):
    from pipeline.train.predict import predict
    from pipeline.train.saved_model import load_centroids
    from pipeline.train.trainer import train_local

    cfg = load_config(None, BASE + ["train.epochs=2"])
    r = train_local(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "out"))
    model_dir = tmp_path / "out" / "model"
    nc, cent = _check_centroids_match_sklearn(model_dir, tables / "train")
    assert torch.equal(load_centroids(str(model_dir)), cent)

    out = predict(spark, str(model_dir), str(tables / "test"), str(tmp_path / "preds"), batch_size=100)
    d = pq.read_table(out).to_pandas().sort_values("id").reset_index(drop=True)
    t, f = _features(model_dir, tables / "test")
    assert d["id"].tolist() == t["id"].tolist()
    want = nc.predict(f)
    assert (d["pred"].to_numpy() == want).all()                         # nearest centroid, as sklearn
    probs = np.stack(d["probs"].to_numpy())
    dist = cdist(f, nc.centroids_)                                      # softmax(−distance), T = 1
    ref = np.exp(-(dist - dist.min(axis=1, keepdims=True)))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    assert (probs.argmax(axis=1) == d["pred"].to_numpy()).all()
    assert (d["pred"].to_numpy() == d["label"].to_numpy()).mean() > 0.5  # chance is 0.25

    # a model without centroids still predicts with its classifier layer (argmax of the logits)
    cfg2 = load_config(None, [o for o in BASE if "method_params" not in o] + ["train.epochs=1"])
    train_local(cfg2, str(tables / "train"), str(tables / "val"), str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "model" / "centroids.pt").exists()
    assert load_centroids(str(tmp_path / "plain" / "model")) is None


def test_temperature_and_bad_params(tables, tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.train.scorer import centroid_probs
    from pipeline.train.loop import centers_params

    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0], [float("nan"), 0.0]])
    p = centroid_probs(f, c, temperature=2.0).numpy()
    e = np.exp(-np.array([[0, 5], [5, 0]]) / 2.0)
    np.testing.assert_allclose(p[:, :2], e / e.sum(axis=1, keepdims=True))
    assert (p[:, 2] == 0).all()                                          # no centroid: probability 0
    for bad in ("{category_centers: 1}", "{category_centers: true, centroid_metric: manhattan}",
                "{category_centers: true, centroid_temperature: 0}"):
        with pytest.raises(ConfigError):
            centers_params(load_config(None, [f"train.method_params={bad}"]).train)
