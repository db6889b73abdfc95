"""Learned class costs through the real pipeline parts (issue 8, items 1, 2, 6).

CoSen: trained locally and on 2 Ray Train workers on a small imbalanced Gaussian table; its
costs are learned from the held-out part (summed across workers), saved with the model, kept on
resume, and applied by Spark prediction. Cost search: a model biased against its minority classes
gets a DE-searched cost vector whose validation score never decreases over generations and beats
the plain argmax; the Ray-parallel confusion sums equal a direct NumPy computation over the table,
and the best vector reaches Spark prediction.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.train.hooks import load_inference_state
from tests.integration.test_stream import write_gaussian_table

K = 4
BASE = ["model.name=mlp", "model.hidden=[16]", "train.batch_size=64", "train.lr=0.01", "train.progress=false",
        "stream.workers_count=1", "train.patience=null"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    w = [0.85, 0.1, 0.04, 0.01]
    write_gaussian_table(root / "train", 2400, K, d=4, files=4, seed=0, weights=w, spread=1.2)
    write_gaussian_table(root / "val", 800, K, d=4, files=4, seed=1, start_id=10**6, spread=1.2)
    return root


def _read(path):
    t = pq.read_table(str(path), columns=["id", "label", "features"]).to_pandas().sort_values("id")
    x = torch.tensor(np.stack(t["features"].to_numpy()), dtype=torch.float32)
    return t["id"].to_numpy(), t["label"].to_numpy().astype(np.int64), x


def _model_probs(model_dir, x):
    from pipeline.train.saved_model import load_model

    model, _ = load_model(str(model_dir))
    with torch.no_grad():
        return torch.softmax(model(x).float(), dim=1).double().numpy()


def _check_spark_predictions(spark, model_dir, table, out, costs):
    """Spark's pred is argmax(costs · softmax), its probs the normalised cost-scaled softmax."""
    from pipeline.train.predict import predict

    ids, y, x = _read(table)
    p = _model_probs(model_dir, x) * np.asarray(costs)[None, :]
    p /= p.sum(axis=1, keepdims=True)
    d = pq.read_table(predict(spark, str(model_dir), str(table), str(out), batch_size=97)).to_pandas()
    d = d.sort_values("id")
    assert (d["id"].to_numpy() == ids).all()
    np.testing.assert_array_equal(d["pred"].to_numpy(), p.argmax(axis=1))
    np.testing.assert_allclose(np.stack(d["probs"].to_numpy()), p, rtol=1e-9, atol=1e-12)
    return d


# ------------------------------------------------------------------------------------- CoSen
def test_cosen_local_learns_saves_resumes_and_predicts(spark, tables, tmp_path):
    from pipeline.train.cost.cosen import histogram_costs
    from pipeline.train.loop import run_training
    from pipeline.train.trainer import train_local

    cfg = load_config(None, BASE + ["train.method=cosen", "train.epochs=3", "train.select_metric=val_loss"])
    r = train_local(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "out"))
    model_dir = tmp_path / "out" / "model"
    assert json.loads((model_dir / "model.json").read_text())["train_method"]["name"] == "cosen"
    method, state = load_inference_state(model_dir)
    assert method == "cosen"
    costs = state["costs"].numpy()
    assert costs.shape == (K,) and costs.max() == pytest.approx(1.0) and (costs > 0).all()
    # one ξ-step per epoch after the first, up to the best epoch; the costs changed from the start
    assert [u["epoch"] for u in state["updates"]] == list(range(1, r["best_epoch"]))  # best_epoch is 1-based
    counts = np.bincount(_read(tables / "train")[1], minlength=K)
    if state["updates"]:
        assert not np.allclose(costs, histogram_costs(counts, 0.5, 0.01))
        np.testing.assert_allclose(costs, state["updates"][-1]["costs"])

    # resume from the epoch-1 checkpoint: the costs come back and the run ends where the
    # uninterrupted one did (same data order, same weights, same ξ-step)
    ck = tmp_path / "out" / "checkpoints"
    saved = torch.load(ck / "epoch-0001" / "method_state.pt", weights_only=False)["train"]
    final = torch.load(ck / "epoch-0002" / "method_state.pt", weights_only=False)["train"]
    assert saved["last_update_epoch"] == 1 and len(saved["updates"]) == 1
    (tmp_path / "re" / "checkpoints").mkdir(parents=True)
    r2 = run_training(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "re"),
                      resume_dir=str(ck / "epoch-0001"), epochs=3)
    assert r2["epochs_run"] == 3
    again = torch.load(tmp_path / "re" / "checkpoints" / "epoch-0002" / "method_state.pt", weights_only=False)["train"]
    assert again["updates"][:1] == saved["updates"]
    np.testing.assert_allclose(again["costs"], final["costs"], rtol=1e-6)

    _check_spark_predictions(spark, model_dir, tables / "val", tmp_path / "preds", costs)


def test_cosen_on_two_ray_workers_sums_the_holdout_over_workers(ray_local, tables, tmp_path):
    from pipeline.train.cost.cosen import holdout_mask
    from pipeline.train.trainer import train_model

    cfg = load_config(None, BASE + ["train.method=cosen", "train.epochs=2", "train.num_workers=2",
                                    "train.select_metric=val_loss"])
    train_model(cfg, str(tables / "train"), str(tables / "val"), str(tmp_path / "run"))
    method, state = load_inference_state(tmp_path / "run" / "model")
    assert method == "cosen" and state["costs"].shape == (K,)
    # the last checkpoint's training state has the epoch-1 ξ-step; its held-out rows are those of
    # both workers' shards (all-reduced), i.e. of the whole table
    import glob

    ckpts = sorted(glob.glob(str(tmp_path / "run" / "ray" / "*" / "checkpoint_*" / "method_state.pt")))
    train_state = torch.load(ckpts[-1], weights_only=False)["train"]
    _, _, x = _read(tables / "train")
    expected = int(holdout_mask(x, 0.1).sum())
    assert 0 < expected < len(x)
    assert train_state["updates"][0]["holdout_rows"] == expected


