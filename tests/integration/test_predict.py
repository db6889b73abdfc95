"""Batch prediction with Spark: the predictions contract, agreement with the model run directly,
atomic output, one-line errors (library and CLI)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import InputError
from tests.integration.test_stream import write_gaussian_table, write_image_table


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.train.trainer import train_local

    root = tmp_path_factory.mktemp("pred")
    write_gaussian_table(root / "train", 1200, 3, d=6, weights=[4, 2, 1], files=2, seed=0)
    write_gaussian_table(root / "test", 500, 3, d=6, files=3, seed=2, start_id=5000)
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[16]", "train.epochs=2", "train.batch_size=128",
                             "train.lr=0.01", "train.progress=false"])
    r = train_local(cfg, str(root / "train"), str(root / "train"), str(root / "out"))
    return root, r["model_dir"]


def test_predict_writes_the_contract_and_agrees_with_the_model(spark, trained):
    from pipeline.train.predict import predict
    from pipeline.train.saved_model import load_model

    root, model_dir = trained
    out = predict(spark, model_dir, str(root / "test"), str(root / "preds"), batch_size=64)
    t = pq.read_table(out)
    assert t.column_names == ["id", "label", "probs", "pred", "probs_corrected"]
    d = t.to_pandas().sort_values("id").reset_index(drop=True)
    src = pq.read_table(root / "test").to_pandas().sort_values("id").reset_index(drop=True)
    assert d["id"].tolist() == src["id"].tolist()                 # every row exactly once
    assert (d["label"].to_numpy() == src["label"].to_numpy()).all()
    probs = np.stack(d["probs"].to_numpy())
    assert probs.shape == (500, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (d["pred"].to_numpy() == probs.argmax(axis=1)).all()
    model, meta = load_model(model_dir)                           # the model run directly
    with torch.no_grad():
        ref = torch.softmax(model(torch.tensor(np.stack(src["features"].to_numpy()), dtype=torch.float32)), 1)
    np.testing.assert_allclose(probs, ref.double().numpy(), atol=1e-5)
    # a model trained outside `imbalance run` has no calibration block: nothing to correct
    np.testing.assert_allclose(np.stack(d["probs_corrected"].to_numpy()), probs, rtol=1e-12)
    assert (d["pred"].to_numpy() == (d["label"].to_numpy())).mean() > 0.6   # it learned something
    assert not [p for p in (root).iterdir() if p.name.startswith(".preds")]  # no temp dirs left
    assert (root / "preds" / "_predictions.json").is_file()


def test_predict_applies_the_models_prior_correction_and_temperature(spark, trained, tmp_path):
    import shutil

    from pipeline.io import read_json, write_json
    from pipeline.train.predict import predict

    root, model_dir = trained
    md = tmp_path / "model"
    shutil.copytree(model_dir, md)
    meta = read_json(md / "model.json")
    pi, pi_model, T = [0.9, 0.09, 0.01], [1 / 3, 1 / 3, 1 / 3], 1.7
    meta["calibration"] = {"train_prior": pi, "model_prior": pi_model, "prior_correction": True,
                           "prior_correction_setting": "on", "temperature": T}
    write_json(md / "model.json", meta)
    d = pq.read_table(predict(spark, str(md), str(root / "test"), str(tmp_path / "p"))).to_pandas()
    raw = np.stack(d["probs"].to_numpy())
    got = np.stack(d["probs_corrected"].to_numpy())
    bayes = raw * (np.array(pi) / np.array(pi_model))        # Bayes' rule by hand, then the temperature
    bayes /= bayes.sum(axis=1, keepdims=True)
    tempered = bayes ** (1 / T)
    tempered /= tempered.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, tempered, rtol=1e-9)
    assert (d["pred"].to_numpy() == raw.argmax(axis=1)).all()  # the decision is the trained one
    assert read_json(tmp_path / "p" / "_predictions.json")["calibration"]["temperature"] == T
    raw_only = pq.read_table(predict(spark, str(md), str(root / "test"), str(tmp_path / "r"), corrected=False))
    assert raw_only.column_names == ["id", "label", "probs", "pred"]


def test_predict_images_and_errors(spark, trained, tmp_path):
    from pipeline.train.predict import predict, predict_from_config
    from pipeline.train.trainer import train_local

    write_image_table(tmp_path / "img", [80, 40], shape=(8, 8), n_classes=3)
    cfg = load_config(None, ["model.name=lenet", "train.epochs=1", "train.batch_size=32", "train.progress=false"])
    md = train_local(cfg, str(tmp_path / "img"), None, str(tmp_path / "m"))["model_dir"]
    out = predict(spark, md, str(tmp_path / "img"), str(tmp_path / "p"))
    t = pq.read_table(out)
    assert t.num_rows == 120 and len(t.column("probs")[0].as_py()) == 3

    root, model_dir = trained
    with pytest.raises(InputError, match="not a model directory"):
        predict(spark, str(tmp_path / "nope"), str(root / "test"), str(tmp_path / "x"))
    with pytest.raises(InputError, match="not found"):
        predict(spark, model_dir, str(tmp_path / "missing"), str(tmp_path / "x"))
    with pytest.raises(InputError, match="no 'image' column"):     # image model on a tabular table
        predict(spark, md, str(root / "test"), str(tmp_path / "x"))
    write_image_table(tmp_path / "img4", [30], shape=(8, 8), n_classes=4)
    with pytest.raises(InputError, match="classes"):                # 3-class model, 4-class table
        predict(spark, md, str(tmp_path / "img4"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="predict.model"):
        predict_from_config(load_config(None, []))


def test_cli_exit_codes(tmp_path, trained):
    from pipeline.cli import main

    root, model_dir = trained
    cfg = tmp_path / "c.yaml"
    cfg.write_text("predict:\n  model: %s\n" % model_dir)
    assert main(["predict", str(cfg)]) == 2                      # predict.input missing: one line, exit 2
    assert main(["train", str(cfg)]) == 2                        # train.train_path missing
