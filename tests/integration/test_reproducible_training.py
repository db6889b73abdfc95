"""Training is bit-reproducible for a given seed: two real Ray Train workers, two Petastorm reader
threads each (the defaults), many row groups; a second run, and a run whose worker dies mid-epoch
and resumes from the last checkpoint, end with the same weights to the last bit."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from tests.crash_method import crash_overrides
from tests.integration.test_stream import write_gaussian_table

CFG = ["model.name=mlp", "model.hidden=[32]", "model.dropout=0.2", "train.batch_size=64", "train.lr=0.01",
       "train.progress=false", "train.num_workers=2", "stream.workers_count=2", "train.epochs=2",
       "train.max_failures=2"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    write_gaussian_table(root / "train", 2400, 4, weights=[8, 4, 2, 1], files=4, seed=0, row_group=50)
    write_gaussian_table(root / "val", 400, 4, files=2, seed=1, start_id=10**6)
    return root


def state_hash(model_dir: Path) -> str:
    state = torch.load(Path(model_dir) / "model.pt", weights_only=True)
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _val(r: dict) -> list:
    return [{k: v for k, v in h.items() if k.startswith("val_")} for h in r["history"]]


def test_same_seed_same_weights_also_after_a_resume(ray_local, table, tmp_path):
    from pipeline.train.trainer import train_model

    cfg = load_config(None, CFG)
    a = train_model(cfg, str(table / "train"), str(table / "val"), str(tmp_path / "a"))
    b = train_model(cfg, str(table / "train"), str(table / "val"), str(tmp_path / "b"))
    assert state_hash(a["model_dir"]) == state_hash(b["model_dir"])
    assert _val(a) == _val(b)
    crash = load_config(None, CFG + crash_overrides("1:3:1", tmp_path / "c"))  # rank 1 dies at epoch 1, step 3
    c = train_model(crash, str(table / "train"), str(table / "val"), str(tmp_path / "c"))
    assert (tmp_path / "c" / ".crashed-1-3-1").is_file()           # it really died, and resumed
    assert (tmp_path / "c" / ".resumed-after-0").is_file()
    snap = json.loads(next((tmp_path / "c" / "ray").glob("train-*/checkpoint_manager_snapshot.json")).read_text())
    assert [x["metrics"]["epoch"] for x in snap["checkpoint_results"]] == [1, 2]
    assert state_hash(c["model_dir"]) == state_hash(a["model_dir"])
    assert _val(c) == _val(a)
    other = train_model(load_config(None, CFG + ["run.seed=1"]), str(table / "train"), str(table / "val"),
                        str(tmp_path / "d"))
    assert state_hash(other["model_dir"]) != state_hash(a["model_dir"])   # the hash can tell runs apart
