"""Two-phase learning (Lee et al.; Buda et al.) through the pipeline: phase 1 trains on the sampled
set, phase 2 on the full training split, and phase 2 starts from phase 1's weights (checked with a
fine-tuning learning rate so small that the weights cannot move: the final model *is* the
pre-trained one, and differs from a fresh initialisation)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.flows.run import run_pipeline

BASE = ["data.synth_preset=digits", "data.protocol=step", "data.protocol_rho=10", "data.protocol_mu=0.5",
        "data.protocol_scope=train", "model.name=mlp", "model.hidden=[16]", "train.num_workers=0",
        "train.batch_size=32", "train.lr=0.01", "train.progress=false", "stream.row_group_mb=0.05",
        "train.method=two_phase"]


def _meta(d: Path) -> dict:
    return json.loads((d / "model.json").read_text())


def test_two_phase_switches_data_and_keeps_weights(spark, tmp_path):
    cfg = load_config(None, BASE + [f"run.root={tmp_path}", "run.id=tp", "train.epochs=1",
                                    "train.method_params={pretrain: {strategy: rus}, pretrain_epochs: 3, "
                                    "finetune_lr: 1.0e-12}"])
    run = Path(run_pipeline(cfg))
    pre, fine = run / "train" / "pretrain" / "model", run / "train" / "model"
    pm, fm = _meta(pre), _meta(fine)
    # phase 1: the RUS-balanced set; phase 2: the full (imbalanced) training data
    assert pm["train_path"].endswith("materialize_pretrain") and fm["train_path"].endswith("/materialize")
    pre_counts = [v for v in pm["class_counts"]]
    assert len(set(pre_counts)) == 1 and sum(pre_counts) < sum(fm["class_counts"])
    assert max(fm["class_counts"]) >= 9 * min(fm["class_counts"])
    assert fm["init_from"] == str(pre) and pm["epochs_run"] == 3 and fm["epochs_run"] == 1
    # phase 2 started from phase 1's weights: with lr 1e-12 they are (to 1e-6) the pre-trained ones
    pw = torch.load(pre / "model.pt", weights_only=True)
    fw = torch.load(fine / "model.pt", weights_only=True)
    for k in pw:
        torch.testing.assert_close(fw[k], pw[k], rtol=0, atol=1e-6)
    from pipeline.config import ModelSection
    from pipeline.train.models import build_model

    torch.manual_seed(cfg.run.seed)
    fresh = build_model(ModelSection(name="mlp", hidden=[16]), tuple(fm["input_shape"]), fm["n_classes"]).state_dict()
    assert any((fresh[k] - fw[k]).abs().max() > 1e-3 for k in fw)    # and pre-training did move them


def test_two_phase_pretrain_in_the_reader_and_bad_keys(spark, tmp_path):
    cfg = load_config(None, BASE + [f"run.root={tmp_path}", "run.id=tpr", "train.epochs=1",
                                    "train.method_params={pretrain_read_sampling: {strategy: floor, floor: 60, "
                                    "augment: {kind: noise, sigma: 0.05}}, pretrain_epochs: 1}"])
    run = Path(run_pipeline(cfg))
    pm = _meta(run / "train" / "pretrain" / "model")
    assert pm["train"]["read_sampling"]["strategy"] == "floor"
    assert pm["train_path"].endswith("/materialize")                  # no pre-training set on disk
    assert not (run / "sample_pretrain").exists()
    hist = pm["history"][0]
    counts = pm["class_counts"]
    want = sum(max(c, 60) for c in counts)                             # floor: every class up to 60 rows
    assert abs(hist["read_expected_rows"] - want) < 1e-6
    assert _meta(run / "train" / "model")["train"]["read_sampling"] is None
    bad = load_config(None, BASE + [f"run.root={tmp_path}", "run.id=bad",
                                    "train.method_params={pretrian: {strategy: rus}}"])
    with pytest.raises(ConfigError, match="train.method_params.pretrian"):
        run_pipeline(bad)
