"""Training: the plain loop without Ray, then real Ray Train (2 workers) with a worker killed
mid-epoch, a stopped run resumed from its directory, and the model artifact."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from tests.crash_method import crash_overrides
from tests.integration.test_stream import write_gaussian_table, write_image_table

N_CLASSES = 4
TAB = ["model.name=mlp", "model.hidden=[32]", "train.batch_size=128", "train.lr=0.01",
       "train.progress=false", "stream.workers_count=1"]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """Imbalanced Gaussian classes (8:4:2:1), overlapping enough that chance-level is 0.25 macro-F1."""
    root = tmp_path_factory.mktemp("tab")
    write_gaussian_table(root / "train", 3000, N_CLASSES, weights=[8, 4, 2, 1], files=4, seed=0, spread=1.0)
    write_gaussian_table(root / "val", 800, N_CLASSES, files=2, seed=1, start_id=10**6, spread=1.0)
    return root


def _assert_artifact(model_dir: Path, epochs: int):
    meta = json.loads((model_dir / "model.json").read_text())
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    for key in ("model", "input_shape", "n_classes", "dataset", "class_counts", "loss", "best_epoch",
                "best_metrics", "history"):
        assert key in meta
    assert meta["n_classes"] == N_CLASSES and len(meta["history"]) == epochs
    assert [h["epoch"] for h in meta["history"]] == list(range(1, epochs + 1))  # 1-based, as the log
    best = max(meta["history"], key=lambda h: h["val_macro_f1"])
    assert meta["best_epoch"] == best["epoch"]
    from pipeline.train.saved_model import load_model
    model, _ = load_model(str(model_dir))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    return meta


def test_loop_runs_standalone_without_ray(tabular, tmp_path):
    """The loop in a fresh process that never imports Ray; it learns the tabular classes."""
    out = tmp_path / "local"
    script = textwrap.dedent(f"""
        import json, sys
        from pipeline.config import load_config
        from pipeline.train.trainer import train_local
        cfg = load_config(None, {TAB + ["train.epochs=3"]!r})
        r = train_local(cfg, {str(tabular / "train")!r}, {str(tabular / "val")!r}, {str(out)!r})
        print(json.dumps({{"ray": "ray" in sys.modules, "f1": r["best_metrics"]["val_macro_f1"],
                          "epochs": r["epochs_run"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["ray"] is False and res["epochs"] == 3
    assert res["f1"] > 0.6                                        # chance: 0.25
    meta = _assert_artifact(out / "model", 3)
    ckpts = sorted((out / "checkpoints").glob("epoch-*"))
    assert ckpts and (ckpts[-1] / "state.pt").is_file()
    st = torch.load(ckpts[-1] / "state.pt", weights_only=True)
    assert {"model", "optimizer"} <= set(st)
    assert meta["best_metrics"]["val_macro_f1"] == pytest.approx(res["f1"])


def test_local_resume_continues_and_early_stopping(tabular, tmp_path):
    from pipeline.train.trainer import train_local

    out = tmp_path / "resume"
    cfg = load_config(None, TAB + ["train.epochs=1"])
    first = train_local(cfg, str(tabular / "train"), str(tabular / "val"), str(out))
    cfg2 = load_config(None, TAB + ["train.epochs=2"])
    second = train_local(cfg2, str(tabular / "train"), str(tabular / "val"), str(out))
    assert second["epochs_run"] == 2
    assert second["history"][0] == first["history"][0]           # epoch 0 came from the checkpoint
    # a changed model does not resume someone else's checkpoint
    cfg3 = load_config(None, TAB + ["train.epochs=1", "model.hidden=[16]"])
    third = train_local(cfg3, str(tabular / "train"), str(tabular / "val"), str(out))
    assert third["epochs_run"] == 1 and third["history"][0] != first["history"][0]
    # early stopping: with lr 0 nothing changes, so no epoch beats the first and patience 1 stops at
    # the second of six
    cfg4 = load_config(None, TAB + ["train.epochs=6", "train.patience=1", "train.lr=0.0", "train.resume=false"])
    r = train_local(cfg4, str(tabular / "train"), str(tabular / "val"), str(tmp_path / "es"))
    assert r["stopped_early"] and r["epochs_run"] == 2 and r["best_epoch"] == 1
    assert r["history"][0]["val_macro_f1"] == r["history"][1]["val_macro_f1"]


def test_image_model_with_ldam_drw(tmp_path):
    from pipeline.train.trainer import train_local

    write_image_table(tmp_path / "tr", [300, 200], shape=(8, 8), n_classes=3, seed=0)
    write_image_table(tmp_path / "va", [100], shape=(8, 8), n_classes=3, seed=1, start_id=10**6)
    cfg = load_config(None, ["model.name=lenet", "train.epochs=2", "train.batch_size=64", "train.progress=false",
                             "train.loss=ldam", "train.loss_params={drw_epoch: 1, scale: 5}"])
    r = train_local(cfg, str(tmp_path / "tr"), str(tmp_path / "va"), str(tmp_path / "out"))
    assert r["epochs_run"] == 2 and all(np.isfinite(h["train_loss"]) for h in r["history"])
    assert len(r["history"][-1]["val_recall"]) == 3


def test_ray_two_workers_worker_killed_mid_epoch_recovers(ray_local, tabular, tmp_path):
    from pipeline.train.trainer import train_model

    cfg = load_config(None, TAB + ["train.epochs=2", "train.num_workers=2", "train.max_failures=2"]
                      + crash_overrides("1:2:1", tmp_path / "run"))   # rank 1 dies at epoch 1, step 2
    r = train_model(cfg, str(tabular / "train"), str(tabular / "val"), str(tmp_path / "run"))
    assert (tmp_path / "run" / ".crashed-1-2-1").is_file()        # the worker really died once
    assert (tmp_path / "run" / ".resumed-after-0").is_file()      # and the new group resumed after epoch 1
    # resumed from epoch 0's checkpoint: three checkpoints were reported in all would mean a
    # restart from scratch (0, then 0 and 1 again); resuming reports epoch 0 once and epoch 1 once
    snap = json.loads(next((tmp_path / "run" / "ray").glob("train-*/checkpoint_manager_snapshot.json"))
                      .read_text())
    assert [c["metrics"]["epoch"] for c in snap["checkpoint_results"]] == [1, 2]
    assert r["epochs_run"] == 2
    meta = _assert_artifact(Path(r["model_dir"]), 2)
    assert meta["world_size"] == 2
    steps = [h["steps"] for h in meta["history"]]
    assert steps == [12, 12]                                      # ceil(max shard 1500 / 128) on each worker
    assert meta["best_metrics"]["val_macro_f1"] > 0.6             # chance: 0.25


def test_ray_stopped_run_resumes_from_its_directory(ray_local, tabular, tmp_path):
    from pipeline.train.trainer import train_model

    out = tmp_path / "stopped"
    cfg = load_config(None, TAB + ["train.epochs=2", "train.num_workers=1", "train.max_failures=0"]
                      + crash_overrides("1:1:0", out))
    with pytest.raises(Exception):
        train_model(cfg, str(tabular / "train"), str(tabular / "val"), str(out))
    assert not (out / "model").exists()                           # no artifact from a failed run
    (ckpt,) = [p for p in (out / "ray").glob("train-*/checkpoint_*") if p.is_dir()]
    epoch0 = json.loads((ckpt / "progress.json").read_text())["history"][0]
    r = train_model(cfg, str(tabular / "train"), str(tabular / "val"), str(out))   # same command again
    assert r["epochs_run"] == 2
    assert r["history"][0] == epoch0                              # epoch 0 was not trained again
    _assert_artifact(Path(r["model_dir"]), 2)


def test_best_epoch_uses_the_logs_numbering(tabular, tmp_path, capsys):
    """best_epoch and history[].epoch are 1-based like the log's "epoch k/N" lines."""
    from pipeline.train.trainer import train_local

    cfg = load_config(None, TAB + ["train.epochs=3", "train.progress=true", "train.select_metric=macro_f1"])
    r = train_local(cfg, str(tabular / "train"), str(tabular / "val"), str(tmp_path / "out"))
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    logged = [int(ln.split()[1].split("/")[0]) for ln in printed]
    assert logged == [h["epoch"] for h in r["history"]] == [1, 2, 3]
    best_line = printed[logged.index(r["best_epoch"])]
    best_f1 = max(h["val_macro_f1"] for h in r["history"])
    assert f"val macro-F1 {best_f1:.4f}" in best_line
    meta = json.loads((tmp_path / "out" / "model" / "model.json").read_text())
    assert meta["best_epoch"] == r["best_epoch"] and meta["best_metrics"]["epoch"] == r["best_epoch"]


def test_two_class_validation_pr_auc_picks_the_epoch(tmp_path):
    """Two-class data: every epoch records the positive class's validation PR AUC and ROC AUC, equal to
    scikit-learn's on the saved model's log-odds rounded to the histogram's step; ``select_metric:
    pr_auc`` keeps the epoch with the highest. On four classes it is one clear error."""
    import pyarrow.parquet as pq
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipeline.errors import InputError
    from pipeline.train.confusion import MARGIN_BINS, MARGIN_RANGE
    from pipeline.train.saved_model import load_model
    from pipeline.train.trainer import train_local

    write_gaussian_table(tmp_path / "tr", 3000, 2, weights=[30, 1], files=2, seed=0, spread=0.7)
    write_gaussian_table(tmp_path / "va", 2000, 2, weights=[30, 1], files=2, seed=1, start_id=10**6, spread=0.7)
    cfg = load_config(None, TAB + ["train.epochs=3", "train.select_metric=pr_auc"])
    r = train_local(cfg, str(tmp_path / "tr"), str(tmp_path / "va"), str(tmp_path / "out"))
    aps = [h["val_pr_auc"] for h in r["history"]]
    assert r["best_epoch"] == 1 + int(np.argmax(aps)) and all(0 < a <= 1 for a in aps)
    model, _ = load_model(str(tmp_path / "out" / "model"))
    t = pq.read_table(tmp_path / "va")
    x = torch.tensor(np.stack(t["features"].to_numpy(zero_copy_only=False)).astype(np.float32))
    y = t["label"].to_numpy()
    with torch.no_grad():
        logits = model.eval()(x).double()
    margin = (logits[:, 1] - logits[:, 0]).numpy()
    w = 2 * MARGIN_RANGE / MARGIN_BINS
    rounded = np.floor((margin + MARGIN_RANGE) / w)
    best = r["best_metrics"]
    assert best["val_pr_auc"] == pytest.approx(average_precision_score(y, rounded), abs=1e-12)
    assert best["val_roc_auc"] == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)
    with pytest.raises(InputError, match="select_metric 'pr_auc' needs two-class data"):
        write_gaussian_table(tmp_path / "tr4", 400, 4, files=1, seed=0)
        train_local(cfg, str(tmp_path / "tr4"), str(tmp_path / "tr4"), str(tmp_path / "out4"))
