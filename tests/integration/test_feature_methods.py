"""LMLE, DOS and CRL trained end to end on a small imbalanced Gaussian table: locally (plain
PyTorch loop), on Ray Train with 2 workers (LMLE: banks merged across workers, centres refit after
training), resumed from a checkpoint, and scored by Spark prediction with LMLE's cluster-wise kNN."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.train.features.common import row_fingerprint, same_rows
from pipeline.train.features.dos import DOSHook
from pipeline.train.features.lmle import LMLEHook
from pipeline.train.hooks import load_inference_state, register
from tests.integration.test_stream import write_gaussian_table

K = 4
WEIGHTS = [0.55, 0.3, 0.1, 0.05]
BASE = ["model.name=mlp", "model.hidden=[16]", "train.batch_size=64", "train.lr=0.01", "train.progress=false",
        "stream.workers_count=1", "train.select_metric=macro_f1"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_methods")
    write_gaussian_table(root / "train", 800, K, d=4, files=2, seed=0, weights=WEIGHTS, spread=2.0)
    write_gaussian_table(root / "val", 200, K, d=4, files=2, seed=1, start_id=10**6, spread=2.0)
    return root


def _local(cfg_over, tables, out):
    from pipeline.train.trainer import train_local

    cfg = load_config(None, BASE + cfg_over)
    return train_local(cfg, str(tables / "train"), str(tables / "val"), str(out))


def test_lmle_local_refit_and_spark_predict_use_the_knn_rule(spark, tables, tmp_path):
    from pipeline.train.predict import predict
    from pipeline.train.saved_model import load_model

    r = _local(["train.epochs=3", "train.method=lmle", "train.method_params.clusters=2",
                "train.method_params.bank_size=40", "train.method_params.knn=3"], tables, tmp_path / "out")
    model_dir = tmp_path / "out" / "model"
    assert json.loads((model_dir / "model.json").read_text())["train_method"]["name"] == "lmle"
    method, state = load_inference_state(model_dir)
    assert method == "lmle" and state["refit"] is True
    # two clusters for each class, centres in the unit ball of the normalised feature space
    assert sorted(state["centre_class"].tolist()) == sorted([c for c in range(K) for _ in range(2)])
    assert (state["centres"].norm(dim=1) <= 1 + 1e-5).all()
    assert r["history"][-1]["val_macro_f1"] > 0.3

    # Spark prediction == the kNN rule over the saved centres, computed here row by row
    out = predict(spark, str(model_dir), str(tables / "val"), str(tmp_path / "preds"), batch_size=64)
    d = pq.read_table(out).to_pandas().sort_values("id")
    probs = np.stack(d["probs"].to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert (probs.argmax(1) == d["pred"].to_numpy()).all()

    model, _ = load_model(str(model_dir))
    t = pq.read_table(str(tables / "val")).to_pandas()
    cen, ccls = state["centres"].numpy(), state["centre_class"].numpy()
    with torch.no_grad():
        _, f = model(torch.tensor(np.stack(t["features"].to_numpy()), dtype=torch.float32), return_features=True)
    f = torch.nn.functional.normalize(f, dim=1).numpy()
    ids, preds = t["id"].tolist(), [_knn_rule(row, cen, ccls, 3) for row in f]
    want = dict(zip(ids, preds))
    assert [want[i] for i in d["id"]] == d["pred"].tolist()


def _knn_rule(q, centres, cls, k):
    dist = ((centres - q) ** 2).sum(1)
    nn = np.argsort(dist, kind="stable")[:k]
    labels = sorted(set(cls[nn].tolist()))
    if len(labels) == 1:
        return labels[0]
    score = {c: min(dist[j] for j in nn if cls[j] != c) - max(dist[j] for j in nn if cls[j] == c) for c in labels}
    return max(labels, key=lambda c: (score[c], -c))


def test_dos_local_trains_and_resumes_with_its_bank(tables, tmp_path):
    from pipeline.train.loop import run_training

    over = ["train.method=dos", "train.method_params.bank_size=50"]
    r = _local(["train.epochs=2"] + over, tables, tmp_path / "out")
    assert r["epochs_run"] == 2 and np.isfinite(r["history"][-1]["train_loss"])
    ck = sorted((tmp_path / "out" / "checkpoints").glob("epoch-*"))[-1]
    ms = torch.load(ck / "method_state.pt", weights_only=False)
    f, c, fp = ms["train"]["bank"]
    counts = np.bincount(c.numpy(), minlength=K)
    # classes 2, 3 are the minority (below the mean size): their neighbours come from a bank of ≤ 50 rows each
    assert counts.max() <= 50 and (counts > 0).all() and f.shape[1] == 16
    h = DOSHook({"bank_size": 50}, K, np.bincount(np.random.default_rng(0).choice(K, 800, p=WEIGHTS)), 16)
    assert h.k.tolist() == [0, 0, 3, 3]
    cfg3 = load_config(None, BASE + ["train.epochs=3", "train.patience=null"] + over)
    r3 = run_training(cfg3, str(tables / "train"), str(tables / "val"), str(tmp_path / "out3"), resume_dir=str(ck),
                      epochs=3)
    assert r3["epochs_run"] == 3 and len(r3["history"]) == 3


def test_crl_local_trains(tables, tmp_path):
    r = _local(["train.epochs=2", "train.method=crl", "train.method_params.hard_k=3"], tables, tmp_path / "out")
    assert r["epochs_run"] == 2 and all(np.isfinite(h["train_loss"]) for h in r["history"])
    # CRL keeps prediction plain softmax: no method state in the model directory
    assert load_inference_state(tmp_path / "out" / "model") is None


def _probe(base):
    """A test-only copy of a hook that also writes its bank after every refresh (per rank, per epoch)."""

    class Probe(base):
        name = base.name + "_probe"

        def __init__(self, params, *a):
            params = dict(params)
            self.probe_dir = params.pop("probe_dir")
            super().__init__(params, *a)

        def start_epoch(self, ctx):
            super().start_epoch(ctx)
            torch.save(self.bank, f"{self.probe_dir}/bank-{ctx.epoch}-{ctx.rank}.pt")

        @classmethod
        def after_fit(cls, model_dir, cfg, val_path):
            import copy

            cfg = copy.deepcopy(cfg)
            cfg.train.method_params.pop("probe_dir")
            super().after_fit(model_dir, cfg, val_path)

    return register(Probe)


LMLEProbe, DOSProbe = _probe(LMLEHook), _probe(DOSHook)


@pytest.mark.parametrize("method", ["lmle", "dos"])
def test_ray_train_two_workers_share_one_bank(ray_local, tables, tmp_path, method):
    from pipeline.train.trainer import train_model

    probe = tmp_path / "probe"
    probe.mkdir()
    cfg = load_config(None, BASE + ["train.epochs=2", "train.num_workers=2", f"train.method={method}_probe",
                                    f"train.method_params.probe_dir={probe}", "train.method_params.bank_size=40"]
                      + (["train.method_params.clusters=2"] if method == "lmle" else []))
    r = train_model(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "run"))
    assert r["epochs_run"] == 2
    # every worker holds the same bank, and it mixes rows of both workers' shards (one file each)
    files = sorted((tables / "train").glob("part-*.parquet"))
    shard_fps = []
    for f in files:
        x = np.stack(pq.read_table(f).column("features").to_numpy(zero_copy_only=False))
        shard_fps.append(row_fingerprint(torch.tensor(x, dtype=torch.float32)))
    for epoch in range(2):
        b0, b1 = (torch.load(probe / f"bank-{epoch}-{rank}.pt", weights_only=False) for rank in (0, 1))
        for t0, t1 in zip(b0, b1):
            assert torch.equal(t0, t1)
        fps = b0[-1]
        assert all(same_rows(fps, s).any(1).sum() > 0 for s in shard_fps)
        assert same_rows(fps, torch.cat(shard_fps)).any(1).all()
    saved = load_inference_state(tmp_path / "run" / "model")
    if method == "lmle":                                 # centres refit on the driver after training
        assert saved[0] == "lmle_probe" and saved[1]["refit"] is True
        assert sorted(set(saved[1]["centre_class"].tolist())) == list(range(K))
    else:                                                # DOS predicts with the plain softmax
        assert saved is None