# ------------------------------------------------------------------------------------- cost search
@pytest.fixture(scope="module")
def search_tables(tmp_path_factory):
    """Better separated classes, ρ = 90 in training, a balanced validation split."""
    root = tmp_path_factory.mktemp("search-data")
    write_gaussian_table(root / "train", 2400, K, d=4, files=4, seed=0, weights=[0.9, 0.07, 0.02, 0.01], spread=2.0)
    write_gaussian_table(root / "val", 800, K, d=4, files=4, seed=1, start_id=10**6, spread=2.0)
    return root


@pytest.fixture(scope="module")
def biased(search_tables, tmp_path_factory, ray_local):
    """A model trained on the ρ = 90 table never predicts its rarest class (validation G-mean 0);
    then searched by DE on the balanced validation split."""
    from pipeline.train.trainer import train_local

    out = tmp_path_factory.mktemp("search")
    cfg = load_config(None, BASE + ["train.method=cost_search", "train.epochs=2",
                                    "train.method_params={population: 8, generations: 6, shards: 3}",
                                    "run.seed=7"])
    r = train_local(cfg, str(search_tables / "train"), str(search_tables / "val"), str(out))
    return r["model_dir"], cfg


def test_cost_search_improves_and_never_worsens(biased, search_tables):
    from imblearn.metrics import geometric_mean_score

    model_dir, cfg = biased
    method, state = load_inference_state(model_dir)
    assert method == "cost_search" and state["searched"] and state["improved"] and state["metric"] == "g_mean"
    best = [h["best"] for h in state["history"]]
    assert len(best) == 7 and all(b2 >= b1 for b1, b2 in zip(best, best[1:]))   # elitist
    assert best[-1] > best[0]                                                   # DE found better
    assert state["score"] == best[-1] and state["score"] > state["baseline_score"]
    # the saved score is the G-mean of the cost-scaled decision on the validation table
    _, y, x = _read(search_tables / "val")
    p = _model_probs(model_dir, x)
    gm = geometric_mean_score(y, (p * state["costs"].numpy()).argmax(axis=1), average="multiclass")
    assert state["score"] == pytest.approx(gm, abs=1e-12)
    assert state["baseline_score"] == pytest.approx(geometric_mean_score(y, p.argmax(axis=1), average="multiclass"),
                                                    abs=1e-12)
    assert state["val_rows"] == len(y)
    # deterministic from the seed: the same search again gives the same costs
    from pipeline.train.cost.search import cost_search, search_params

    again = cost_search(model_dir, str(search_tables / "val"), K, search_params(cfg.train.method_params), 7)
    np.testing.assert_allclose(again["costs"].numpy(), state["costs"].numpy())


def test_ray_confusion_sums_equal_numpy(biased, search_tables):
    from sklearn.metrics import confusion_matrix

    from pipeline.train.cost.search import ValidationScores

    model_dir, _ = biased
    _, y, x = _read(search_tables / "val")
    p = _model_probs(model_dir, x)
    costs = np.exp(np.random.default_rng(3).normal(0, 1.5, size=(5, K)))
    costs[0] = 1.0
    vs = ValidationScores(model_dir, str(search_tables / "val"), K, shards=3)
    assert len(vs.data) == 3 and vs.rows == len(y)
    got = vs.confusions(costs, chunks=2)
    for k in range(len(costs)):
        ref = confusion_matrix(y, (p * costs[k]).argmax(axis=1), labels=list(range(K)))
        np.testing.assert_array_equal(got[k], ref)


def test_searched_costs_reach_spark_prediction(spark, biased, search_tables, tmp_path):
    model_dir, _ = biased
    _, state = load_inference_state(model_dir)
    d = _check_spark_predictions(spark, model_dir, search_tables / "val", tmp_path / "preds", state["costs"].numpy())
    _, y, x = _read(search_tables / "val")
    assert (d["pred"].to_numpy() != _model_probs(model_dir, x).argmax(axis=1)).any()   # the costs changed decisions

    # the report shows the searched vector (found through the predictions' model directory)
    from pipeline.evaluation.evaluate import evaluate_predictions
    from pipeline.evaluation.evaluate import write_report

    evaluate_predictions(spark, str(tmp_path / "preds"), str(tmp_path / "eval"), n_classes=K)
    write_report(str(tmp_path / "eval"), str(tmp_path / "report"), predictions=str(tmp_path / "preds"), spark=spark)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Class costs (cost_search)" in md
    for i, c in enumerate(state["costs"].numpy()):
        assert f"| {i} | {c:.4g} |" in md
    assert "Class costs (cost_search)" in (tmp_path / "report" / "report.html").read_text()


def test_cost_search_without_validation_is_one_input_error(ray_local, tables, tmp_path):
    from pipeline.errors import InputError
    from pipeline.train.trainer import train_local

    cfg = load_config(None, BASE + ["train.method=cost_search", "train.epochs=1"])
    with pytest.raises(InputError, match="needs a validation table"):
        train_local(cfg, str(tables / "train"), None, str(tmp_path / "out"))
