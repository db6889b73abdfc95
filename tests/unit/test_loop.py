"""Pure parts of the training loop against independent references (scikit-learn, closed forms)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion, f1_score, recall_score

from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.train.loop import (
    DrwSchedule,
    build_optimizer,
    confusion_matrix,
    drw_weight_for_epoch,
    metric_better,
    metrics_from_confusion,
    split_loss_params,
)
from pipeline.stream.readers import decode_features, decode_images, to_float


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = 5
    y = rng.integers(0, c - 1, 300)              # class 4 never occurs (support 0)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, c, 300))
    cm = confusion_matrix(torch.tensor(y), torch.tensor(p), c).numpy()
    np.testing.assert_array_equal(cm, sk_confusion(y, p, labels=list(range(c))))
    m = metrics_from_confusion(cm)
    present = sorted(set(y.tolist()))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro", zero_division=0))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["accuracy"] == pytest.approx(float((y == p).mean()))
    rec = recall_score(y, p, labels=present, average=None, zero_division=0)
    assert [m["recall"][k] for k in present] == pytest.approx(rec.tolist())
    assert m["recall"][4] is None and m["support"][4] == 0
    assert m["g_mean"] == pytest.approx(float(np.prod(rec) ** (1 / len(rec))))


def test_metric_direction():
    assert metric_better("macro_f1", 0.6, 0.5) and not metric_better("macro_f1", 0.4, 0.5)
    assert metric_better("val_loss", 0.4, 0.5) and not metric_better("val_loss", 0.6, 0.5)
    assert metric_better("macro_f1", 0.0, None)


def test_drw_schedule_and_params():
    cfg = load_config(None, ["train.loss=ldam", "train.loss_params={max_margin: 0.5, drw_epoch: 2}"])
    params, drw = split_loss_params(cfg.train)
    assert params == {"max_margin": 0.5} and drw == DrwSchedule(epoch=2, beta=0.9999)
    counts = np.array([1000.0, 100.0, 10.0])
    assert drw_weight_for_epoch(0, drw, counts) is None and drw_weight_for_epoch(1, drw, counts) is None
    w = drw_weight_for_epoch(2, drw, counts)
    beta = 0.9999
    ref = (1 - beta) / (1 - beta ** counts)        # Cui et al. effective-number weights, normalised to sum C
    np.testing.assert_allclose(w, ref / ref.sum() * 3, rtol=1e-9)
    cfg = load_config(None, ["train.loss=ce", "train.method_params={drw_epoch: 1}"])
    with pytest.raises(InputError, match="ldam"):
        split_loss_params(cfg.train)
    cfg = load_config(None, ["train.loss=ldam", "train.loss_params={drw_epoch: 1, drw_beta: 1.5}"])
    with pytest.raises(InputError, match="drw_beta"):
        split_loss_params(cfg.train)


def test_optimizer_from_config():
    net = torch.nn.Linear(3, 2)
    cfg = load_config(None, ["train.optimizer=sgd", "train.lr=0.1", "train.momentum=0.5"])
    opt = build_optimizer(net.parameters(), cfg.train)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.5 and opt.defaults["lr"] == 0.1
    with pytest.raises(InputError, match="train.optimizer"):
        build_optimizer(net.parameters(), load_config(None, ["train.optimizer=lbfgs"]).train)


def test_decoders_are_exact():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 3, 4, 2), dtype=np.uint8)           # N, H, W, C
    col = np.array([im.tobytes() for im in imgs], dtype=object)
    t = decode_images(col, [3, 4, 2])
    assert t.shape == (7, 2, 3, 4) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), imgs.transpose(0, 3, 1, 2))
    f = to_float(t)
    assert f.dtype == torch.float32 and float(f.max()) <= 1.0
    np.testing.assert_allclose(f.numpy(), imgs.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    feats = np.empty(3, dtype=object)
    for i in range(3):
        feats[i] = np.arange(4, dtype=np.float32) + i
    np.testing.assert_array_equal(decode_features(feats).numpy(), np.stack(list(feats)))
    with pytest.raises(InputError, match="bytes"):
        decode_images(col, [3, 3])


def test_old_checkpoints_progress_is_renumbered_like_the_log():
    """A progress.json written with 0-based epochs resumes with the 1-based numbering of the log."""
    from pipeline.train.loop import TrainingProgress

    old = {"config": "c", "epoch": 1, "best_epoch": 0, "history": [{"epoch": 0}, {"epoch": 1}],
           "best_metrics": {"epoch": 0}, "best_value": 0.5, "bad_epochs": 1}
    new = TrainingProgress.from_dict(old)
    assert new.epochs_done == 2 and "epoch" not in new.to_dict()       # two epochs done: resume with "epoch 3/N"
    assert new.best_epoch == 1 and new.best_metrics["epoch"] == 1
    assert [h["epoch"] for h in new.history] == [1, 2]
    assert TrainingProgress.from_dict(new.to_dict()) == new            # today's files are read as written
    assert list(new.to_dict()) == ["config", "epochs_done", "history", "best_epoch", "best_value", "best_metrics",
                                   "bad_epochs", "stopped_early"]     # progress.json's keys


def test_ranking_from_histogram_equals_scikit_learn_on_binned_scores():
    """AP and ROC AUC from the log-odds histogram equal scikit-learn's on scores rounded to its bins
    (ties within a bin are one threshold), and histograms of two shards add up."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipeline.train.confusion import MARGIN_BINS, MARGIN_RANGE, margin_histogram, ranking_from_histogram

    rng = np.random.default_rng(3)
    y = (rng.random(30000) < 0.004).astype(int)
    m = rng.standard_t(3, 30000) * 4 + 3.0 * y          # heavy tails: some land in the end bins
    w = 2 * MARGIN_RANGE / MARGIN_BINS
    rounded = np.clip(np.floor((m + MARGIN_RANGE) / w), 0, MARGIN_BINS - 1)
    h = (margin_histogram(torch.tensor(m[:12345]), torch.tensor(y[:12345]))
         + margin_histogram(torch.tensor(m[12345:]), torch.tensor(y[12345:]))).numpy()
    r = ranking_from_histogram(h)
    assert r["pr_auc"] == pytest.approx(average_precision_score(y, rounded), abs=1e-12)
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)
    assert ranking_from_histogram(np.stack([h[0], 0 * h[1]])) == {"pr_auc": None, "roc_auc": None}
