"""A two-phase ``recommend`` trial (pre-train, then fine-tune from that model) stopped at any epoch
and resumed from its last checkpoint trains the same model, to the last bit, as one never stopped;
so does a finalist's first seed that goes on from its search trial's checkpoint."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.flows.recommend_search import PHASE_FILE, _train_and_write, trial_entry
from tests.integration.test_reproducible_training import state_hash
from tests.integration.test_stream import write_gaussian_table

CFG = ["model.name=mlp", "model.hidden=[16]", "train.batch_size=64", "train.lr=0.01", "train.progress=false",
       "train.num_workers=0", "train.epochs=2", "train.method=two_phase", "train.seed=0",
       "train.method_params={pretrain: {strategy: ros}, pretrain_epochs: 2}"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("trial")
    write_gaussian_table(root / "train", 1200, 3, weights=[8, 2, 1], files=2, seed=0, row_group=100)
    write_gaussian_table(root / "pretrain", 1200, 3, files=2, seed=2, row_group=100, start_id=10**5)
    write_gaussian_table(root / "val", 300, 3, files=1, seed=1, start_id=10**6)
    return root


def _entry(tables: Path, out: Path) -> dict:
    cfg = load_config(None, CFG).to_dict()
    return trial_entry("tp", cfg, str(tables / "train"), str(tables / "val"), str(out), 2,
                       pretrain={"train_path": str(tables / "pretrain"), "epochs": 2, "finetune_lr": None})


def test_a_two_phase_trial_resumed_in_either_phase_trains_the_same_model(tables, tmp_path):
    kept = []

    def keep(metrics: dict, ckpt_dir):
        d = tmp_path / "ckpts" / str(len(kept))
        shutil.copytree(ckpt_dir, d)
        kept.append(d)

    whole = _entry(tables, tmp_path / "whole")
    _train_and_write(whole, keep, None)
    assert [(d / PHASE_FILE).read_text() for d in kept] == ["pretrain"] * 2 + ["finetune"] * 2
    assert (tmp_path / "whole" / "pretrain" / "model" / "model.pt").is_file()
    expected = state_hash(tmp_path / "whole" / "model")
    for k, left in ((0, 3), (2, 1)):     # after the first pre-training epoch, after the first fine-tuning epoch
        out, reports = tmp_path / f"resumed{k}", []
        _train_and_write(_entry(tables, out), lambda m, d: reports.append(m), str(kept[k]))
        assert len(reports) == left, k                       # only the epochs after the checkpoint train again
        assert state_hash(out / "model") == expected, k


def test_a_finalist_goes_on_from_its_search_trials_checkpoint(tables, tmp_path):
    kept = []
    _train_and_write(_entry(tables, tmp_path / "whole"), lambda m, d: kept.append(shutil.copytree(
        d, tmp_path / "ckpts" / str(len(kept)))), None)
    finalist = _entry(tables, tmp_path / "finalist")       # another directory: no pre-trained model there
    finalist["resume_from"] = str(kept[2])
    reports = []
    _train_and_write(finalist, lambda m, d: reports.append(m), None)
    assert len(reports) == 1 and not (tmp_path / "finalist" / "pretrain").exists()
    assert state_hash(tmp_path / "finalist" / "model") == state_hash(tmp_path / "whole" / "model")
