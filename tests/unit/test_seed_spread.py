"""The seed-to-seed summaries against NumPy and statistics, and run.seeds' config rules."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.evaluation.seed_spread import average_metrics, headline, spread
from pipeline.flows.seeds import first_seed, seed_run_dirs, training_seeds


def _metrics(rng, n_classes=4):
    f1, rec = rng.random(n_classes), rng.random(n_classes)
    return {"n_classes": n_classes, "accuracy": float(rng.random()), "balanced_accuracy": float(rec.mean()),
            "g_mean": float(rng.random()), "macro": {"f1": float(f1.mean()), "roc_auc": 0.9, "pr_auc": 0.5},
            "groups": {"L5": {"f1": float(f1[:2].mean())}, "rest": {"f1": float(f1[2:].mean())}},
            "per_class": [{"label": c, "support": 10, "f1": float(f1[c]), "recall": float(rec[c])}
                          for c in range(n_classes)]}


def test_spread_matches_numpy_and_statistics():
    rng = np.random.default_rng(3)
    ms = [_metrics(rng) for _ in range(5)]
    sp = spread([headline(m) for m in ms])
    xs = [m["macro"]["f1"] for m in ms]
    assert sp["macro_f1"]["mean"] == pytest.approx(np.mean(xs))
    assert sp["macro_f1"]["sd"] == pytest.approx(np.std(xs, ddof=1)) == pytest.approx(statistics.stdev(xs))
    assert (sp["macro_f1"]["min"], sp["macro_f1"]["max"]) == (min(xs), max(xs))
    assert sp["l5_f1"]["mean"] == pytest.approx(np.mean([m["groups"]["L5"]["f1"] for m in ms]))
    assert spread([headline(ms[0])])["macro_f1"]["sd"] is None          # one seed: no spread
    assert "g_mean" not in spread([headline(ms[0]), {**headline(ms[1]), "g_mean": None}])


def test_average_metrics_is_the_mean_over_seeds_and_keeps_macro_linear():
    rng = np.random.default_rng(4)
    ms = [_metrics(rng) for _ in range(3)]
    avg = average_metrics(ms)
    for c in range(4):
        assert avg["per_class"][c]["f1"] == pytest.approx(np.mean([m["per_class"][c]["f1"] for m in ms]))
        assert avg["per_class"][c]["support"] == 10
    assert avg["macro"]["f1"] == pytest.approx(np.mean([r["f1"] for r in avg["per_class"]]))
    assert avg["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in ms]))
    assert average_metrics(ms[:1]) is ms[0]


def _cfg(*overrides):
    return load_config("conf/demo.yaml", list(overrides))


def test_training_seeds_and_the_first_seed_config(tmp_path):
    assert training_seeds(_cfg()) == [0, 1, 2]
    assert training_seeds(_cfg("run.seeds=null", "run.seed=4")) == [4]
    assert training_seeds(_cfg("run.seeds=null", "train.seed=7")) == [7]
    cfg = first_seed(_cfg("run.seeds=[5, 6]"))
    assert cfg.train.seed == 5 and cfg.run.seed == 0                   # the split and data keep run.seed
    assert first_seed(_cfg("run.seeds=null")).train.seed is None
    assert seed_run_dirs(tmp_path, [5, 6, 9]) == [tmp_path, tmp_path / "seeds" / "6", tmp_path / "seeds" / "9"]


@pytest.mark.parametrize("value, words", [("[]", "non-empty list"), ("[0, 0]", "appears twice"),
                                          ("[0, -1]", "integers >= 0"), ("3", "expected a list"),
                                          ("[0, true]", "integers >= 0")])
def test_bad_seeds_name_the_key(value, words):
    with pytest.raises(ConfigError, match=rf"config key 'run.seeds': .*{words}"):
        training_seeds(_cfg(f"run.seeds={value}"))  # the loader checks the type, training_seeds the rest
