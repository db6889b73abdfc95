"""The method-hook plumbing of the training loop (pipeline.train.hooks) with a probe hook:
its per-batch loss is what is minimised, its state survives checkpoints (local and on Ray Train
workers), its inference state at the *best* epoch reaches the model directory, and Spark
prediction scores rows with the hook's own rule."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.train.hooks import HOOKS, MethodHook, load_inference_state, register
from tests.integration.test_stream import write_gaussian_table

K = 3


@register
class ProbeHook(MethodHook):
    """Counts steps and epochs; its inference state is a class-score bias that predict must apply."""

    name = "probe_hook"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps = 0
        self.epochs_seen: list[int] = []
        self.rows_seen = 0

    def start_epoch(self, ctx):
        self.epochs_seen.append(ctx.epoch)
        n = torch.zeros(1, dtype=torch.float64)
        for x, y in ctx.table_once():
            n += len(y)
        self.rows_seen = int(ctx.all_reduce(n.to(ctx.device)).item())

    def batch_loss(self, model, x, y, loss_fn, autocast):
        with autocast:
            logits, feats = model(x, return_features=True)
        assert feats.shape[1] == self.feature_dim
        return loss_fn(logits, y)

    def after_step(self):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps, "epochs_seen": list(self.epochs_seen)}

    def load_state_dict(self, state):
        self.steps, self.epochs_seen = state["steps"], list(state["epochs_seen"])

    def inference_state(self):
        return {"bias": torch.tensor([0.0, 0.0, 1e6]), "steps": self.steps, "epochs_seen": list(self.epochs_seen),
                "rows_seen": self.rows_seen}

    @staticmethod
    def predict(state, model, x):
        return torch.softmax(model(x).float() + state["bias"], dim=1).double()


BASE = ["model.name=mlp", "model.hidden=[8]", "train.batch_size=50", "train.lr=0.01", "train.progress=false",
        "stream.workers_count=1", "train.method=probe_hook", "train.select_metric=val_loss"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    write_gaussian_table(root / "train", 600, K, d=4, files=2, seed=0)
    write_gaussian_table(root / "val", 150, K, d=4, files=2, seed=1, start_id=10**6)
    return root


def test_local_hook_state_checkpoints_and_prediction(spark, tables, tmp_path):
    from pipeline.train.predict import predict
    from pipeline.train.trainer import train_local

    cfg = load_config(None, BASE + ["train.epochs=2"])
    r = train_local(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "out"))
    model_dir = tmp_path / "out" / "model"
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["train_method"]["name"] == "probe_hook"
    method, state = load_inference_state(model_dir)
    steps_per_epoch = r["history"][0]["steps"]
    best = r["best_epoch"]
    assert method == "probe_hook" and state["rows_seen"] == 600
    assert state["epochs_seen"] == list(range(best)) and state["steps"] == steps_per_epoch * best  # best_epoch is 1-based

    # resume: a third epoch continues from the saved hook state
    cfg3 = load_config(None, BASE + ["train.epochs=3", "train.select_metric=macro_f1", "train.patience=null"])
    from pipeline.train.loop import run_training

    ck = tmp_path / "out" / "checkpoints"
    latest = sorted(ck.glob("epoch-*"))[-1]
    r3 = run_training(cfg3, str(tables / "train"), str(tables / "val"), str(tmp_path / "out3"),
                      resume_dir=str(latest), epochs=3)
    assert r3["epochs_run"] == 3
    ms = torch.load(latest / "method_state.pt", weights_only=False)
    assert ms["train"]["epochs_seen"] == [0, 1]

    # Spark's Python workers import the hook's module (named in method_state.pt) to score rows
    from pipeline.train.predict import predict

    out = predict(spark, str(model_dir), str(tables / "train"), str(tmp_path / "preds"), batch_size=64)
    d = pq.read_table(out).to_pandas()
    assert len(d) == 600 and (d["pred"] == 2).all()                # the hook's bias decided every row
    np.testing.assert_allclose(np.stack(d["probs"].to_numpy()).sum(axis=1), 1.0)


def test_ray_workers_carry_hook_state_to_the_model(ray_local, tables, tmp_path):
    from pipeline.train.trainer import train_model

    cfg = load_config(None, BASE + ["train.epochs=2", "train.num_workers=2"])
    r = train_model(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "run"))
    method, state = load_inference_state(tmp_path / "run" / "model")
    assert method == "probe_hook" and state["rows_seen"] == 600     # both shards, summed across workers
    assert state["epochs_seen"] == list(range(r["best_epoch"]))  # 1-based best_epoch


def test_unknown_method_is_one_config_error(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.flows.run import run_pipeline

    cfg = load_config(None, ["train.method=nonesuch", f"run.root={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown method 'nonesuch'"):
        run_pipeline(cfg)
    assert "probe_hook" in HOOKS


def test_bad_method_params_fail_on_the_driver_before_ray(tables, tmp_path):
    """A bad key is one ConfigError from train_model itself (no Ray Train run is started)."""
    from pipeline.errors import ConfigError
    from pipeline.train.trainer import train_model

    cfg = load_config(None, BASE + ["train.epochs=1", "train.num_workers=2", "train.method=lmle",
                                    "train.method_params={clusterz: 3}"])
    with pytest.raises(ConfigError, match="train.method_params.clusterz"):
        train_model(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
